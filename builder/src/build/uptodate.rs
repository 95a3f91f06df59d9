//! Whole-build reuse: when the image in the output directory was built
//! from exactly the same inputs and is unchanged since, nothing is rebuilt.
//!
//! The image key covers everything an image is made from: the resolved
//! profile with the content of every file it reads (profile_hash), the
//! base rootfs key (with SOURCE_DATE_EPOCH and the bootstrap tools'
//! versions), the agent binary, the nodeforge binary itself, the epoch, the
//! versions of the host tools that write the filesystems (mkfs.ext4,
//! mksquashfs, qemu-img) and a netboot installer named by
//! $NODEFORGE_INSTALLER. The image is re-hashed before it is reused, so an
//! image changed in place since (`nodeforge customize` without `-o`) is
//! rebuilt rather than handed out as pristine.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::context::BuildResult;
use crate::fsutil::{sha256_bytes, sha256_file};
use crate::plan::Plan;
use crate::profile::OutputFormat;

/// The key of the image `plan` builds with this agent, this nodeforge
/// binary and `epoch`.
pub fn image_key(
    plan: &Plan,
    agent_sha256: &str,
    builder_sha256: &str,
    epoch: Option<i64>,
) -> String {
    let mut key = serde_json::json!({
        "profile": plan.profile_hash,
        "rootfs": plan.rootfs_key,
        "agent": agent_sha256,
        "builder": builder_sha256,
        "epoch": epoch,
        "host_tools": super::reproducible::image_tools(&plan.profile),
    });
    // The netboot root carries this program for install mode.
    if let Some(installer) = std::env::var_os(super::netboot::INSTALLER_VAR) {
        key["installer"] = sha256_file(Path::new(&installer))
            .unwrap_or_else(|_| installer.to_string_lossy().into_owned())
            .into();
    }
    sha256_bytes(key.to_string().as_bytes())
}

/// sha256 of the running nodeforge binary.
pub fn builder_sha256() -> Result<String> {
    let builder = std::env::current_exe().context("finding the nodeforge binary")?;
    sha256_file(&builder)
}

/// The files a build writes beside the image and its manifest.
pub fn companion_names(plan: &Plan) -> Vec<String> {
    let name = &plan.profile.name;
    let mut names = vec![
        format!("{name}.img.sha256"),
        format!("{name}.img.bmap"),
        format!("{name}.release.json"),
        crate::release::chunks_file_name(name),
    ];
    for format in &plan.profile.outputs {
        match format {
            OutputFormat::Raw => {}
            OutputFormat::Qcow2 => names.push(format!("{name}.qcow2")),
            OutputFormat::Netboot => {
                let files = super::netboot::NetbootFiles::of(name);
                names.extend([files.kernel, files.initrd, files.squashfs, files.script]);
            }
        }
    }
    names
}

/// The fields of an earlier build's manifest that decide reuse.
#[derive(Deserialize)]
struct EarlierManifest {
    #[serde(default)]
    image_key: Option<String>,
    sha256: String,
    image_size: u64,
}

/// The outputs of `plan` in `output_dir`, when they were built under `key`
/// and are intact; `None` when the image must be built.
pub fn reusable_outputs(plan: &Plan, output_dir: &Path, key: &str) -> Result<Option<BuildResult>> {
    let name = &plan.profile.name;
    let manifest: PathBuf = output_dir.join(format!("{name}.manifest.json"));
    let image = output_dir.join(format!("{name}.img"));
    let Ok(text) = fs::read(&manifest) else {
        return Ok(None);
    };
    let Ok(earlier) = serde_json::from_slice::<EarlierManifest>(&text) else {
        return Ok(None);
    };
    if earlier.image_key.as_deref() != Some(key) {
        return Ok(None);
    }
    let companions: Vec<PathBuf> = companion_names(plan)
        .iter()
        .map(|n| output_dir.join(n))
        .collect();
    if !image.is_file() || companions.iter().any(|p| !p.is_file()) {
        return Ok(None);
    }
    // The release must be this build's (a crash between writing it and
    // the manifest would leave an earlier one).
    let release = crate::release::release_path(output_dir, name);
    let Ok(doc) = fs::read(&release)
        .map_err(anyhow::Error::from)
        .and_then(|t| crate::release::parse(&t, &release))
    else {
        return Ok(None);
    };
    if doc.version != key {
        return Ok(None);
    }
    let (bmap, sha256) = crate::bmap::Bmap::create_with_image_sha256(&image)?;
    if sha256 != earlier.sha256 || bmap.image_size != earlier.image_size {
        return Ok(None);
    }
    let allocated = fs::metadata(&image)
        .with_context(|| format!("reading {}", image.display()))?
        .blocks()
        * 512;
    Ok(Some(BuildResult {
        image,
        sha256,
        manifest,
        image_size: earlier.image_size,
        allocated,
        steps: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Plan {
        let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/base.toml");
        Plan::load(&profile).unwrap()
    }

    #[test]
    fn every_input_of_the_image_is_in_its_key() {
        let p = base();
        let key = |p: &Plan, agent: &str, builder: &str, epoch| image_key(p, agent, builder, epoch);
        let before = key(&p, "agent", "builder", None);
        assert_eq!(
            before,
            key(&base(), "agent", "builder", None),
            "same inputs"
        );
        assert_ne!(before, key(&p, "agent2", "builder", None), "agent binary");
        assert_ne!(
            before,
            key(&p, "agent", "builder2", None),
            "nodeforge binary"
        );
        assert_ne!(before, key(&p, "agent", "builder", Some(1)), "epoch");
        let mut q = base();
        q.profile_hash = "other".into();
        assert_ne!(
            before,
            key(&q, "agent", "builder", None),
            "profile and its files"
        );
        let mut q = base();
        q.rootfs_key = "other".into();
        assert_ne!(before, key(&q, "agent", "builder", None), "base rootfs");
        let mut q = base();
        q.profile.outputs.push(OutputFormat::Netboot);
        assert_ne!(
            before,
            key(&q, "agent", "builder", None),
            "mksquashfs's version joins the key with a netboot output"
        );
    }
}
