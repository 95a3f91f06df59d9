//! Command-line arguments and dispatch to the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::boot::{self, Accel, VmOptions};
use crate::build::{self, BuildOptions, Output};
use crate::doctor;
use crate::plan::Plan;

#[derive(Debug, Parser)]
#[command(
    name = "nodeforge",
    version,
    about = "Build bootable per-role node images and provision the machines that boot them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate profiles without building anything.
    Check {
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
    /// Print the resolved plan of a profile: packages, overlay files,
    /// partitions and each step's inputs.
    Plan {
        profile: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a profile's disk image.
    Build(BuildArgs),
    /// Boot an image in QEMU and wait for a line on its serial console.
    Boot(BootArgs),
    /// List the host programs nodeforge needs; --install installs the missing ones.
    Doctor {
        #[arg(long)]
        install: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    pub profile: PathBuf,
    /// Where the image, its sha256 and manifest go.
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// Cache of build layers (default: $NODEFORGE_CACHE_DIR or ~/.cache/nodeforge).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Build from scratch, reusing no cached layer.
    #[arg(long)]
    pub no_cache: bool,
    /// Print nothing but errors.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print step events and the result as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// First-boot agent binary to install (default: built from source).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    pub image: PathBuf,
    /// Seconds to wait for the expected text.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Text on the serial console that means success.
    #[arg(long, default_value = nodeforge_firstboot::READY_MARKER)]
    pub expect: String,
    /// Forward this host port (on 127.0.0.1) to the guest's SSH.
    #[arg(long)]
    pub ssh_port: Option<u16>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Keep the serial console log in this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write the guest's changes into the image (default: discarded).
    #[arg(long)]
    pub persist: bool,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { profiles } => check(&profiles),
        Command::Plan { profile, json } => {
            let plan = Plan::load(&profile)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
            Ok(())
        }
        Command::Build(args) => build_cmd(args),
        Command::Boot(args) => boot_cmd(args),
        Command::Doctor { install } => {
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

fn check(profiles: &[PathBuf]) -> Result<()> {
    let mut failed = 0;
    for p in profiles {
        match Plan::load(p) {
            Ok(plan) => println!(
                "ok   {} (role {}, {} packages)",
                p.display(),
                plan.profile.role,
                plan.packages.len()
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} profiles have errors", profiles.len());
    }
    Ok(())
}

fn build_cmd(args: BuildArgs) -> Result<()> {
    let plan = Plan::load(&args.profile)?;
    let output = if args.json {
        Output::Json
    } else if args.quiet {
        Output::Quiet
    } else {
        Output::Human
    };
    let opts = BuildOptions {
        output_dir: args.output,
        cache_dir: args.cache_dir.unwrap_or_else(build::default_cache_dir),
        output,
        no_cache: args.no_cache,
        agent: args.agent,
    };
    let result = build::build(&plan, &opts)?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"event": "result", "result": result})
        ),
        Output::Human => {
            let total: f64 = result.steps.iter().map(|s| s.seconds).sum();
            println!(
                "built {} in {total:.1}s: {} MiB disk, {} MiB of data, sha256 {}",
                result.image.display(),
                result.image_size >> 20,
                result.allocated >> 20,
                result.sha256
            );
        }
        Output::Quiet => {}
    }
    Ok(())
}

fn boot_cmd(args: BootArgs) -> Result<()> {
    let opts = VmOptions {
        ssh_port: args.ssh_port,
        accel: args.accel,
        memory_mb: args.memory,
        log: args.log,
        persist: args.persist,
        ..VmOptions::new(&args.image)
    };
    let (accel, took) = boot::boot(&opts, &args.expect, Duration::from_secs(args.timeout))?;
    println!(
        "{} booted ({:?}): {:?} after {:.1}s",
        args.image.display(),
        accel,
        args.expect,
        took.as_secs_f64()
    );
    Ok(())
}
