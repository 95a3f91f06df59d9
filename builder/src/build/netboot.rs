//! Step `netboot` (output format `netboot`): what a machine needs to boot the role over the
//! network: the kernel, nodeforge's netboot initramfs, the root
//! filesystem as a squashfs and an iPXE script that ties them together.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::agent::host_arch;
use super::context::BuildContext;
use super::image::kernel_version;
use super::progress::StepOutcome;
use crate::exec::{find_program, Cmd};
use crate::fsutil;
use crate::initramfs::netboot::{self, ROOT_PARAM, ROOT_SHA256_PARAM};
use crate::install::INSTALLER_PATH;
use crate::profile::Arch;

/// iPXE variable `nodeforge serve` sets to the URL these files are under.
pub const BASE_VAR: &str = "nodeforge-base";
/// iPXE variable `nodeforge serve` sets to the node's own kernel
/// parameters (its seed URL …).
pub const NODE_VAR: &str = "nodeforge-node";

/// The file names of a netboot build called `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootFiles {
    pub kernel: String,
    pub initrd: String,
    pub squashfs: String,
    pub script: String,
}

impl NetbootFiles {
    pub fn of(name: &str) -> Self {
        NetbootFiles {
            kernel: format!("{name}.vmlinuz"),
            initrd: format!("{name}.initrd"),
            squashfs: format!("{name}.squashfs"),
            script: format!("{name}.boot.ipxe"),
        }
    }
}

/// Step `netboot`: the netboot files of the finished root, written into
/// the output directory, each appearing only when complete.
pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    write(ctx).map(|_| StepOutcome::Done)
}

fn write(ctx: &mut BuildContext) -> Result<NetbootFiles> {
    let p = &ctx.plan.profile;
    let files = NetbootFiles::of(&p.name);
    let out = |name: &str| ctx.opts.output_dir.join(name);
    if !["usr/bin/busybox", "bin/busybox"]
        .iter()
        .any(|b| ctx.rootfs.join(b).is_file())
    {
        bail!(
            "the netboot initramfs runs the image's static busybox: add \"busybox-static\" to \
             the profile's packages"
        );
    }
    let version = kernel_version(&ctx.rootfs)?;

    let kernel = ctx.target(&format!("/boot/vmlinuz-{version}"));
    let bytes = fs::read(&kernel).with_context(|| format!("reading {}", kernel.display()))?;
    fsutil::atomic_write(&out(&files.kernel), &bytes)?;

    let initrd = netboot::build(&ctx.rootfs, &version, ctx.epoch.unwrap_or(0))
        .with_context(|| format!("making the netboot initramfs for kernel {version}"))?;
    fsutil::atomic_write(&out(&files.initrd), &initrd.bytes)?;

    // Into the squashfs only: the disk image is already written.
    match installer_binary(ctx.plan.profile.hardware.arch)? {
        Some(bin) => install_installer(ctx, &bin)?,
        None => eprintln!(
            "nodeforge: no nodeforge binary for {} to put in the netboot root: its machines \
             can run diskless but not install (set NODEFORGE_INSTALLER to one)",
            ctx.plan.profile.hardware.arch.debian()
        ),
    }
    let squashfs = write_squashfs(&ctx.rootfs, &out(&files.squashfs), ctx.epoch)?;
    let digest = crate::release::file_digest(&squashfs)?;
    let root_sha256 = digest.sha256.clone();
    ctx.digests.insert(files.squashfs.clone(), digest);
    let script = ipxe_script(
        &files,
        &root_sha256,
        &p.name,
        &p.role,
        &p.hardware.kernel_cmdline,
    );
    fsutil::atomic_write(&out(&files.script), script.as_bytes())?;
    Ok(files)
}

/// The nodeforge program for install mode (`netinstall`) on `arch`:
/// $NODEFORGE_INSTALLER, else this program when it is `nodeforge` on the
/// same architecture, else (tests) built from this source tree.
pub const INSTALLER_VAR: &str = "NODEFORGE_INSTALLER";

fn installer_binary(arch: Arch) -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os(INSTALLER_VAR).map(PathBuf::from) {
        if !p.is_file() {
            bail!("NODEFORGE_INSTALLER={} does not exist", p.display());
        }
        return Ok(Some(p));
    }
    if arch != host_arch() {
        return Ok(None);
    }
    let me = std::env::current_exe().context("finding this program")?;
    if me.file_name().is_some_and(|n| n == "nodeforge") {
        return Ok(Some(me));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .filter(|w| w.join("builder/Cargo.toml").is_file());
    let Some(ws) = workspace else {
        return Ok(None);
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    // The dev profile: the test run has its dependencies built already.
    Cmd::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "nodeforge",
            "--bin",
            "nodeforge",
        ])
        .arg("--manifest-path")
        .arg(ws.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .run()
        .context("building nodeforge for the netboot root's installer")?;
    Ok(Some(target_dir.join("debug/nodeforge")))
}

