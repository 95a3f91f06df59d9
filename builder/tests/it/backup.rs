//! Backups (overlays/backup): the data role installs Debian's restic, the
//! script and its daily timer, and its settings render from the profile's
//! vars. The fleet boot test (qemu-tests) runs a backup on the node and
//! restores it.

use crate::support::overlay::{plan, render};
use crate::support::{read_text, repo_root};

#[test]
fn data_backs_up_daily_with_restic_as_its_vars_say() {
    let plan = plan("profiles/data.toml");
    assert!(
        plan.packages.iter().any(|p| p == "restic"),
        "{:?}",
        plan.packages
    );
    for t in [
        "/usr/libexec/nodeforge/backup",
        "/usr/sbin/nodeforge-backup",
        "/etc/systemd/system/nodeforge-backup.service",
        "/etc/systemd/system/timers.target.wants/nodeforge-backup.timer",
    ] {
        assert!(
            plan.overlay_files.iter().any(|f| f.target == t),
            "{t} is not in data's image"
        );
    }
    let data = plan
        .profile
        .stacks
        .iter()
        .find(|s| s.name == "data")
        .unwrap();
    assert!(data.secrets.iter().any(|s| s == "RESTIC_PASSWORD"));
    let env = render(&plan, "/etc/nodeforge/backup.env", |_| {}).unwrap();
    for line in [
        "BACKUP_STACK='data'\n",
        "BACKUP_REPOSITORY='/srv/backups/restic'\n",
        "BACKUP_EXCLUDE_VOLUMES='postgres'\n",
    ] {
        assert!(env.contains(line), "{line:?} not in:\n{env}");
    }
    let dumps = render(&plan, "/etc/nodeforge/backup-dumps", |_| {}).unwrap();
    assert!(
        dumps.ends_with("\npostgres|postgres.sql|pg_dumpall --username=aerovista\n")
            || dumps.ends_with("\npostgres|postgres.sql|pg_dumpall --username=aerovista"),
        "{dumps}"
    );
    // The script reads the password from the secrets file, never argv.
    let script = read_text(&repo_root().join("overlays/backup/usr/libexec/nodeforge/backup"));
    assert!(script.contains("RESTIC_PASSWORD=$(secret RESTIC_PASSWORD)"));
    assert!(
        !script.contains("--password"),
        "no password flag on a command line"
    );
}

#[test]
fn backup_paths_must_be_absolute() {
    let plan = plan("profiles/workspace.toml");
    let env = render(&plan, "/etc/nodeforge/backup.env", |_| {}).unwrap();
    assert!(env.contains("BACKUP_PATHS='/srv/workspace'\n"), "{env}");
    let err = render(&plan, "/etc/nodeforge/backup.env", |v| {
        v["backup_paths"] = serde_json::json!(["srv/workspace"]);
    })
    .unwrap_err();
    assert!(
        err.contains("vars.backup_paths: `srv/workspace` must be an absolute path"),
        "{err}"
    );
}

#[test]
fn a_profile_that_names_no_repository_is_told_what_to_set() {
    let plan = plan("profiles/data.toml");
    let err = render(&plan, "/etc/nodeforge/backup.env", |v| {
        v.as_object_mut().unwrap().remove("backup_repository");
    })
    .unwrap_err();
    assert!(
        err.contains("overlays/backup needs vars.backup_repository"),
        "{err}"
    );
}

/// Each role with state: the database services it dumps and the named
/// volumes it leaves out of the snapshot (the profiles' vars say why).
const ROLES: &[(&str, &[&str], &[&str])] = &[
    ("core", &[], &["prometheus", "loki"]),
    ("data", &["postgres"], &["postgres"]),
    ("ai", &[], &[]),
    ("media", &[], &["jellyfin-cache"]),
    (
        "controlplane",
        &["postgres"],
        &["postgres", "prometheus", "loki", "ollama", "whisper"],
    ),
    (
        "cloud",
        &["mariadb", "mongodb"],
        &["mariadb", "mongodb", "netdata", "loki"],
    ),
    ("workspace", &[], &["onlyoffice-logs"]),
    ("observability", &[], &["loki", "tempo", "prometheus"]),
    ("sentinel", &[], &[]),
];

/// Images (the repository's last part) whose service is a database: its
/// live files are no backup, so the role dumps it.
const DATABASES: &[&str] = &["postgres", "pgvector", "mariadb", "mysql", "mongo"];

