//! Step `rootfs`: Debian via mmdebstrap, cached by what shapes it.

use std::fs;

use anyhow::{Context, Result};

use super::progress::StepOutcome;
use super::{BuildContext, StepReport};
use crate::binfmt;
use crate::exec::Cmd;
use crate::fsutil;
use crate::profile::InitramfsKind;

/// Documentation, man pages and translations are never read on a node and
/// make up a large part of a minimal system.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

pub fn run(ctx: &mut BuildContext, _: &[StepReport]) -> Result<StepOutcome> {
    let plan = ctx.plan;
    let dir = ctx.opts.cache_dir.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = dir.join(format!("{}.tar", plan.rootfs_key));
    let outcome = if tar.is_file() && !ctx.opts.no_cache {
        StepOutcome::Reused(format!(
            "base rootfs {} from the cache",
            &plan.rootfs_key[..12]
        ))
    } else {
        // mmdebstrap picks the output format from the name's extension.
        let partial = dir.join(format!(".{}.partial.tar", plan.rootfs_key));
        let _ = fs::remove_file(&partial);
        let result = mmdebstrap(ctx, &partial);
        if result.is_err() {
            let _ = fs::remove_file(&partial);
        }
        result?;
        fsutil::commit_partial(&partial, &tar)?;
        StepOutcome::Done
    };
    fs::create_dir_all(&ctx.rootfs)
        .with_context(|| format!("creating {}", ctx.rootfs.display()))?;
    Cmd::new("tar")
        .args([
            "--extract",
            "--preserve-permissions",
            "--same-owner",
            "--numeric-owner",
        ])
        .args(["--xattrs", "--xattrs-include=*", "--file"])
        .arg(&tar)
        .arg("--directory")
        .arg(&ctx.rootfs)
        .run()
        .with_context(|| format!("unpacking the base rootfs {}", tar.display()))?;
    Ok(outcome)
}

/// With nodeforge's initramfs, Debian's generator would only cost time
/// (minutes under emulation): update-initramfs is diverted to /bin/true
/// while packages install, and the diversion is removed at the end so the
/// node's own kernel upgrades make an initramfs again as usual.
const DIVERT_INITRAMFS: &str = "chroot \"$1\" dpkg-divert --quiet --local --rename \
     --add /usr/sbin/update-initramfs && ln -s /bin/true \"$1/usr/sbin/update-initramfs\"";
const RESTORE_INITRAMFS: &str = "rm -f \"$1/usr/sbin/update-initramfs\" && chroot \"$1\" \
     dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs";

fn mmdebstrap(ctx: &BuildContext, out: &std::path::Path) -> Result<()> {
    let p = &ctx.plan.profile;
    binfmt::require(p.hardware.arch)?;
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", p.hardware.arch.debian()))
        .arg(format!("--components={}", p.debian.components.join(",")))
        .arg(format!("--include={}", ctx.plan.packages.join(",")));
    for ex in DPKG_EXCLUDES {
        cmd = cmd.arg(format!("--dpkgopt={ex}"));
    }
    match p.hardware.initramfs {
        InitramfsKind::InitramfsTools => {}
        InitramfsKind::Nodeforge => {
            cmd = cmd
                .arg(format!("--essential-hook={DIVERT_INITRAMFS}"))
                .arg(format!("--customize-hook={RESTORE_INITRAMFS}"));
        }
    }
    if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
        cmd = cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    cmd.arg(&p.debian.suite)
        .arg(out)
        .arg(&p.debian.mirror)
        .run()
        .with_context(|| {
            format!(
                "bootstrapping Debian {} for {}",
                p.debian.suite,
                p.hardware.arch.debian()
            )
        })?;
    Ok(())
}
