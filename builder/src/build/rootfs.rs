//! Step `rootfs`: Debian via mmdebstrap, cached by what shapes it.

use std::fs;

use anyhow::{Context, Result};

use super::agent::host_arch;
use super::context::BuildContext;
use super::cross::{self, Deferred};
use super::progress::StepOutcome;
use crate::binfmt;
use crate::exec::Cmd;
use crate::fsutil;
use crate::profile::{Arch, InitramfsKind};

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

/// Below this much free space a failed bootstrap is blamed on the disk.
const LOW_SPACE: u64 = 512 << 20;

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let plan = ctx.plan;
    let dir = ctx.cache.rootfs_dir();
    crate::fsutil::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = ctx.cache.rootfs_tar(&plan.rootfs_key);
    // Another build making the same layer finishes first; then it is reused.
    let _producing = ctx.cache.lock_rootfs(&plan.rootfs_key)?;
    let entry = [(tar.clone(), super::remote_cache::TARBALL)];
    let mut from = "the cache".to_owned();
    if !tar.is_file() && !ctx.opts.no_cache {
        if let Some(remote) = &ctx.remote {
            if remote.fetch("rootfs", &plan.rootfs_key, &entry) {
                from = format!("the remote cache {}", remote.from_uri());
            }
        }
    }
    let outcome = if tar.is_file() && !ctx.opts.no_cache {
        StepOutcome::Reused(format!(
            "base rootfs {} from {from}",
            &plan.rootfs_key[..12]
        ))
    } else {
        // mmdebstrap picks the output format from the name's extension.
        let partial = dir.join(format!(
            ".{}.partial{}",
            plan.rootfs_key,
            crate::cache::TARBALL_EXT
        ));
        let _ = fs::remove_file(&partial);
        let result = mmdebstrap(ctx, &partial);
        if let Err(e) = result {
            let _ = fs::remove_file(&partial);
            // A full disk shows up as a failing package script; say so.
            return Err(match fsutil::free_bytes(&dir) {
                Ok(free) if free < LOW_SPACE => e.context(format!(
                    "only {} MiB are free in {}: free some space (`nodeforge cache prune`) \
                     or set NODEFORGE_CACHE_DIR to a larger disk",
                    free >> 20,
                    dir.display()
                )),
                _ => e,
            });
        }
        fsutil::commit_partial(&partial, &tar)?;
        StepOutcome::Done
    };
    let p = &plan.profile;
    let summary = format!(
        "{} {} [{}], {} packages, epoch {}",
        p.debian.suite,
        p.hardware.arch.debian(),
        p.debian.components.join(","),
        plan.packages.len(),
        match plan.epoch {
            Some(e) => format!("{e} ({})", short_source(&plan.epoch_source)),
            None => "none (build time)".to_owned(),
        }
    );
    ctx.cache.touch_rootfs(&plan.rootfs_key, &summary)?;
    if let Some(remote) = &ctx.remote {
        remote.store("rootfs", &plan.rootfs_key, &entry);
    }
    crate::fsutil::create_dir_all(&ctx.rootfs)
        .with_context(|| format!("creating {}", ctx.rootfs.display()))?;
    Cmd::new("tar")
        .args([
            "--extract",
            "--preserve-permissions",
            "--same-owner",
            "--numeric-owner",
            "--zstd",
        ])
        .args(["--xattrs", "--xattrs-include=*", "--file"])
        .arg(&tar)
        .arg("--directory")
        .arg(&ctx.rootfs)
        .run()
        .with_context(|| format!("unpacking the base rootfs {}", tar.display()))?;
    crate::apt::install_in_image(&ctx.rootfs, &p.apt, &ctx.cache.dir)
        .context("installing the profile's apt repositories into the image")?;
    Ok(outcome)
}

/// Set, a foreign-architecture bootstrap runs maintainer scripts with the
/// target's own interpreters and tools, all emulated (slower): for
/// comparing trees (benches/cross-tree.sh).
pub const EMULATE_SCRIPTS: &str = "NODEFORGE_EMULATE_SCRIPTS";

/// mmdebstrap copies the host's resolv.conf and hostname into the tree
/// (for compatibility with debootstrap): the image would carry the build
/// machine's nameserver and name, and differ from machine to machine.
/// Taken out only where they are still the host's copies (systemd-resolved
/// makes resolv.conf a link of its own); the system step writes hostname.
const DROP_HOST_FILES: &str = "for f in etc/resolv.conf etc/hostname; do \
     if [ -f \"$1/$f\" ] && [ ! -L \"$1/$f\" ] && cmp -s \"/$f\" \"$1/$f\"; then rm -f \"$1/$f\"; fi; \
     done";

