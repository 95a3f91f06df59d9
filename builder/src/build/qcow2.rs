//! Step `qcow2`: the finished disk image converted for QEMU and libvirt
//! users, written beside the image only when complete.

use anyhow::{Context, Result};

use super::context::BuildContext;
use super::progress::StepOutcome;
use crate::exec::Cmd;
use crate::fsutil;

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let image = ctx
        .image
        .as_ref()
        .context("the image file was not created")?;
    let out = ctx
        .opts
        .output_dir
        .join(format!("{}.qcow2", ctx.plan.profile.name));
    let partial = fsutil::partial_path(&out);
    super::reproducible::hermetic(Cmd::new("qemu-img"))
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&image.path)
        .arg(&partial)
        .run()
        .with_context(|| format!("writing {}", out.display()))?;
    fsutil::commit_partial(&partial, &out)?;
    Ok(StepOutcome::Done)
}
