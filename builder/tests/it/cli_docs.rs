//! `nodeforge completions SHELL` and `nodeforge man DIR`: generated from
//! the parser's own definitions, so every command and flag is in them.
//! The man pages leave out the hidden `netinstall` (it runs on netbooted
//! machines); clap_complete's scripts list every command the parser
//! accepts, hidden ones included.

use std::process::Command;

use crate::support::Project;

/// Commands a user sees, with a flag of each that the pages must carry.
const VISIBLE: &[(&str, &str)] = &[
    ("build", "verify-reproducible"),
    ("flash", "no-verify"),
    ("serve", "tftp-root"),
    ("push", "name"),
    ("cache-prune", "older-than"),
    ("tailnet-mint-key", "oauth-secret-file"),
    ("doctor", "install"),
];

#[test]
fn bash_completion_is_valid_bash_naming_every_visible_command() {
    let p = Project::empty();
    let run = p.ok(&["completions", "bash"]);
    run.stdout_has(&["_nodeforge()", "complete -F _nodeforge"]);
    for (command, flag) in VISIBLE {
        let last = command.rsplit('-').next().unwrap_or(command);
        run.stdout_has(&[last, &format!("--{flag}")]);
    }
    let script = p.write("nodeforge.bash", &run.stdout());
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n rejects the script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn zsh_and_fish_completions_name_the_program() {
    let p = Project::empty();
    assert!(p
        .ok(&["completions", "zsh"])
        .stdout()
        .starts_with("#compdef nodeforge"));
    p.ok(&["completions", "fish"])
        .stdout_has(&["complete -c nodeforge", "verify-reproducible"]);
}

#[test]
fn an_unknown_shell_is_refused_with_the_ones_there_are() {
    let run = Project::empty().fails(&["completions", "tcsh"]);
    run.stderr_has(&["tcsh", "bash", "fish", "zsh"]);
    // A wrong command line is exit status 2 (README: exit codes).
    assert_eq!(run.output.status.code(), Some(2), "{}", run.report());
}

/// The parser's commands a user sees, nested ones included, and the
/// top page: how many pages `man` must write.
fn visible_pages() -> usize {
    fn count(c: &clap::Command) -> usize {
        1 + c
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .map(count)
            .sum::<usize>()
    }
    use clap::CommandFactory;
    count(&nodeforge::cli::Cli::command())
}

#[test]
fn man_writes_one_page_per_visible_command_and_again_over_them() {
    let p = Project::empty();
    let pages = visible_pages();
    p.ok(&["man", "man1"])
        .stdout_has(&[&format!("{pages} man pages")]);
    // Twice: the second run replaces the pages and leaves nothing else.
    p.ok(&["man", "man1"]);
    let mut names: Vec<String> = std::fs::read_dir(p.path("man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), pages, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".1")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("netinstall")), "{names:?}");
    let top = p.read("man1/nodeforge.1");
    assert!(top.contains(".TH nodeforge 1"), "{top}");
    for (command, flag) in VISIBLE {
        let page = p.read(&format!("man1/nodeforge-{command}.1"));
        assert!(
            page.contains(&format!(".TH nodeforge\\-{command} 1"))
                || page.contains(&format!(".TH nodeforge-{command} 1")),
            "nodeforge-{command}.1 has no title line:\n{page}"
        );
        // roff escapes a hyphen in text as \-.
        assert!(
            page.contains(&format!("\\-\\-{}", flag.replace('-', "\\-"))),
            "nodeforge-{command}.1 lacks --{flag}:\n{page}"
        );
    }
}

#[test]
fn man_into_a_file_says_it_wants_a_directory_and_leaves_the_file() {
    let p = Project::empty();
    let file = p.write("notes.txt", "mine\n");
    let run = p.fails(&["man", "notes.txt"]);
    run.stderr_has(&["error: ", "notes.txt is not a directory", "man1"]);
    // A command that failed is exit status 1 (README: exit codes).
    assert_eq!(run.output.status.code(), Some(1), "{}", run.report());
    assert_eq!(std::fs::read_to_string(file).unwrap(), "mine\n");
}
