//! `.github/workflows/images.yml`, the CI workflow users copy: it parses,
//! has what GitHub Actions requires of a workflow, builds every role and
//! runs every boot test, and each command it runs exists: scripts in the
//! repository, `nodeforge` invocations that the CLI accepts (profiles
//! that exist), cargo test targets that exist, and a short list of runner
//! programs.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use serde_json::Value;

use crate::support::repo_root;

/// Programs a Debian job container has, or gets from ci-runner.sh.
const RUNNER_PROGRAMS: &[&str] = &["apt-get", "cargo", "curl", "git", "sh", "bash", "printf"];

fn workflow() -> Value {
    let path = repo_root().join(".github/workflows/images.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn stems(dir: &str, ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn list(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_owned()
        })
        .collect()
}

/// Splits a shell line into words, keeping single- and double-quoted
/// text together (what the workflow's `run:` lines use).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    assert!(quote.is_none(), "unclosed quote in `{line}`");
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Checks one command of a `run:` line.
fn check_command(words: &[String], line: &str) {
    let Some(program) = words.first() else {
        return;
    };
    let root = repo_root();
    if program.starts_with("scripts/") {
        let path = root.join(program);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("`{line}` runs {program}, which is missing: {e}"))
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert!(mode.mode() & 0o111 != 0, "{program} is not executable");
    } else if program == "target/debug/nodeforge" {
        // The CLI's own parser: subcommand, flags and values.
        nodeforge::cli::Cli::try_parse_from(words)
            .unwrap_or_else(|e| panic!("nodeforge refuses `{line}`:\n{e}"));
        for w in &words[1..] {
            if w.starts_with("profiles/") {
                assert!(
                    root.join(w).is_file(),
                    "`{line}` names {w}, which is missing"
                );
            }
        }
    } else if program == "cargo" {
        if let Some(i) = words.iter().position(|w| w == "--test") {
            let test = &words[i + 1];
            assert!(
                root.join("qemu-tests/tests")
                    .join(format!("{test}.rs"))
                    .is_file(),
                "`{line}` runs the test target {test}, which qemu-tests does not have"
            );
        }
    } else {
        assert!(
            RUNNER_PROGRAMS.contains(&program.as_str()),
            "`{line}` runs {program}, which is neither in the repository nor a runner program"
        );
    }
}

/// Every command of a `run:` block, with the matrix value put in.
fn commands(run: &str, matrix: &str, value: &str) -> Vec<(Vec<String>, String)> {
    let run = run.replace(&format!("${{{{ matrix.{matrix} }}}}"), value);
    assert!(
        !run.contains("${{"),
        "an expression left in `{run}`: secrets go through env"
    );
    let mut out = Vec::new();
    for line in run.lines() {
        for part in line
            .split("&&")
            .flat_map(|p| p.split(';'))
            .flat_map(|p| p.split('|'))
        {
            let w = words(part);
            if !w.is_empty() {
                out.push((w, part.trim().to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_workflow_parses_and_has_what_actions_requires() {
    let wf = workflow();
    assert!(wf["name"].is_string(), "{wf:#}");
    let on = wf["on"].as_object().expect("`on` is a mapping of events");
    assert!(
        on.contains_key("push") && on.contains_key("pull_request"),
        "{wf:#}"
    );
    let jobs = wf["jobs"].as_object().expect("jobs is a mapping");
    assert!(!jobs.is_empty());
    for (id, job) in jobs {
        assert!(job["runs-on"].is_string(), "job {id} has no runs-on");
        let steps = job["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("job {id} has no steps"));
        assert!(!steps.is_empty(), "job {id} has no steps");
        for s in steps {
            let uses = s.get("uses").and_then(Value::as_str);
            let run = s.get("run").and_then(Value::as_str);
            assert!(
                uses.is_some() != run.is_some(),
                "job {id}: a step needs one of uses/run: {s}"
            );
            if let Some(u) = uses {
                let (action, version) = u
                    .split_once('@')
                    .unwrap_or_else(|| panic!("{u} has no @version"));
                assert!(
                    action.starts_with("actions/") && version.starts_with('v'),
                    "{u}"
                );
            }
        }
    }
}

#[test]
fn the_workflow_builds_every_role_and_runs_every_boot_test() {
    let wf = workflow();
    let mut roles = stems("profiles", "toml");
    // The plain base image and the fleet node every role extends.
    roles.remove("base");
    roles.remove("node");
    assert_eq!(
        list(&wf["jobs"]["roles"]["strategy"]["matrix"]["role"]),
        roles
    );
    assert_eq!(
        list(&wf["jobs"]["boot-tests"]["strategy"]["matrix"]["test"]),
        stems("qemu-tests/tests", "rs")
    );
}

#[test]
fn every_command_the_workflow_runs_exists() {
    let wf = workflow();
    let mut checked = 0;
    for (id, job) in wf["jobs"].as_object().expect("jobs") {
        let (matrix, values) = match id.as_str() {
            "roles" => ("role", list(&job["strategy"]["matrix"]["role"])),
            "boot-tests" => ("test", list(&job["strategy"]["matrix"]["test"])),
            other => panic!("a job this test does not know: {other}"),
        };
        for step in job["steps"].as_array().expect("steps") {
            let Some(run) = step.get("run").and_then(Value::as_str) else {
                continue;
            };
            for value in &values {
                for (words, line) in commands(run, matrix, value) {
                    check_command(&words, &line);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 9 * 5, "only {checked} commands checked");
    assert!(Path::new(&repo_root().join("scripts/ci-runner.sh")).is_file());
}

/// The build script the workflow runs: every nodeforge command in it is
/// one the CLI accepts, with a role's values put in.
#[test]
fn the_ci_build_script_runs_commands_the_cli_accepts() {
    let text = std::fs::read_to_string(repo_root().join("scripts/ci-build-role.sh"))
        .expect("reading scripts/ci-build-role.sh");
    for line in [
        "\"$nodeforge\" lock \"profiles/$role.toml\"",
        "args=(build \"profiles/$role.toml\" --output out)",
        "args+=(--cache-from \"$cache\")",
        "args+=(--cache-to \"$cache\")",
        "\"$nodeforge\" push out",
    ] {
        assert!(text.contains(line), "{line} missing from ci-build-role.sh");
    }
    let cache = "oci://ghcr.io/owner/fleet/nodeforge-cache";
    for args in [
        vec!["nodeforge", "lock", "profiles/core.toml"],
        vec![
            "nodeforge",
            "build",
            "profiles/core.toml",
            "--output",
            "out",
            "--cache-from",
            cache,
            "--cache-to",
            cache,
        ],
        vec![
            "nodeforge",
            "push",
            "out",
            "oci://ghcr.io/owner/fleet/core:abc123",
            "--name",
            "core",
        ],
    ] {
        nodeforge::cli::Cli::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("nodeforge refuses {args:?}:\n{e}"));
    }
}

/// The login step writes the file nodeforge reads, for the registry's
/// host only, mode 0600, the token taken from the environment.
#[test]
fn the_ci_login_script_writes_what_nodeforge_reads() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/ci-registry-login.sh"))
        .env("HOME", home.path())
        .env("NODEFORGE_REGISTRY", "127.0.0.1:5000/fleet")
        .env("REGISTRY_USER", "ci")
        .env("REGISTRY_TOKEN", "tok-123")
        .output()
        .expect("running ci-registry-login.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = home.path().join(".docker/config.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let creds = nodeforge::oci::auth::Credentials::from_file(&file).unwrap();
    assert_eq!(
        creds.for_registry("127.0.0.1:5000"),
        Some(("ci", "tok-123"))
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tok-123"));
}
