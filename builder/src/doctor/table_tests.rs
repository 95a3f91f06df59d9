//! The table covers every host program the code runs: the source is read
//! for the places that start one (`Cmd::new("…")`, `find_program("…")`,
//! the tests' `Command::new("…")` …), and each program found must be a
//! probe of the table or part of every Debian system.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::table::ALWAYS_THERE;
use super::{Probe, Requirement, REQUIREMENTS};
use crate::testutil::assert_says;

/// Calls whose first argument, a string literal, names a host program.
const STARTERS: &[&str] = &[
    "Cmd::new(",
    "Command::new(",
    "find_program(",
    "require_program(",
    "run_check(",
    "assert_fsck_clean(",
    "cmd(",
];

/// Names in tests that are meant not to exist.
const NOT_PROGRAMS: &[&str] = &["nodeforge-no-such-tool"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every program name the host-side code starts, by the patterns above,
/// plus the QEMU system emulators, which are chosen by architecture.
fn programs_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for starter in STARTERS {
        for (i, _) in text.match_indices(starter) {
            // `cmd(` also matches inside `somecmd(`: only whole names.
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let Some(rest) = text[i + starter.len()..].trim_start().strip_prefix('"') else {
                continue;
            };
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_owned());
            }
        }
    }
    for (i, _) in text.match_indices("\"qemu-system-") {
        let rest = &text[i + 1..];
        if let Some(end) = rest.find('"') {
            found.insert(rest[..end].to_owned());
        }
    }
    found
}

fn host_programs() -> BTreeSet<String> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in [
        "builder/src",
        "builder/tests",
        "qemu-tests/src",
        "qemu-tests/tests",
    ] {
        rust_files(&top.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut programs = BTreeSet::new();
    for f in files {
        // The table names packages, not programs it runs.
        if f.ends_with("doctor/table_tests.rs") || f.ends_with("doctor/table.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap();
        programs.extend(programs_in(&text));
    }
    programs
}

/// The programs `table` does not cover.
fn uncovered<'a>(programs: &'a BTreeSet<String>, table: &[Requirement]) -> Vec<&'a str> {
    programs
        .iter()
        .map(String::as_str)
        .filter(|p| !p.contains('/') && !NOT_PROGRAMS.contains(p))
        .filter(|p| !ALWAYS_THERE.contains(p))
        .filter(|p| {
            !table
                .iter()
                .any(|r| matches!(r.probe, Probe::Program(q) if q == *p))
        })
        .collect()
}

#[test]
fn every_host_program_the_code_runs_has_an_entry() {
    let programs = host_programs();
    for expected in [
        "mmdebstrap",
        "mkfs.ext4",
        "arch-test",
        "qemu-system-x86_64",
        "debugfs",
    ] {
        assert!(
            programs.contains(expected),
            "scan missed {expected}: {programs:?}"
        );
    }
    let missing = uncovered(&programs, REQUIREMENTS);
    assert!(
        missing.is_empty(),
        "host programs with no entry in doctor/table.rs (add one, with its package): {missing:?}"
    );
}

#[test]
fn a_table_without_arch_test_fails_the_check() {
    let programs = host_programs();
    let without: Vec<Requirement> = REQUIREMENTS
        .iter()
        .filter(|r| !matches!(r.probe, Probe::Program("arch-test")))
        .copied()
        .collect();
    assert_eq!(without.len() + 1, REQUIREMENTS.len());
    assert_eq!(uncovered(&programs, &without), ["arch-test"]);
}

#[test]
fn the_scan_reads_each_kind_of_call() {
    let text = r#"Cmd::new("a"); Command::new("b").arg("x"); find_program("c");
        require_program(
            "d", "why"); Cmd::new(program); let q = "qemu-system-riscv64"; MyCmd::new("e");
        somecmd("f"); cmd("g", &[]);"#;
    let found: Vec<String> = programs_in(text).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "g", "qemu-system-riscv64"]);
}

#[test]
fn apt_packages_are_listed_once_and_split_by_backports() {
    let plain = super::apt_packages(false);
    let bpo = super::apt_packages(true);
    assert!(plain.contains(&"arch-test"), "{plain:?}");
    assert!(
        bpo.contains(&"mmdebstrap") && bpo.contains(&"qemu-system-x86"),
        "{bpo:?}"
    );
    // e2fsprogs has two probes (mkfs.ext4, debugfs) and one package line.
    assert_eq!(bpo.iter().filter(|p| **p == "e2fsprogs").count(), 1);
    assert!(plain.iter().all(|p| !bpo.contains(p)));
}

#[test]
fn a_missing_program_is_refused_naming_its_package() {
    let err = super::require_program("nodeforge-no-such-tool", "testing").unwrap_err();
    assert_says(err, &["nodeforge-no-such-tool", "doctor --install"]);
    let err = super::missing_program("arch-test", "a foreign bootstrap");
    assert_says(err, &["package arch-test", "a foreign bootstrap"]);
}