/// Puts [`cross::essential_chroot_wrapper`] first on mmdebstrap's PATH,
/// in the build's work directory (outside the target's root).
fn with_essential_wrapper(ctx: &BuildContext, cmd: Cmd, native_tools: bool) -> Result<Cmd> {
    let real = crate::exec::find_program("chroot")
        .context("chroot(8) is not installed on this host (Debian package coreutils)")?;
    let work = ctx.rootfs.parent().unwrap_or(std::path::Path::new("/"));
    let bin = work.join("native-bin");
    crate::fsutil::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let wrapper = bin.join("chroot");
    fs::write(
        &wrapper,
        cross::essential_chroot_wrapper(&real, DPKG_EXCLUDES),
    )
    .with_context(|| format!("writing {}", wrapper.display()))?;
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .with_context(|| format!("making {} executable", wrapper.display()))?;
    let tools = bin.join("native-tools");
    let script = if native_tools {
        cross::native_tools()
    } else {
        "exit 0".to_owned()
    };
    fs::write(&tools, script).with_context(|| format!("writing {}", tools.display()))?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    Ok(cmd.env("PATH", format!("{}:{path}", bin.display())))
}

fn mmdebstrap(ctx: &BuildContext, out: &std::path::Path) -> Result<()> {
    let p = &ctx.plan.profile;
    crate::doctor::require_program("mmdebstrap", "bootstrapping the rootfs")?;
    let foreign = p.hardware.arch != host_arch();
    if foreign {
        // mmdebstrap only says "install arch-test", minutes later on a slow start.
        crate::doctor::require_program(
            "arch-test",
            &format!(
                "bootstrapping an {} rootfs on this {} host",
                p.hardware.arch.debian(),
                host_arch().debian()
            ),
        )?;
    }
    binfmt::require(p.hardware.arch)?;
    let mut cmd = super::reproducible::hermetic(Cmd::new("mmdebstrap"))
        .arg("--mode=root")
        .arg("--variant=minbase")
        .arg(format!("--architectures={}", p.hardware.arch.debian()))
        .arg(format!("--components={}", p.debian.components.join(",")))
        .arg(format!("--include={}", ctx.plan.packages.join(",")));
    for ex in DPKG_EXCLUDES {
        cmd = cmd.arg(format!("--dpkgopt={ex}"));
    }
    let mut deferred = Vec::new();
    match p.hardware.initramfs {
        InitramfsKind::InitramfsTools => deferred.push(Deferred::UpdateInitramfsOnce),
        // Debian's generator would only cost time (minutes under
        // emulation): nodeforge writes the initramfs after the bootstrap.
        InitramfsKind::Nodeforge => deferred.push(Deferred::UpdateInitramfs),
    }
    if foreign {
        deferred.extend([Deferred::Depmod, Deferred::UpdateCaCertificates]);
        match p.hardware.arch {
            Arch::Arm64 => cmd = cmd.env("QEMU_CPU", cross::QEMU_CPU_ARM64),
            Arch::Amd64 => {}
        }
    }
    let ssh_keys = foreign && ctx.plan.packages.iter().any(|p| p == "openssh-server");
    let mut hooks = cross::hooks(&deferred, ssh_keys);
    if foreign {
        hooks
            .essential
            .push(cross::native_unpack_hook(DPKG_EXCLUDES));
        let native_tools = std::env::var_os(EMULATE_SCRIPTS).is_none();
        cmd = with_essential_wrapper(ctx, cmd, native_tools)?;
        if native_tools {
            // The chroot wrapper runs it before the essential set
            // configures; as a hook it covers an mmdebstrap whose essential
            // install the wrapper does not recognise (then it is a no-op
            // when the wrapper already ran it).
            hooks.essential.push(cross::native_tools());
            // First: the deferred work below runs target programs.
            hooks.customize.insert(0, cross::native_tools_undo());
        }
    }
    for h in &hooks.essential {
        cmd = cmd.arg(format!("--essential-hook={h}"));
    }
    hooks.customize.push(DROP_HOST_FILES.to_owned());
    for h in &hooks.customize {
        cmd = cmd.arg(format!("--customize-hook={h}"));
    }
    if let Some(epoch) = ctx.epoch {
        cmd = cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    // mmdebstrap compresses the cache entry with plain `zstd`: on every core.
    cmd = cmd.env("ZSTD_NBTHREADS", "0");
    // mmdebstrap assembles the whole tree in $TMPDIR: on trixie /tmp is a
    // tmpfs of half the RAM, too small for a rootfs with DKMS and headers.
    // The build's work directory sits on the cache's disk, whose free
    // space the error above reports.
    cmd = cmd.env("TMPDIR", ctx.work.path());
    if p.debian.snapshot.is_some() {
        // Snapshot Release files are past their Valid-Until by design.
        cmd = cmd.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
    }
    // Signed third-party repositories and local .debs, as extra sources lines.
    let extra = crate::apt::prepare(&ctx.cache.dir, &p.apt)?;
    cmd.arg(&p.debian.suite)
        .arg(out)
        .arg(&p.debian.mirror)
        .args(extra)
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

/// Where the epoch came from, in a word or two for `cache ls`.
fn short_source(source: &crate::build::archive_epoch::EpochSource) -> String {
    use crate::build::archive_epoch::EpochSource as S;
    match source {
        S::Environment => "SOURCE_DATE_EPOCH".into(),
        S::Snapshot { snapshot } => format!("snapshot {snapshot}"),
        S::Archive { date, .. } => format!("archive Date: {date}"),
        S::Unresolved | S::BuildTime { .. } => "build time".into(),
    }
}
