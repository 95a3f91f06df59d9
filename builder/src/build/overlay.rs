//! Step `overlays`: the profile's file trees copied into the root, files
//! ending in `.tera` rendered with the profile's variables.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

use anyhow::{Context, Result};

use super::context::BuildContext;
use super::progress::StepOutcome;

/// Every overlay file by content and mode, and the template variables.
pub fn inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    serde_json::json!({
        "files": plan.overlay_files.iter().map(|f| (&f.target, &f.sha256, f.template, f.executable)).collect::<Vec<_>>(),
        "vars": plan.profile.template_context(),
    })
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let files = &ctx.plan.overlay_files;
    if files.is_empty() {
        return Ok(StepOutcome::Skipped(
            "the profile has no overlay files".into(),
        ));
    }
    let vars = tera::Context::from_serialize(ctx.plan.profile.template_context())
        .context("preparing template variables")?;
    for f in files {
        let dest = ctx.target(&f.target);
        if let Some(dir) = dest.parent() {
            crate::fsutil::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let meta = fs::symlink_metadata(&f.source)
            .with_context(|| format!("reading {}", f.source.display()))?;
        if dest.symlink_metadata().is_ok() {
            fs::remove_file(&dest)
                .with_context(|| format!("replacing {} in the image", f.target))?;
        }
        if meta.file_type().is_symlink() {
            let to = fs::read_link(&f.source)
                .with_context(|| format!("reading link {}", f.source.display()))?;
            symlink(&to, &dest).with_context(|| format!("linking {} in the image", f.target))?;
            continue;
        }
        if f.template {
            let text = fs::read_to_string(&f.source)
                .with_context(|| format!("reading template {}", f.source.display()))?;
            let rendered = tera::Tera::one_off(&text, &vars, false)
                .map_err(|e| anyhow::anyhow!("{}", tera_error_chain(&e)))
                .with_context(|| format!("rendering template {}", f.source.display()))?;
            fs::write(&dest, rendered)
                .with_context(|| format!("writing {} in the image", f.target))?;
        } else {
            fs::copy(&f.source, &dest)
                .with_context(|| format!("copying {} into the image", f.source.display()))?;
        }
        // Git keeps only the executable bit: files are root's, readable by
        // all, executable where the source is.
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        crate::fsutil::set_mode(&dest, mode)?;
    }
    Ok(StepOutcome::Done)
}

/// tera hides the useful part of an error in its source chain.
pub(super) fn tera_error_chain(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join(": ")
}
