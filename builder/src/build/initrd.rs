//! Step `initramfs`: with `initramfs = "nodeforge"`, the initramfs is
//! written on the build host (see crate::initramfs) into the image's /boot,
//! where the boot partition step picks it up like Debian's own.

use std::fs;

use anyhow::{Context, Result};

use super::context::BuildContext;
use super::image::kernel_version;
use super::progress::StepOutcome;
use crate::disk::PartitionKind;
use crate::initramfs;
use crate::profile::InitramfsKind;

pub fn inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    let hw = &plan.profile.hardware;
    serde_json::json!({
        "initramfs": hw.initramfs,
        "modules": hw.initramfs_modules,
        "root": plan.layout.partition(PartitionKind::Root).fs_uuid,
    })
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let hw = &ctx.plan.profile.hardware;
    match hw.initramfs {
        InitramfsKind::InitramfsTools => {
            return Ok(StepOutcome::Skipped(
                "initramfs-tools made the initramfs inside the image".into(),
            ))
        }
        InitramfsKind::Nodeforge => {}
    }
    let version = kernel_version(&ctx.rootfs)?;
    let root = ctx.plan.layout.partition(PartitionKind::Root);
    let built = initramfs::build(
        &ctx.rootfs,
        &version,
        &hw.initramfs_modules,
        root.fs_uuid,
        ctx.epoch.unwrap_or(0),
    )
    .with_context(|| format!("making the initramfs for kernel {version}"))?;
    let dest = ctx.target(&format!("/boot/initrd.img-{version}"));
    fs::write(&dest, &built.bytes).with_context(|| format!("writing {}", dest.display()))?;
    ctx.facts.insert(
        "initramfs_modules".into(),
        serde_json::to_value(&built.modules)?,
    );
    Ok(StepOutcome::Done)
}
