//! `nodeforge-firstboot [run] [--root DIR]` runs or resumes first boot;
//! `nodeforge-firstboot status [--json] [--root DIR]` shows how it went;
//! `nodeforge-firstboot identity-check [--root DIR]` runs before tailscaled
//! (see identity.rs);
//! `nodeforge-firstboot update --from URL …` writes a newer signed release
//! into the inactive root slot and boots it next (update/);
//! `nodeforge-firstboot assess` blesses a slot on trial (update/assess.rs).

use std::path::PathBuf;
use std::process::ExitCode;

use nodeforge_firstboot::agent::{Agent, Console};
use nodeforge_firstboot::notify::Notifier;
use nodeforge_firstboot::runner::SystemRunner;
use nodeforge_firstboot::status::Status;

const USAGE: &str = "usage: nodeforge-firstboot [run] [--root DIR]\n       nodeforge-firstboot status [--json] [--root DIR]\n       nodeforge-firstboot identity-check [--root DIR]\n       nodeforge-firstboot update [--from URL] [--reboot] [--running DEV --target DEV] [--build NAME] [--key FILE] [--allow-downgrade] [--root DIR]\n       nodeforge-firstboot assess [--root DIR]";

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("update") {
        return update(std::env::args().skip(2));
    }
    let mut args = std::env::args().skip(1);
    let mut cmd = None;
    let mut root = PathBuf::from("/");
    let mut json = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "run" | "status" | "identity-check" | "assess" if cmd.is_none() => cmd = Some(a),
            "--json" => json = true,
            "--root" => match args.next() {
                Some(r) => root = PathBuf::from(r),
                None => return usage("--root needs a directory"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    match cmd.as_deref() {
        Some("status") => status(&root, json),
        Some("identity-check") if !json => identity_check(&root),
        Some("assess") if !json => assess(&root),
        _ if json => usage("--json goes with status"),
        _ => run(root),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("nodeforge-firstboot: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn run(root: PathBuf) -> ExitCode {
    let mut agent = Agent::new(root, &SystemRunner, &Console);
    agent.notifier = Notifier::from_env();
    // Lets boot tests point at a stand-in without touching PATH.
    if let Ok(bin) = std::env::var("NODEFORGE_TAILSCALE") {
        agent.tailscale_bin = bin;
    }
    match agent.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Exits non-zero only when the tailnet state could not be moved aside:
/// tailscaled then does not start with another machine's identity.
fn identity_check(root: &std::path::Path) -> ExitCode {
    match nodeforge_firstboot::identity::check(root) {
        Ok(Some(c)) => {
            println!(
                "nodeforge-firstboot: this disk joined the tailnet on {} but runs on {}: its tailnet \
                 state is moved to {}; tailscaled starts logged out and the node joins anew with a \
                 new seed",
                c.joined_on.describe(),
                c.now_on.describe(),
                c.state_moved_to
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot: identity check: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn status(root: &std::path::Path, json: bool) -> ExitCode {
    match Status::read(root) {
        Ok(Some(s)) => {
            let backup = nodeforge_firstboot::backup::read(root);
            print!("{}", nodeforge_firstboot::backup::report(&s, &backup, json));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("nodeforge-firstboot: no status yet (the agent has not run)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("nodeforge-firstboot: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `update`: its own options, parsed here, run by the library.
fn update(mut args: impl Iterator<Item = String>) -> ExitCode {
    use nodeforge_firstboot::update::node::{self, Options};
    let mut opts = Options::default();
    let mut root = PathBuf::from("/");
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{what} needs a value"));
        let parsed = match a.as_str() {
            "--from" => value("--from").map(|v| opts.from = Some(v)),
            "--running" => value("--running").map(|v| opts.running = Some(v.into())),
            "--target" => value("--target").map(|v| opts.target = Some(v.into())),
            "--build" => value("--build").map(|v| opts.build = Some(v)),
            "--key" => value("--key").map(|v| opts.key = Some(v.into())),
            "--root" => value("--root").map(|v| root = v.into()),
            "--allow-downgrade" => {
                opts.allow_downgrade = true;
                Ok(())
            }
            "--reboot" => {
                opts.reboot = true;
                Ok(())
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("update: unexpected argument {other:?}")),
        };
        if let Err(msg) = parsed {
            return usage(&msg);
        }
    }
    let say = &mut |line: &str| println!("nodeforge-firstboot update: {line}");
    match node::run(&root, &opts, &SystemRunner, say) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot update: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `assess`: bless a slot on trial once the agent finished, or spend its
/// tries and fail (its unit then reboots into the other slot).
fn assess(root: &std::path::Path) -> ExitCode {
    use nodeforge_firstboot::config::BakedConfig;
    use nodeforge_firstboot::update::assess;
    let say = &mut |line: &str| println!("nodeforge-firstboot assess: {line}");
    let result = BakedConfig::load(root).and_then(|cfg| match &cfg.slots {
        None => Ok(assess::Assessment::NotOnTrial),
        Some(slots) => assess::assess(root, slots, say),
    });
    match result {
        Ok(assess::Assessment::NotOnTrial) => ExitCode::SUCCESS,
        Ok(assess::Assessment::Blessed { slot, generation }) => {
            say(&format!(
                "slot {slot} (generation {}) is healthy: it stays the slot that boots",
                generation.map_or("?".into(), |g| g.to_string())
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nodeforge-firstboot assess: {e:#}");
            ExitCode::from(1)
        }
    }
}
