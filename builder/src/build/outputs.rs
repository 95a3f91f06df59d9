//! Step `outputs`: the image under its final name, its sha256, the
//! bmap and manifest, each appearing only when complete.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::context::{BuildContext, BuildResult};
use super::image::image_path;
use super::progress::StepOutcome;
use super::progress::StepReport;
use crate::disk::PartitionKind;
use crate::disk::PartitionSpec;
use crate::fsutil;
use crate::release::{file_digest, FileDigest, Release, RootSlot};

#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub nodeforge: &'static str,
    pub profile: &'a str,
    pub role: &'a str,
    pub profile_hash: &'a str,
    pub rootfs_key: &'a str,
    /// Key of every input of the image; an unchanged rebuild reuses it.
    pub image_key: &'a str,
    pub arch: &'static str,
    pub suite: &'a str,
    /// The time the image's files carry, and where it came from.
    pub epoch: Option<i64>,
    pub epoch_source: &'a crate::build::archive_epoch::EpochSource,
    pub image: String,
    pub image_size: u64,
    pub sha256: &'a str,
    pub disk_guid: String,
    pub partitions: &'a [PartitionSpec],
    pub packages: Vec<Package>,
    pub facts: &'a serde_json::Map<String, serde_json::Value>,
    pub steps: &'a [StepReport],
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let final_path = image_path(ctx);
    let image = ctx.image.take().context("the image file was not created")?;
    // One read of the mapped ranges gives both the bmap and the sha256.
    let (bmap, sha256) = crate::bmap::Bmap::create_with_image_sha256(&image.path)?;
    let allocated = fs::metadata(&image.path)
        .with_context(|| format!("reading the size of {}", image.path.display()))?
        .blocks()
        * 512;
    let packages = read_dpkg_status(&ctx.target("/var/lib/dpkg/status"))?;
    image.commit(&final_path)?;

    let name = final_path
        .file_name()
        .expect("has a name")
        .to_string_lossy()
        .into_owned();
    // bmaptool's format: flash (ours or bmaptool) writes only these ranges.
    let bmap_path = ctx.opts.output_dir.join(format!("{name}.bmap"));
    crate::bmap::save(&bmap, &bmap_path)?;
    let sha_path = ctx.opts.output_dir.join(format!("{name}.sha256"));
    fsutil::atomic_write(&sha_path, format!("{sha256}  {name}\n").as_bytes())?;

    // The chunk index and release before the manifest: the manifest marks
    // the outputs whole (reuse starts from it), so it comes last.
    let mut digests = std::mem::take(&mut ctx.digests);
    digests.insert(
        name.clone(),
        FileDigest {
            size: fs::metadata(&final_path)
                .with_context(|| format!("reading the size of {}", final_path.display()))?
                .len(),
            sha256: sha256.clone(),
        },
    );
    let root_slot = index_root_slot(ctx, &final_path, &name, &bmap, &mut digests)?;
    write_release(ctx, digests, root_slot)?;

    let plan = ctx.plan;
    let manifest = Manifest {
        nodeforge: env!("CARGO_PKG_VERSION"),
        profile: &plan.profile.name,
        role: &plan.profile.role,
        profile_hash: &plan.profile_hash,
        rootfs_key: &plan.rootfs_key,
        image_key: &ctx.image_key,
        arch: plan.profile.hardware.arch.debian(),
        suite: &plan.profile.debian.suite,
        epoch: plan.epoch,
        epoch_source: &plan.epoch_source,
        image: name.clone(),
        image_size: plan.layout.size,
        sha256: &sha256,
        disk_guid: plan.layout.disk_guid.to_string(),
        partitions: &plan.layout.partitions,
        packages,
        facts: &ctx.facts,
        steps: &ctx.reports,
    };
    let manifest_path = ctx
        .opts
        .output_dir
        .join(format!("{}.manifest.json", plan.profile.name));
    let json = serde_json::to_vec_pretty(&manifest)?;
    fsutil::atomic_write(&manifest_path, &json)?;

    let result = BuildResult {
        image: final_path,
        sha256,
        manifest: manifest_path,
        image_size: plan.layout.size,
        allocated,
        steps: Vec::new(),
    };
    ctx.result = Some(result);
    Ok(StepOutcome::Done)
}

