//! Command-line arguments and dispatch to the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::boot::{self, Accel, VmOptions};
use crate::build::{self, BuildOptions, Output};
use crate::cache::{self, Cache};
use crate::customize::{self, SeedArgs};
use crate::doctor;
use crate::plan::Plan;
use crate::profile::ByteSize;

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
    /// Resolve the container images of a profile's stacks to digests for
    /// its architecture and write them to `<profile>.lock.toml`.
    Lock {
        profile: PathBuf,
        /// Resolve a registry's images through a mirror, keeping their
        /// names: `--mirror docker.io=http://127.0.0.1:5000` (repeatable).
        /// The lock records it, and builds fetch the blobs from it.
        #[arg(long = "mirror", value_name = "REGISTRY=URL", value_parser = crate::oci::Mirror::parse)]
        mirrors: Vec<crate::oci::Mirror>,
    },
    /// Boot an image in QEMU and wait for a line on its serial console.
    Boot(BootArgs),
    /// Stamp a per-node seed (hostname, auth key, SSH keys, tags) into an
    /// image's boot partition.
    Customize(CustomizeArgs),
    /// Write an image to an SD card or USB stick: only its mapped blocks,
    /// verified, refusing the wrong disk; optionally stamping the node's seed.
    Flash(crate::flash::FlashArgs),
    /// Write an image's block map (bmaptool's format 2.0): the ranges that
    /// hold data, with their sha256. Builds write one for every image.
    Bmap {
        image: PathBuf,
        /// Where to write it [default: IMAGE.bmap].
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Inspect or prune the build cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// The cache (default: $NODEFORGE_CACHE_DIR or ~/.cache/nodeforge).
        #[arg(long, global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// The tailnet: policy file from the profiles, auth keys through the API.
    Tailnet {
        #[command(subcommand)]
        command: crate::tailnet::cli::TailnetCommand,
    },
    /// Network-boot a fleet: iPXE scripts, kernels, root squashfs and
    /// once-only seeds by MAC address over HTTP (and iPXE over TFTP).
    Serve(crate::serve::ServeArgs),
    /// Runs on a machine netbooted in install mode (its initramfs starts
    /// it): writes the role's image to the local disk the fleet's rule
    /// picks, as `flash` does, and stamps the node's seed.
    #[command(hide = true)]
    Netinstall {
        /// The install order `nodeforge serve` made for this machine.
        order_url: String,
        /// Where the image's mapped ranges are staged (RAM on a netbooted machine).
        #[arg(long, default_value = "/var/tmp")]
        staging_dir: PathBuf,
    },
    /// List the host programs nodeforge needs; --install installs the missing ones.
    Doctor {
        #[arg(long)]
        install: bool,
        /// Print the apt packages of every requirement, one a line (those
        /// from bookworm-backports on bookworm marked so), and nothing else.
        #[arg(long, conflicts_with = "install")]
        packages: bool,
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
    /// Build container images from the blob cache alone, never contacting
    /// a registry.
    #[arg(long)]
    pub offline: bool,
    /// Build twice (the second time from scratch) and compare the images.
    #[arg(long)]
    pub verify_reproducible: bool,
    /// More output formats besides the profile's [outputs] (e.g. netboot); repeatable.
    #[arg(long = "format", value_enum)]
    pub formats: Vec<crate::profile::OutputFormat>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached layers, most recently used first.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove cached layers and leftovers of interrupted builds.
    Prune {
        /// Remove layers not used for this long (e.g. 7d, 12h).
        #[arg(long)]
        older_than: Option<String>,
        /// Then remove the least recently used until the cache is at most this size (e.g. 20GiB).
        #[arg(long)]
        max_size: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct CustomizeArgs {
    pub image: PathBuf,
    /// Stamp a copy written here instead of the image itself.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub seed: SeedArgs,
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
        Command::Flash(args) => crate::flash::run(&args),
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
        Command::Tailnet { command } => crate::tailnet::cli::run(command),
        Command::Serve(args) => crate::serve::run(&args),
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
    let mut plan = Plan::load(&args.profile)?;
    for f in &args.formats {
        if !plan.profile.outputs.contains(f) {
            plan.profile.outputs.push(*f);
        }
    }
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
        offline: args.offline,
    };
    if args.verify_reproducible {
        let (result, check) = build::verify_reproducible(&plan, &opts)?;
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"event": "reproducible", "result": result, "check": check})
            ),
            _ => println!(
                "built {} twice: sha256 {} and {}",
                result.image.display(),
                check.first,
                check.second
            ),
        }
        if !check.identical {
            bail!(
                "the two builds differ (partitions: [{}]; files: [{}])",
                check.differing_partitions.join(", "),
                check.differing_files.join(", ")
            );
        }
        if output == Output::Human {
            println!(
                "reproducible: the two images and the {} files beside them are identical",
                check.compared_files
            );
        }
        return Ok(());
    }
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

