//! The `nodeforge` command line: `args` holds the clap types, `commands`
//! what each command runs, `tailnet` the `tailnet` subcommands, `docs`
//! completions and man pages; `run` dispatches. `main.rs` only parses and
//! calls `run`.

mod args;
mod commands;
mod docs;
mod tailnet;

use anyhow::{bail, Result};

pub use args::*;
use commands::*;

use crate::build;
use crate::doctor;
use crate::plan::Plan;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { profiles } => check(&profiles),
        Command::Plan {
            profile,
            json,
            cache_dir,
            offline,
        } => {
            let mut plan = Plan::load(&profile)?;
            let cache_dir = cache_dir.unwrap_or_else(build::default_cache_dir);
            plan.resolve_epoch(&cache_dir, offline, false)?;
            let report = build::steps::PlanReport::new(&plan);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Build(args) => build_cmd(args),
        Command::Lock { profile, mirrors } => lock_cmd(&profile, mirrors),
        Command::Boot(args) => boot_cmd(args),
        Command::Customize(args) => customize_cmd(args),
        Command::Flash(args) => {
            let stamp = args.seed.seed()?.map(crate::seed::SeedStamp);
            let stamp = stamp.as_ref().map(|s| s as &dyn crate::flash::Stamp);
            crate::flash::run(&args.options(), stamp)
        }
        Command::Push {
            dir,
            reference,
            name,
            registry_auth_file,
        } => push(
            &dir,
            &reference,
            name.as_deref(),
            registry_auth_file.as_deref(),
        ),
        Command::Bmap { image, output } => {
            let out = output.unwrap_or_else(|| {
                let name = image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                image.with_file_name(format!("{name}.bmap"))
            });
            let bmap = crate::bmap::write_bmap(&image, &out)?;
            println!(
                "{}: {} of {} bytes mapped",
                out.display(),
                bmap.mapped_bytes(),
                bmap.image_size
            );
            Ok(())
        }
        Command::Cache { command, cache_dir } => cache_cmd(command, cache_dir),
        Command::Keys {
            command: KeysCommand::Generate { dir, name },
        } => keys_generate(&dir, &name),
        Command::Release {
            command: ReleaseCommand::Diff { old, new, json },
        } => release_diff(&old, &new, json),
        Command::Tailnet { command } => tailnet::run(command),
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            let pages = docs::man_pages(&dir)?;
            println!("{}: {} man pages", dir.display(), pages.len());
            Ok(())
        }
        Command::Serve(args) => crate::serve::run(&args.options(), args.json),
        Command::Netinstall {
            order_url,
            staging_dir,
        } => crate::install::run(&order_url, &staging_dir),
        Command::Doctor { packages: true, .. } => {
            for p in doctor::apt_packages(false) {
                println!("{p}");
            }
            for p in doctor::apt_packages(true) {
                println!("{p} bookworm-backports");
            }
            Ok(())
        }
        Command::Doctor { json: true, .. } => {
            let checks = doctor::checks();
            println!("{}", serde_json::to_string_pretty(&checks)?);
            let missing = checks.iter().filter(|c| !c.present).count();
            if missing > 0 {
                bail!("{missing} host prerequisites missing: run `nodeforge doctor --install`");
            }
            Ok(())
        }
        Command::Doctor { install, .. } => {
            let (text, missing) = doctor::report();
            print!("{text}");
            if install {
                doctor::install(&missing)?;
                let (_, still) = doctor::report();
                if !still.is_empty() {
                    bail!(
                        "still missing after install: {}",
                        still.iter().map(|r| r.what).collect::<Vec<_>>().join(", ")
                    );
                }
                println!("all host prerequisites are installed");
            } else if !missing.is_empty() {
                bail!(
                    "{} host prerequisites missing: run `nodeforge doctor --install`",
                    missing.len()
                );
            }
            Ok(())
        }
    }
}
