//! Step `agent`: the first-boot agent, its unit and its baked config.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::config::{BakedConfig, TailscaleConfig, BAKED_CONFIG_PATH};
use nodeforge_firstboot::slots::SlotsConfig;

use super::context::BuildContext;
use super::progress::StepOutcome;
use super::system::enable_unit;
use crate::exec::{find_program, Cmd};
use crate::profile::Arch;

pub const UNIT_NAME: &str = "nodeforge-firstboot.service";

/// The agent binary by content and its baked config.
pub fn inputs(plan: &crate::plan::Plan, agent_sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "agent": agent_sha256,
        "config": baked_config(plan).to_toml(),
        "release_key": plan.profile.release_key,
    })
}

/// The unit the `tailscale` package ships; the agent's unit is ordered
/// after it.
const TAILSCALED_UNIT: &str = "tailscaled.service";

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let binary = ctx.agent_binary.clone();
    let dest = ctx.target(nodeforge_firstboot::BINARY_PATH);
    crate::fsutil::create_dir_all(dest.parent().expect("has parent"))?;
    fs::copy(&binary, &dest).with_context(|| {
        format!(
            "installing agent {} into the image as {}",
            binary.display(),
            nodeforge_firstboot::BINARY_PATH
        )
    })?;
    crate::fsutil::set_mode(&dest, 0o755)?;

    let unit = ctx.target(nodeforge_firstboot::SYSTEMD_UNIT_PATH);
    crate::fsutil::create_dir_all(unit.parent().expect("has parent"))?;
    fs::write(&unit, nodeforge_firstboot::SYSTEMD_UNIT)
        .with_context(|| format!("writing {}", unit.display()))?;
    enable_unit(&ctx.rootfs, UNIT_NAME)?;
    if ctx.plan.layout.has_slots() {
        let assess = ctx.target(nodeforge_firstboot::ASSESS_UNIT_PATH);
        fs::write(&assess, nodeforge_firstboot::ASSESS_UNIT)
            .with_context(|| format!("writing {}", assess.display()))?;
        enable_unit(&ctx.rootfs, nodeforge_firstboot::ASSESS_UNIT_NAME)?;
        if ctx.plan.profile.update_url.is_some() {
            for (path, text) in [
                (
                    nodeforge_firstboot::UPDATE_SERVICE_PATH,
                    nodeforge_firstboot::UPDATE_SERVICE,
                ),
                (
                    nodeforge_firstboot::UPDATE_TIMER_PATH,
                    nodeforge_firstboot::UPDATE_TIMER,
                ),
            ] {
                let p = ctx.target(path);
                fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            }
            enable_unit(&ctx.rootfs, nodeforge_firstboot::UPDATE_TIMER_NAME)?;
        }
    }

    // The package's postinst enables it on a running system; in the
    // image only the links make it start at boot.
    if ctx.plan.profile.tailscale.is_some() {
        if !enable_unit(&ctx.rootfs, TAILSCALED_UNIT)? {
            bail!(
                "the profile configures a tailnet ([tailscale]) but the image has no {TAILSCALED_UNIT}: \
                 install the `tailscale` package from Tailscale's repository (profiles/node.toml does)"
            );
        }
        let dropin = ctx.target(nodeforge_firstboot::TAILSCALED_DROPIN_PATH);
        crate::fsutil::create_dir_all(dropin.parent().expect("has parent"))?;
        fs::write(&dropin, nodeforge_firstboot::TAILSCALED_DROPIN)
            .with_context(|| format!("writing {}", dropin.display()))?;
    }
    let cfg = baked_config(ctx.plan);
    let path = ctx.target(BAKED_CONFIG_PATH);
    crate::fsutil::create_dir_all(path.parent().expect("has parent"))?;
    fs::write(&path, cfg.to_toml())
        .with_context(|| format!("writing {BAKED_CONFIG_PATH} in the image"))?;
    // The one key whose releases `nodeforge-firstboot update` installs.
    if let Some(line) = &ctx.plan.profile.release_key {
        let path = ctx.target(nodeforge_firstboot::update::RELEASE_KEY_PATH);
        fs::write(&path, format!("{line}\n"))
            .with_context(|| format!("writing {} in the image", path.display()))?;
    }
    ctx.facts
        .insert("agent".into(), binary.display().to_string().into());
    Ok(StepOutcome::Done)
}