fn lock_cmd(profile: &std::path::Path, mirrors: Vec<crate::oci::Mirror>) -> Result<()> {
    let p = crate::profile::load(profile)?;
    if p.stacks.is_empty() {
        bail!(
            "{}: the profile has no stacks, so there is nothing to lock",
            profile.display()
        );
    }
    let client = crate::oci::Client::new()?.with_mirrors(crate::oci::Mirrors::new(mirrors));
    let (lock, path) = crate::oci::lock::lock(&p, profile, &client)?;
    for im in &lock.images {
        println!("{}  {}", im.digest, im.reference);
    }
    println!(
        "wrote {} ({} images for {})",
        path.display(),
        lock.images.len(),
        lock.arch
    );
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

fn customize_cmd(args: CustomizeArgs) -> Result<()> {
    let Some(seed) = args.seed.seed()? else {
        bail!("nothing to stamp: give --node, --hostname, --authkey-file, --ssh-key or --tag");
    };
    let target = match &args.output {
        Some(out) => {
            customize::sparse_copy(&args.image, out)?;
            out.clone()
        }
        None => args.image.clone(),
    };
    customize::stamp(&target, &seed)?;
    println!(
        "stamped the seed into {} (hostname {}, auth key {}, {} SSH keys, tags [{}])",
        target.display(),
        seed.hostname.as_deref().unwrap_or("from the image"),
        if seed.tailscale_auth_key.is_some() {
            "set"
        } else {
            "none"
        },
        seed.ssh_authorized_keys.len(),
        seed.tailscale_tags.join(", ")
    );
    Ok(())
}

fn cache_cmd(command: CacheCommand, dir: Option<PathBuf>) -> Result<()> {
    let cache = Cache::new(dir.unwrap_or_else(build::default_cache_dir));
    match command {
        CacheCommand::Ls { json } => {
            let entries = cache.entries()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            let total: u64 = entries.iter().map(|e| e.size).sum();
            for e in &entries {
                println!(
                    "{:<7} {:<16} {:>10} used {:>4} ago  {}",
                    e.kind,
                    &e.key[..e.key.len().min(16)],
                    ByteSize(e.size / (1 << 20) * (1 << 20)).to_string(),
                    cache::age(cache::seconds_since(e.last_used)),
                    e.summary
                );
            }
            println!(
                "{} entries, {} MiB in {}",
                entries.len(),
                total >> 20,
                cache.dir.display()
            );
            Ok(())
        }
        CacheCommand::Prune {
            older_than,
            max_size,
        } => {
            let older = older_than
                .as_deref()
                .map(cache::parse_duration)
                .transpose()?;
            let max = max_size
                .as_deref()
                .map(|s| s.parse::<ByteSize>().map_err(anyhow::Error::msg))
                .transpose()?;
            let r = cache.prune(older, max)?;
            println!(
                "removed {} entries and {} leftovers ({} MiB); kept {} entries ({} MiB)",
                r.removed,
                r.leftovers,
                r.bytes >> 20,
                r.kept,
                r.kept_bytes >> 20
            );
            Ok(())
        }
    }
}