/// The build's release: the image and every file beside it (the release
/// itself aside), with the image key as its version; signed when the
/// build has a key. `known` holds digests steps took already.
fn write_release(
    ctx: &BuildContext,
    known: BTreeMap<String, FileDigest>,
    root_slot: RootSlot,
) -> Result<()> {
    let plan = ctx.plan;
    let name = &plan.profile.name;
    let own = format!("{name}.release.json");
    let mut files = known;
    for file in super::uptodate::companion_names(plan) {
        if file == own || files.contains_key(&file) {
            continue;
        }
        let digest = file_digest(&ctx.opts.output_dir.join(&file))?;
        files.insert(file, digest);
    }
    let doc = Release {
        format: crate::release::FORMAT,
        name: name.clone(),
        role: plan.profile.role.clone(),
        arch: plan.profile.hardware.arch.debian().to_owned(),
        version: ctx.image_key.clone(),
        epoch: ctx.epoch,
        files,
        root_slot: Some(root_slot),
    };
    crate::release::write(&ctx.opts.output_dir, &doc, ctx.signing_key.as_ref())?;
    Ok(())
}

/// The root partition's chunk index, written beside the image (and its
/// digest added to `digests`): what an update to this build fetches is
/// decided chunk by chunk against it.
fn index_root_slot(
    ctx: &BuildContext,
    image: &Path,
    image_name: &str,
    bmap: &crate::bmap::Bmap,
    digests: &mut BTreeMap<String, FileDigest>,
) -> Result<RootSlot> {
    use std::os::unix::fs::FileExt;
    let root = ctx.plan.layout.partition(PartitionKind::Root);
    let what = || format!("indexing the root partition of {}", image.display());
    let f = fs::File::open(image).with_context(what)?;
    // Only the mapped ranges are read; the holes between them (the
    // filesystem's free space) are zeros the chunker skips over.
    let mut chunker = nodeforge_delta::Chunker::new(nodeforge_delta::DEFAULT_CUTTING);
    let (start, end) = (root.offset, root.offset + root.size);
    let mut at = start;
    let mut buf = vec![0u8; 1 << 20];
    for r in &bmap.ranges {
        let span = bmap.byte_range(r);
        let (from, to) = (span.start.max(start), span.end.min(end));
        if from >= to {
            continue;
        }
        chunker.zeros(from - at);
        let mut pos = from;
        while pos < to {
            let n = ((to - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos).with_context(what)?;
            chunker.data(&buf[..n]);
            pos += n as u64;
        }
        at = to;
    }
    chunker.zeros(end - at);
    let index = chunker.finish();
    let chunks = crate::release::chunks_file_name(&ctx.plan.profile.name);
    let path = ctx.opts.output_dir.join(&chunks);
    let json = serde_json::to_vec(&index).context("encoding the chunk index")?;
    fsutil::atomic_write(&path, &json)?;
    digests.insert(
        chunks.clone(),
        FileDigest {
            size: json.len() as u64,
            sha256: fsutil::sha256_bytes(&json),
        },
    );
    Ok(RootSlot {
        file: image_name.to_owned(),
        offset: root.offset,
        size: root.size,
        chunks,
        disk_guid: ctx
            .plan
            .layout
            .has_slots()
            .then(|| ctx.plan.layout.disk_guid.to_string()),
    })
}

/// An unchanged build reused whole keeps its release; with a key, the
/// release is signed (again) once its files are checked against it, so
/// adding `--signing-key` needs no rebuild.
pub fn sign_reused_release(ctx: &BuildContext) -> Result<()> {
    let Some(key) = &ctx.signing_key else {
        return Ok(());
    };
    let dir = &ctx.opts.output_dir;
    let name = &ctx.plan.profile.name;
    let path = crate::release::release_path(dir, name);
    let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc = crate::release::parse(&text, &path)?;
    // Reuse took the build only with this release's version and checked
    // the image; only what still matches is signed, so every other file
    // the release lists is checked here.
    let image = format!("{name}.img");
    for file in doc.files.keys().filter(|f| **f != image) {
        crate::release::check_file(&doc, dir, file, &path).context(
            "the reused build's files changed since it was built; rebuild with --no-cache",
        )?;
    }
    crate::release::write(dir, &doc, Some(key))?;
    Ok(())
}

/// Installed packages from a dpkg status file, sorted by name.
pub fn read_dpkg_status(path: &Path) -> Result<Vec<Package>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_dpkg_status(&text))
}

fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out: Vec<Package> = text
        .split("\n\n")
        .filter_map(|stanza| {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(':')
                        .map(|v| v.trim().to_owned())
                })
            };
            let installed = field("Status")?.ends_with(" installed");
            installed.then(|| {
                Some(Package {
                    name: field("Package")?,
                    version: field("Version")?,
                    arch: field("Architecture").unwrap_or_default(),
                })
            })?
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_are_listed() {
        let status = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.3\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 13.8\nDescription: x\n y\n";
        let p = parse_dpkg_status(status);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            Package {
                name: "base-files".into(),
                version: "13.8".into(),
                arch: "amd64".into()
            }
        );
        assert_eq!(p[1].name, "zlib1g");
    }
}
