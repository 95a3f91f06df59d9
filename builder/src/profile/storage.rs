//! `[[storage]]`: data disk rules, checked here so `nodeforge check`
//! names a bad rule's line; the agent applies them at first boot.

use nodeforge_firstboot::config::{DiskMatch, StorageRule, StorageRuleError};

use super::error::ProfileError;
use super::file::StorageFile;
use super::validate::FileCtx;

/// Adds `files`' rules to `rules`: a rule with an inherited label replaces
/// it; a label or mount point used twice otherwise is an error.
pub fn merge(
    ctx: &FileCtx,
    files: &[StorageFile],
    rules: &mut Vec<StorageRule>,
    errors: &mut Vec<ProfileError>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for f in files {
        let label = f.label.get_ref();
        if seen.contains(&label.as_str()) {
            errors.push(ctx.error_at(
                &f.label,
                format!("storage label `{label}` is used twice in this file: labels name the disks, one each"),
            ));
            continue;
        }
        seen.push(label);
        let Some(m) = &f.matcher else {
            errors.push(ctx.error_at(
                &f.label,
                format!(
                    "storage `{label}`: no disk matcher: add a [storage.match] table with e.g. \
                     largest = true, min_size = \"1TiB\", serial = \"WD-*\" or by_id = \"nvme-*\""
                ),
            ));
            continue;
        };
        let mf = m.get_ref();
        let rule = StorageRule {
            label: label.clone(),
            filesystem: f
                .filesystem
                .as_ref()
                .map(|x| *x.get_ref())
                .unwrap_or_default(),
            mount: f.mount.get_ref().clone(),
            options: f.options.iter().map(|o| o.get_ref().clone()).collect(),
            matcher: DiskMatch {
                min_bytes: mf.min_size.map(|s| s.0),
                max_bytes: mf.max_size.map(|s| s.0),
                model: mf.model.clone(),
                serial: mf.serial.clone(),
                by_id: mf.by_id.clone(),
                by_path: mf.by_path.clone(),
                largest: mf.largest,
            },
        };
        if let Err(e) = rule.check() {
            // Point at the field the error is about.
            let msg = e.to_string();
            let at = match &e {
                StorageRuleError::MountPoint { .. } => ctx.error_at(&f.mount, msg),
                StorageRuleError::MountOption { option, .. } => {
                    match f.options.iter().find(|o| o.get_ref() == option) {
                        Some(o) => ctx.error_at(o, msg),
                        None => ctx.error_at(&f.label, msg),
                    }
                }
                StorageRuleError::Label { .. } => ctx.error_at(&f.label, msg),
                StorageRuleError::NoMatcher { .. } | StorageRuleError::SizeRange { .. } => {
                    ctx.error_at(m, msg)
                }
            };
            errors.push(at);
            continue;
        }
        rules.retain(|r| r.label != rule.label);
        if let Some(other) = rules.iter().find(|r| r.mount == rule.mount) {
            errors.push(ctx.error_at(
                &f.mount,
                format!(
                    "storage `{label}`: mount point {} is already storage `{}`'s",
                    rule.mount, other.label
                ),
            ));
            continue;
        }
        rules.push(rule);
    }
}

/// Packages the image needs to apply the rules.
pub fn needed_packages(rules: &[StorageRule]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for r in rules {
        let fs = match r.filesystem {
            nodeforge_firstboot::config::Filesystem::Ext4 => "e2fsprogs",
            nodeforge_firstboot::config::Filesystem::Xfs => "xfsprogs",
        };
        for p in ["fdisk", "util-linux", fs] {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}
