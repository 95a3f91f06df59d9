//! What each `nodeforge` command runs, given its parsed arguments.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::args::{BootArgs, BuildArgs, CacheCommand, CustomizeArgs};
use crate::boot::{self, VmOptions};
use crate::build::{self, BuildOptions, Output};
use crate::cache::{self, Cache};
use crate::plan::Plan;
use crate::profile::ByteSize;

pub fn check(profiles: &[PathBuf]) -> Result<()> {
    let mut failed = 0;
    for p in profiles {
        let checked = Plan::load(p).and_then(|plan| {
            let refused = crate::firewall::published::check_profile(&plan.profile)
                .with_context(|| format!("checking the ports {} publishes", p.display()))?;
            Ok((plan, refused))
        });
        match checked {
            Ok((plan, refused)) if refused.is_empty() => println!(
                "ok   {} (role {}, {} packages)",
                p.display(),
                plan.profile.role,
                plan.packages.len()
            ),
            Ok((_, refused)) => {
                failed += 1;
                for why in refused {
                    eprintln!("{}: {why}", p.display());
                }
            }
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

pub fn build_cmd(args: BuildArgs) -> Result<()> {
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
        remote_cache: build::remote_cache::RemoteCacheOptions {
            from: args.cache_from,
            to: args.cache_to,
            auth_file: args.registry_auth_file,
        },
        signing_key: args.signing_key,
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

pub fn lock_cmd(profile: &std::path::Path, mirrors: Vec<crate::oci::Mirror>) -> Result<()> {
    let p = crate::profile::load(profile)?;
    if p.stacks.is_empty() && p.models.is_empty() {
        bail!(
            "{}: the profile has no stacks and no models, so there is nothing to lock",
            profile.display()
        );
    }
    let client = crate::oci::Client::new()?.with_mirrors(crate::oci::Mirrors::new(mirrors));
    let (lock, path) = crate::oci::lock::lock(&p, profile, &client)?;
    for im in &lock.images {
        println!("{}  {}", im.digest, im.reference);
    }
    for m in &lock.models {
        println!("{}  model {}", m.digest, m.name);
    }
    println!(
        "wrote {} ({} images for {}, {} models)",
        path.display(),
        lock.images.len(),
        lock.arch,
        lock.models.len()
    );
    Ok(())
}

pub fn boot_cmd(args: BootArgs) -> Result<()> {
    let opts = VmOptions {
        ssh_port: args.ssh_port,
        accel: args.accel,
        memory_mb: args.memory,
        log: args.log,
        persist: args.persist,
        ..VmOptions::new(&args.image)
    };
    let (accel, took) = boot::boot(&opts, &args.expect, Duration::from_secs(args.timeout))?;
    if args.json {
        let result = serde_json::json!({
            "image": args.image,
            "accel": format!("{accel:?}").to_lowercase(),
            "expect": args.expect,
            "seconds": took.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!(
        "{} booted ({:?}): {:?} after {:.1}s",
        args.image.display(),
        accel,
        args.expect,
        took.as_secs_f64()
    );
    Ok(())
}

pub fn customize_cmd(args: CustomizeArgs) -> Result<()> {
    let Some(seed) = args.seed.seed()? else {
        bail!("nothing to stamp: give --node, --hostname, --authkey-file, --ssh-key or --tag");
    };
    let remote = args.image.to_str().filter(|s| s.starts_with("oci://"));
    let target = match (&args.output, remote) {
        (Some(out), Some(uri)) => {
            let client = crate::oci::client::Client::new()?
                .with_credentials(crate::oci::auth::Credentials::load(None)?);
            crate::oci::artifact::pull_image(&client, uri, out)
                .with_context(|| format!("fetching {uri} into {}", out.display()))?;
            out.clone()
        }
        (None, Some(uri)) => {
            bail!("{uri} is in a registry: give -o OUT.img, the file to fetch it into and stamp")
        }
        (Some(out), None) => {
            crate::fsutil::sparse_copy(&args.image, out)?;
            out.clone()
        }
        (None, None) => args.image.clone(),
    };
    crate::seed::stamp(&target, &seed)?;
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

/// `nodeforge keys generate`: the pair, and what to do with each half.
pub fn keys_generate(dir: &std::path::Path, name: &str) -> Result<()> {
    let (private, public) = crate::release::generate_keys(dir, name)?;
    let key = crate::release::load_public_key(&public)?;
    println!(
        "release key {}\n  private: {} (0600; builds sign with `nodeforge build --signing-key {}`; \
         keep it off images, caches and logs)\n  public:  {} (`nodeforge serve --release-key {}`)",
        key.fingerprint(ssh_key::HashAlg::Sha256),
        private.display(),
        private.display(),
        public.display(),
        public.display(),
    );
    Ok(())
}

/// `nodeforge release diff`.
pub fn release_diff(old: &std::path::Path, new: &std::path::Path, json: bool) -> Result<()> {
    use crate::release::diff::{Build, Report};
    let report = Report::of(&Build::open(old)?, &Build::open(new)?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.text());
    }
    Ok(())
}

pub fn cache_cmd(command: CacheCommand, dir: Option<PathBuf>) -> Result<()> {
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
            json,
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
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
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

/// `nodeforge push DIR REF`: prints the artifact's pinned reference.
pub fn push(
    dir: &std::path::Path,
    reference: &str,
    name: Option<&str>,
    auth_file: Option<&std::path::Path>,
) -> Result<()> {
    let target = crate::oci::artifact::parse_uri(reference)?;
    let credentials = crate::oci::auth::Credentials::load(auth_file)?;
    let client = crate::oci::client::Client::new()?.with_credentials(credentials);
    let digest = crate::oci::artifact::push(&client, dir, name, &target, dir)
        .with_context(|| format!("pushing {} to {reference}", dir.display()))?;
    let pinned = crate::oci::Reference {
        tag: None,
        digest: Some(digest),
        ..target
    };
    println!("oci://{pinned}");
    Ok(())
}
