//! `nodeforge-firstboot [run] [--root DIR]` runs or resumes first boot;
//! `nodeforge-firstboot status [--json] [--root DIR]` shows how it went;
//! `nodeforge-firstboot identity-check [--root DIR]` runs before tailscaled
//! (see identity.rs);
//! `nodeforge-firstboot update --from URL --running DEV --target DEV …`
//! writes a newer signed release into the inactive root slot (update/).

use std::path::PathBuf;
use std::process::ExitCode;

use nodeforge_firstboot::agent::{Agent, Console};
use nodeforge_firstboot::notify::Notifier;
use nodeforge_firstboot::runner::SystemRunner;
use nodeforge_firstboot::status::Status;

const USAGE: &str = "usage: nodeforge-firstboot [run] [--root DIR]\n       nodeforge-firstboot status [--json] [--root DIR]\n       nodeforge-firstboot identity-check [--root DIR]\n       nodeforge-firstboot update --from URL --running DEV --target DEV [--build NAME] [--key FILE] [--allow-downgrade] [--root DIR]";

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
            "run" | "status" | "identity-check" if cmd.is_none() => cmd = Some(a),
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
    use nodeforge_firstboot::update::{self, HttpOrigin, Request, Running};
    let (mut from, mut running, mut target, mut build, mut key) = (None, None, None, None, None);
    let mut root = PathBuf::from("/");
    let mut allow_downgrade = false;
    while let Some(a) = args.next() {
        let slot = match a.as_str() {
            "--from" => &mut from,
            "--running" => &mut running,
            "--target" => &mut target,
            "--build" => &mut build,
            "--key" => &mut key,
            "--root" => {
                match args.next() {
                    Some(r) => root = PathBuf::from(r),
                    None => return usage("--root needs a directory"),
                }
                continue;
            }
            "--allow-downgrade" => {
                allow_downgrade = true;
                continue;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("update: unexpected argument {other:?}")),
        };
        match args.next() {
            Some(v) => *slot = Some(v),
            None => return usage(&format!("{a} needs a value")),
        }
    }
    let (Some(from), Some(running), Some(target)) = (from, running, target) else {
        return usage(
            "update needs --from URL (the build's directory), --running DEV and --target DEV",
        );
    };
    if running == target {
        return usage("update: --running and --target are the same slot");
    }
    let result = (|| -> anyhow::Result<update::Installed> {
        use anyhow::Context;
        let under = |abs: &str| nodeforge_firstboot::fsutil::under(&root, abs);
        let cfg_path = under(nodeforge_firstboot::config::BAKED_CONFIG_PATH);
        let cfg_text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let cfg = nodeforge_firstboot::config::BakedConfig::from_toml(&cfg_text)
            .with_context(|| format!("{} is not the agent's config", cfg_path.display()))?;
        let key_path = key.map_or_else(|| under(update::RELEASE_KEY_PATH), PathBuf::from);
        let key_text = std::fs::read_to_string(&key_path).with_context(|| {
            format!(
                "reading the release key {} (bake one with the profile's release key, or pass --key)",
                key_path.display()
            )
        })?;
        let trusted =
            nodeforge_release::parse_public_key(&key_text, &key_path.display().to_string())?;
        let state_dir = under(update::STATE_DIR);
        let req = Request {
            build: build.as_deref().unwrap_or(&cfg.profile),
            trusted: &trusted,
            running: Running {
                arch: update::debian_arch().into(),
                epoch: cfg.epoch,
            },
            running_slot: std::path::Path::new(&running),
            target_slot: std::path::Path::new(&target),
            state_dir: &state_dir,
            allow_downgrade,
        };
        let origin = HttpOrigin::new(&from, std::time::Duration::from_secs(60));
        update::update(&origin, &req, &mut |line| {
            println!("nodeforge-firstboot update: {line}")
        })
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeforge-firstboot update: {e:#}");
            ExitCode::from(1)
        }
    }
}
