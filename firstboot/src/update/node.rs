//! The updater as the node runs it: its own config and key, its slots,
//! then the switch to the written slot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{HttpOrigin, Installed, Request, Running};
use crate::config::BakedConfig;
use crate::fsutil::under;
use crate::runner::{Cmd, CommandRunner};

/// The running slot's index, kept between tries of one boot (tmpfs).
const INDEX_CACHE: &str = "/run/nodeforge/update/running-index.json";

/// `nodeforge-firstboot update`'s options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The build's directory URL (`http://…/releases/<build>` of serve);
    /// the baked `[update] url` when None.
    pub from: Option<String>,
    /// The slots; found from the baked layout and /proc/cmdline when the
    /// image has A/B slots.
    pub running: Option<PathBuf>,
    pub target: Option<PathBuf>,
    /// The build's name; the profile's by default.
    pub build: Option<String>,
    /// The trusted key; the baked one by default.
    pub key: Option<PathBuf>,
    pub allow_downgrade: bool,
    /// Reboot into the new slot when it is ready.
    pub reboot: bool,
}

/// What the node did: the slot written and, with A/B slots, the entry
/// that boots it next.
#[derive(Debug)]
pub struct Done {
    /// None: the node already had the release.
    pub installed: Option<Installed>,
    pub next: Option<super::switch::Pending>,
}

pub fn run(
    root: &Path,
    opts: &Options,
    runner: &dyn CommandRunner,
    say: &mut dyn FnMut(&str),
) -> Result<Done> {
    let cfg = BakedConfig::load(root)?;
    let key_path = opts
        .key
        .clone()
        .unwrap_or_else(|| under(root, super::RELEASE_KEY_PATH));
    let key_text = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "reading the release key {} (the profile's [update] key bakes it; or pass --key)",
            key_path.display()
        )
    })?;
    let trusted = nodeforge_release::parse_public_key(&key_text, &key_path.display().to_string())?;
    // The slots: given, or this node's own.
    let (running, target, switch_to) = match (&opts.running, &opts.target, &cfg.slots) {
        (Some(r), Some(t), _) => (r.clone(), t.clone(), None),
        (None, None, Some(slots)) => {
            let running = slots.running_slot(root).context("reading /proc/cmdline")?;
            let Some(running) = running else {
                bail!(
                    "the kernel command line names neither slot's partition as root=: was this \
                     node booted from its A/B entries?"
                );
            };
            let dev = |s| PathBuf::from(format!("/dev/disk/by-partuuid/{}", slots.partuuid(s)));
            (
                dev(running),
                dev(running.other()),
                Some((slots, running.other())),
            )
        }
        (None, None, None) => bail!(
            "this image has no A/B slots (its profile has no [update]): give --running and \
             --target to write a slot by hand"
        ),
        _ => bail!("give both --running and --target, or neither"),
    };
    if same_device(&running, &target)? {
        bail!(
            "--running {} and --target {} are the same device",
            running.display(),
            target.display()
        );
    }
    if let Some((_, target_slot)) = &switch_to {
        let running_slot = target_slot.other();
        if super::switch::on_trial(root, running_slot)? {
            bail!(
                "slot {} is on trial (its boot entry still counts tries): the other slot is the \
                 known-good one and is not overwritten; update once nodeforge-assess has kept \
                 this slot",
                running_slot.letter()
            );
        }
    }
    let state_dir = under(root, super::STATE_DIR);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let _lock = lock(&state_dir)?;
    // What the node has: the running slot's version (on the ESP) and a
    // written slot's that boots next.
    let mut current = Vec::new();
    if let (Some((_, target)), Some(_)) = (&switch_to, &cfg.slots) {
        let esp = under(root, super::switch::ESP_MOUNT);
        let running = target.other();
        if let Ok(v) = std::fs::read_to_string(esp.join(crate::slots::version_file(running))) {
            current.push(v.trim().to_owned());
        }
        if let Ok(p) = std::fs::read(super::switch::pending_path(root)) {
            if let Ok(p) = serde_json::from_slice::<super::switch::Pending>(&p) {
                current.push(p.version);
            }
        }
    }
    let index_cache = under(root, INDEX_CACHE);
    let req = Request {
        build: opts.build.as_deref().unwrap_or(&cfg.profile),
        trusted: &trusted,
        running: Running {
            arch: super::debian_arch().into(),
            epoch: cfg.epoch,
        },
        running_slot: &running,
        target_slot: &target,
        state_dir: &state_dir,
        index_cache: Some(&index_cache),
        allow_downgrade: opts.allow_downgrade,
        disk_guid: cfg.slots.as_ref().map(|s| s.disk_guid.as_str()),
        current: &current,
        before_writing: match &switch_to {
            Some((_, slot)) => Some(&|| super::switch::retire(root, *slot)),
            None => None,
        },
    };
    let Some(from) = opts.from.as_deref().or(cfg.update_url.as_deref()) else {
        bail!(
            "no release URL: give --from http://…/releases/<build> (or bake one with the \
             profile's [update] url)"
        );
    };
    let origin = HttpOrigin::new(from, Duration::from_secs(60));
    let installed = match super::update(&origin, &req, say) {
        Ok(i) => i,
        Err(e) => match e.downcast_ref::<super::UpdateRefused>() {
            Some(current @ super::UpdateRefused::Current { .. }) => {
                say(&current.to_string());
                return Ok(Done {
                    installed: None,
                    next: None,
                });
            }
            _ => return Err(e),
        },
    };
    let next = match switch_to {
        None => None,
        Some((slots, slot)) => {
            let p = super::switch::switch(
                root,
                slots,
                slot,
                cfg.admin_user.as_deref(),
                &installed.version,
                runner,
            )?;
            say(&format!(
                "slot {} boots next (generation {}, {} tries); the agent blesses it once its \
                 stacks are healthy, else slot {} boots again",
                slot.letter(),
                p.generation,
                slots.tries,
                slot.other().letter()
            ));
            Some(p)
        }
    };
    if opts.reboot && next.is_some() {
        say("rebooting");
        runner.run(&Cmd::new("systemctl").arg("reboot"))?;
    }
    Ok(Done {
        installed: Some(installed),
        next,
    })
}

/// One update at a time (the timer and a hand-run one share the staging
/// file and the target).
fn lock(state_dir: &Path) -> Result<std::fs::File> {
    crate::fsutil::exclusive_lock(&state_dir.join("lock"), "another update")
}

/// Whether two paths name one file or device (a symlink in /dev/disk
/// and the node it points to).
fn same_device(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = |p: &Path| std::fs::metadata(p).with_context(|| format!("reading {}", p.display()));
    let (ma, mb) = (meta(a)?, meta(b)?);
    Ok(if ma.rdev() != 0 || mb.rdev() != 0 {
        ma.rdev() == mb.rdev()
    } else {
        (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
    })
}