fn install_installer(ctx: &BuildContext, bin: &Path) -> Result<()> {
    let dest = ctx.target(INSTALLER_PATH);
    crate::fsutil::create_dir_all(dest.parent().expect("has a parent"))?;
    fs::copy(bin, &dest).with_context(|| {
        format!(
            "copying {} into the netboot root as {INSTALLER_PATH}",
            bin.display()
        )
    })?;
    crate::fsutil::set_mode(&dest, 0o755)?;
    if find_program("strip").is_some() {
        // A debug build carries ~100 MB of symbols the node would hold in RAM.
        Cmd::new("strip")
            .arg("--strip-debug")
            .arg(&dest)
            .run()
            .with_context(|| format!("stripping {}", dest.display()))?;
    }
    Ok(())
}

/// The root as a squashfs; with an epoch, every time in it is the epoch
/// and the bytes depend on the inputs only (mksquashfs sorts directory
/// entries itself; -reproducible orders its parallel output).
fn write_squashfs(rootfs: &Path, dest: &Path, epoch: Option<i64>) -> Result<PathBuf> {
    let partial = fsutil::partial_path(dest);
    let _ = fs::remove_file(&partial);
    let mut cmd = super::reproducible::hermetic(Cmd::new("mksquashfs"))
        .arg(rootfs)
        .arg(&partial)
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "zstd"]);
    if let Some(epoch) = epoch {
        // mksquashfs takes SOURCE_DATE_EPOCH as -mkfs-time and -all-time
        // (and refuses the flags when the variable is set too).
        cmd = cmd
            .arg("-reproducible")
            .env("SOURCE_DATE_EPOCH", epoch.to_string());
    }
    cmd.run().with_context(|| {
        format!(
            "writing the root squashfs {} (mksquashfs is in squashfs-tools: \
             `nodeforge doctor --install`)",
            dest.display()
        )
    })?;
    fsutil::commit_partial(&partial, dest)?;
    Ok(dest.to_path_buf())
}

/// The iPXE script: relative to `${nodeforge-base}`, with the node's own
/// parameters from `${nodeforge-node}` (both empty when unset, so the
/// script also boots from a plain HTTP server once the base is set). It
/// carries the squashfs's sha256, which the initramfs checks before it
/// mounts a byte of what it fetched over plain HTTP.
pub fn ipxe_script(
    files: &NetbootFiles,
    root_sha256: &str,
    name: &str,
    role: &str,
    cmdline: &[String],
) -> String {
    let base = format!("${{{BASE_VAR}}}");
    let mut args = vec![
        format!("initrd={}", files.initrd),
        format!("{ROOT_PARAM}={base}{}", files.squashfs),
        format!("{ROOT_SHA256_PARAM}={root_sha256}"),
        format!("${{{NODE_VAR}}}"),
    ];
    args.extend(cmdline.iter().cloned());
    format!(
        "#!ipxe\n\
         # nodeforge netboot: {name} (role {role}). `nodeforge serve` sets\n\
         # {BASE_VAR} (the URL of these files, ending in /) and {NODE_VAR}\n\
         # (the node's kernel parameters, e.g. nodeforge.seed=URL).\n\
         kernel {base}{kernel} {args}\n\
         initrd {base}{initrd}\n\
         boot\n",
        kernel = files.kernel,
        initrd = files.initrd,
        args = args.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_boots_kernel_and_initrd_with_the_root_url_and_node_parameters() {
        let f = NetbootFiles::of("web");
        let sum = "ab".repeat(32);
        let s = ipxe_script(&f, &sum, "web", "web", &["console=ttyS0,115200n8".into()]);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(
            s.contains(
                "kernel ${nodeforge-base}web.vmlinuz initrd=web.initrd \
                 nodeforge.root=${nodeforge-base}web.squashfs nodeforge.root_sha256=abababababababababababababababababababababababababababababababab \
                 ${nodeforge-node} console=ttyS0,115200n8\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("initrd ${nodeforge-base}web.initrd\nboot\n"),
            "{s}"
        );
    }
}