pub fn baked_config(plan: &crate::plan::Plan) -> BakedConfig {
    use crate::disk::PartitionKind;
    let (p, layout) = (&plan.profile, &plan.layout);
    let slots = layout.has_slots().then(|| SlotsConfig {
        disk_guid: layout.disk_guid.to_string(),
        a: layout.partition(PartitionKind::Root).partuuid.clone(),
        b: layout.partition(PartitionKind::RootB).partuuid.clone(),
        state: layout.partition(PartitionKind::State).partuuid.clone(),
        tries: p.slot_tries(),
    });
    BakedConfig {
        admin_user: p
            .users
            .iter()
            .find(|u| u.sudo)
            .or(p.users.first())
            .map(|u| u.name.clone()),
        tailscale: p.tailscale.as_ref().map(|t| TailscaleConfig {
            tags: t.tags.clone(),
            timeout_secs: t.timeout_secs,
            accept_routes: p.tailnet.accept_routes,
            ssh: p.tailnet.ssh,
            advertise_routes: p.advertised_routes(),
        }),
        storage: p.storage.clone(),
        epoch: plan.epoch,
        update_url: p.update_url.clone().filter(|_| slots.is_some()),
        slots,
        ..BakedConfig::new(&p.name, &p.role, &p.hostname)
    }
}

/// The agent binary for `arch`: the one given (`--agent` or
/// $NODEFORGE_AGENT), else built from this source tree with cargo, else the
/// one installed beside `nodeforge`.
pub(super) fn agent_binary(given: Option<&Path>, arch: Arch) -> Result<PathBuf> {
    if let Some(p) = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("NODEFORGE_AGENT").map(PathBuf::from))
    {
        if !p.is_file() {
            bail!("agent binary {} does not exist", p.display());
        }
        return Ok(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    if let Some(ws) = workspace.filter(|w| w.join("firstboot/Cargo.toml").is_file()) {
        return build_from_source(&ws, arch);
    }
    let beside = std::env::current_exe()?.with_file_name("nodeforge-firstboot");
    if beside.is_file() && arch == host_arch() {
        return Ok(beside);
    }
    bail!(
        "no nodeforge-firstboot binary for {}: pass --agent PATH or set NODEFORGE_AGENT",
        arch.rust_target()
    )
}

fn build_from_source(workspace: &Path, arch: Arch) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let mut cmd = Cmd::new(cargo);
    if let Some((var, linker)) = cross_linker(arch) {
        // A linker the user configured (env or .cargo/config.toml) wins.
        if std::env::var_os(var).is_none() {
            if find_program(linker).is_none() {
                bail!(
                    "building the agent for {} needs the cross linker {linker}: install it with                      `nodeforge doctor --install` (Debian package gcc-aarch64-linux-gnu)",
                    arch.rust_target()
                );
            }
            cmd = cmd.env(var, linker);
        }
    }
    cmd.args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        "nodeforge-firstboot",
        "--target",
        arch.rust_target(),
    ])
    .arg("--manifest-path")
    .arg(workspace.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .run()
    .context("building the first-boot agent for the image")?;
    Ok(target_dir
        .join(arch.rust_target())
        .join("release/nodeforge-firstboot"))
}

/// The environment variable that names cargo's linker for `arch` and
/// Debian's cross gcc for it, when `arch` is not the host's.
pub fn cross_linker(arch: Arch) -> Option<(&'static str, &'static str)> {
    if arch == host_arch() {
        return None;
    }
    Some(match arch {
        Arch::Amd64 => (
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
            "x86_64-linux-gnu-gcc",
        ),
        Arch::Arm64 => (
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        ),
    })
}

pub fn host_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::Arm64
    } else {
        Arch::Amd64
    }
}