/// The top-level named volumes of a compose template, and each service
/// with the image it runs (from `image: {{ images["…"] }}`).
fn compose_volumes_and_images(text: &str) -> (Vec<String>, Vec<(String, String)>) {
    let (mut volumes, mut services) = (Vec::new(), Vec::new());
    let mut section = "";
    let mut service = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = if line == "volumes:" {
                "volumes"
            } else if line == "services:" {
                "services"
            } else {
                ""
            };
            continue;
        }
        let key = line.strip_prefix("  ").filter(|k| !k.starts_with(' '));
        match (section, key.and_then(|k| k.strip_suffix(':'))) {
            ("volumes", Some(v)) => volumes.push(v.to_owned()),
            ("services", Some(s)) => service = s.to_owned(),
            _ => {}
        }
        if let Some((_, image)) = line.trim().split_once("image: {{ images[\"") {
            let image = image.split('"').next().unwrap_or_default();
            services.push((service.clone(), image.to_owned()));
        }
    }
    (volumes, services)
}

#[test]
fn every_role_with_state_backs_it_up_and_dumps_its_databases() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("profiles")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if path.extension().is_none_or(|e| e != "toml") || name.contains('.') {
            continue;
        }
        let plan = plan(&format!("profiles/{name}.toml"));
        let Some(stack) = plan
            .profile
            .stacks
            .iter()
            .find(|s| s.name == plan.profile.role)
        else {
            continue;
        };
        let (volumes, services) = compose_volumes_and_images(&read_text(&stack.compose));
        if volumes.is_empty() {
            continue;
        }
        let Some((_, dumped, excluded)) = ROLES.iter().find(|(r, _, _)| *r == name) else {
            panic!("role {name} keeps volumes {volumes:?} and is not in this test's ROLES: configure overlays/backup for it")
        };
        checked.push(name.clone());
        assert!(
            plan.packages.iter().any(|p| p == "restic"),
            "{name}: no restic"
        );
        assert!(
            plan.overlay_files
                .iter()
                .any(|f| f.target == "/usr/libexec/nodeforge/backup"),
            "{name}: no overlays/backup"
        );
        assert!(
            stack.secrets.iter().any(|s| s == "RESTIC_PASSWORD"),
            "{name}: stack {} does not declare RESTIC_PASSWORD",
            stack.name
        );
        let env = render(&plan, "/etc/nodeforge/backup.env", |_| {}).unwrap();
        assert!(
            env.contains(&format!("BACKUP_STACK='{}'\n", stack.name)),
            "{name}: {env}"
        );
        assert!(
            env.contains(&format!(
                "BACKUP_EXCLUDE_VOLUMES='{}'\n",
                excluded.join(" ")
            )),
            "{name}: {env}"
        );
        for v in *excluded {
            assert!(
                volumes.iter().any(|x| x == v),
                "{name}: excluded volume {v} is not one of {volumes:?}"
            );
        }
        let dumps = render(&plan, "/etc/nodeforge/backup-dumps", |_| {}).unwrap();
        let dump_services: Vec<&str> = dumps
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                assert_eq!(
                    l.split('|').count(),
                    3,
                    "{name}: a dump line is service|file|command: {l}"
                );
                l.split('|').next().unwrap()
            })
            .collect();
        assert_eq!(dump_services, *dumped, "{name}: {dumps}");
        for (service, image) in &services {
            let repo = image.split(':').next().unwrap_or_default();
            let database = DATABASES.contains(&repo.rsplit('/').next().unwrap_or_default());
            assert_eq!(
                database,
                dump_services.contains(&service.as_str()),
                "{name}: service {service} ({image}) is a database exactly when it is dumped"
            );
        }
        // A dumped database's own files are left out.
        for s in &dump_services {
            assert!(
                excluded.contains(s),
                "{name}: {s} is dumped but its volume is kept too"
            );
        }
        // A password reaches a dump tool only through a file written by
        // the shell's printf (a builtin: no argv holds the value).
        for line in dumps.lines().filter(|l| l.contains('|')) {
            let command = line.splitn(3, '|').nth(2).unwrap_or_default();
            for part in command.split("&&").flat_map(|p| p.split(';')) {
                let part = part.trim();
                if part.contains("PASSWORD") {
                    assert!(
                        part.starts_with("printf ") && part.ends_with("> \"$f\""),
                        "{name}: a password outside a printf into the temporary file: {part}"
                    );
                }
            }
            assert!(!command.contains("--password"), "{name}: {command}");
        }
    }
    let mut want: Vec<&str> = ROLES.iter().map(|(r, _, _)| *r).collect();
    want.sort();
    checked.sort();
    assert_eq!(checked, want);
}
