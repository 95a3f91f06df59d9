//! The resolved plan: everything a build will do, decided before anything
//! is built, so `nodeforge plan` can show it and caches can key on it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::build::archive_epoch::{self, EpochSource};
use crate::disk::{DiskLayout, TableKind};
use crate::fsutil::sha256_bytes;
use crate::oci::lock::{self, LockFile, LockedImage, LockedModel};
use crate::profile::{self, InitramfsKind, Profile};

/// Bumped when the way a rootfs is made changes, so old cache entries are
/// not reused for a different recipe.
/// 2: initramfs-tools makes the initrd once, after every package.
/// 3: the host's /etc/resolv.conf and /etc/hostname, which mmdebstrap
///    copies in, are taken out again.
pub const ROOTFS_RECIPE: u32 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile: Profile,
    /// sha256 of the resolved profile and the content of every file it
    /// reads (profiles, hardware, overlays).
    pub profile_hash: String,
    pub packages: Vec<String>,
    pub overlay_files: Vec<OverlayFile>,
    pub layout: DiskLayout,
    /// Cache key of the base rootfs: only what shapes mmdebstrap's output.
    pub rootfs_key: String,
    /// The time every file of the image carries: SOURCE_DATE_EPOCH, the
    /// pinned snapshot's time, or the archive's Release date (see
    /// [`Plan::resolve_epoch`]); None stamps the build's own time. Part of
    /// the rootfs key, so of every key chained from it.
    pub epoch: Option<i64>,
    pub epoch_source: EpochSource,
    /// The lock file beside the profile, read when the profile has stacks
    /// or models.
    pub lock_path: PathBuf,
    pub lock: Option<LockFile>,
    /// Every container image the stacks name, with its locked digest.
    pub images: Vec<PlannedImage>,
    /// Every Ollama model the profile bakes, with its locked digest.
    pub models: Vec<PlannedModel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedImage {
    pub reference: String,
    /// None until `nodeforge lock` has resolved it.
    pub locked: Option<LockedImage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedModel {
    pub name: String,
    /// None until `nodeforge lock` has resolved it.
    pub locked: Option<LockedModel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OverlayFile {
    pub overlay: String,
    /// Path inside the image, after template suffixes are dropped.
    pub target: String,
    pub source: PathBuf,
    pub template: bool,
    pub sha256: String,
    /// The source is executable (git keeps only this bit of the mode).
    pub executable: bool,
}

/// Suffix that marks an overlay file as a tera template.
pub const TEMPLATE_SUFFIX: &str = ".tera";

impl Plan {
    /// Loads and validates the profile at `path` and plans its build.
    pub fn load(path: &Path) -> Result<Plan> {
        let profile = profile::load(path)?;
        Plan::from_profile(profile)
    }

    pub fn from_profile(profile: Profile) -> Result<Plan> {
        let overlay_files = list_overlay_files(&profile)?;
        let packages = profile.all_packages();
        let (epoch, epoch_source) = crate::build::reproducible::source_date_epoch(&profile)?;
        let rootfs_key = rootfs_key(&profile, &packages, epoch)?;
        let lock_path = lock::lock_path(profile.sources.last().expect("a profile has a source"));
        let lock = if profile.stacks.is_empty() && profile.models.is_empty() {
            None
        } else {
            LockFile::read(&lock_path)?
        };
        let images: Vec<PlannedImage> = lock::profile_images(&profile)
            .into_iter()
            .map(|reference| PlannedImage {
                locked: lock.as_ref().and_then(|l| l.find(&reference)).cloned(),
                reference,
            })
            .collect();
        let models: Vec<PlannedModel> = profile
            .models
            .iter()
            .map(|name| PlannedModel {
                locked: lock.as_ref().and_then(|l| l.find_model(name)).cloned(),
                name: name.clone(),
            })
            .collect();
        let profile_hash = profile_hash(&profile, &overlay_files, &images, &models)?;
        let layout = if profile.ab_slots() {
            DiskLayout::ab_slots(
                profile.disk.size.0,
                profile.disk.esp_size.0,
                profile.hardware.arch,
                &layout_seed(&profile),
            )?
        } else {
            DiskLayout::fat_and_root(
                profile.hardware.firmware.table(),
                profile.disk.size.0,
                profile.disk.esp_size.0,
                profile.hardware.arch,
                &layout_seed(&profile),
            )?
        };
        Ok(Plan {
            profile,
            profile_hash,
            packages,
            overlay_files,
            layout,
            rootfs_key,
            epoch,
            epoch_source,
            lock_path,
            lock,
            images,
            models,
        })
    }

    /// A plan with no epoch from the environment or a snapshot takes the
    /// archive's (the suite's Release date; see
    /// [`crate::build::archive_epoch`]) and re-keys its rootfs with it.
    /// Goes to the network once; `check` and [`Plan::load`] never do.
    pub fn resolve_epoch(&mut self, cache_dir: &Path, offline: bool, remember: bool) -> Result<()> {
        if self.epoch_source != EpochSource::Unresolved {
            return Ok(());
        }
        let (epoch, source) =
            archive_epoch::resolve(&self.profile.debian, cache_dir, offline, remember);
        self.rootfs_key = rootfs_key(&self.profile, &self.packages, epoch)?;
        self.epoch = epoch;
        self.epoch_source = source;
        Ok(())
    }

    /// Human-readable summary for `nodeforge plan` (the steps follow it,
    /// see [`crate::build::steps::PlanReport`]).
    pub fn render(&self) -> String {
        let p = &self.profile;
        let mut s = String::new();
        let mut line = |t: String| {
            s.push_str(&t);
            s.push('\n');
        };
        line(format!("profile    {} (role {})", p.name, p.role));
        line(format!(
            "sources    {}",
            p.sources
                .iter()
                .map(|s| s.display().to_string())
                .collect::<Vec<_>>()
                .join(" <- ")
        ));
        line(format!(
            "hardware   {} ({}, {:?})",
            p.hardware.name,
            p.hardware.arch.debian(),
            p.hardware.firmware
        ));
        line(format!(
            "debian     {} from {} [{}]",
            p.debian.suite,
            p.debian.mirror,
            p.debian.components.join(", ")
        ));
        for r in &p.apt.repositories {
            line(format!(
                "apt repo   {} {} {} [{}] key {}",
                r.name,
                r.url,
                r.suite,
                r.components.join(", "),
                r.fingerprint
            ));
        }
        for d in &p.apt.local {
            line(format!("apt local  {}", d.display()));
        }
        line(format!("hostname   {}", p.hostname));
        line(format!("hash       {}", self.profile_hash));
        line(format!(
            "epoch      {} ({})",
            self.epoch
                .map_or_else(|| "none".to_owned(), |e| e.to_string()),
            self.epoch_source
        ));
        line(format!(
            "packages   ({}) {}",
            self.packages.len(),
            self.packages.join(" ")
        ));
        line(format!(
            "users      {}",
            p.users
                .iter()
                .map(|u| format!("{} ({} keys)", u.name, u.authorized_keys.len()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        line("firewall".into());
        for rule in crate::firewall::describe(p.firewall.as_ref()) {
            line(format!("  {rule}"));
        }
        line(match &p.release_key {
            None => "updates    none: the profile has no [update]; the node is re-flashed".into(),
            Some(key) => format!(
                "updates    A/B root slots; installs releases signed by {}; a new slot gets {} \
                 boots to come up healthy{}",
                ssh_key::PublicKey::from_openssh(key)
                    .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
                    .unwrap_or_else(|_| "the [update] key".into()),
                p.slot_tries(),
                match &p.update_url {
                    Some(url) => format!("; looks at {url} every 6 h"),
                    None => "; when told (`nodeforge-firstboot update --from URL`)".into(),
                }
            ),
        });
        line("overlay files".into());
        for f in &self.overlay_files {
            line(format!(
                "  {:<40} from {}{}",
                f.target,
                f.overlay,
                if f.template { " (template)" } else { "" }
            ));
        }
        if !p.stacks.is_empty() {
            line(format!("stacks     (lock {})", self.lock_path.display()));
            for st in &p.stacks {
                line(format!(
                    "  {:<14} {} ({} images, {} probes, {} secrets, health within {}s)",
                    st.name,
                    st.compose.display(),
                    st.images.len(),
                    st.probes.len(),
                    st.secrets.len(),
                    st.health_timeout_secs
                ));
            }
            for im in &self.images {
                let state = match &im.locked {
                    Some(l) => format!("{} ({})", l.digest, l.platform),
                    None => "NOT LOCKED: run `nodeforge lock`".into(),
                };
                line(format!("  image {} -> {state}", im.reference));
            }
        }
        if !p.models.is_empty() {
            line(format!(
                "models     (into {}, lock {})",
                crate::oci::ollama::MODELS_DIR,
                self.lock_path.display()
            ));
            for m in &self.models {
                let state = match &m.locked {
                    Some(l) => l.digest.to_string(),
                    None => "NOT LOCKED: run `nodeforge lock`".into(),
                };
                line(format!("  model {} -> {state}", m.name));
            }
        }
        line(match self.layout.table {
            TableKind::Gpt => format!(
                "disk       {} bytes, GPT {}",
                self.layout.size, self.layout.disk_guid
            ),
            TableKind::Mbr => format!(
                "disk       {} bytes, MBR signature {:08x}",
                self.layout.size, self.layout.mbr_signature
            ),
        });
        for part in &self.layout.partitions {
            line(format!(
                "  {} {:<5} offset {:>12} size {:>12} partuuid {}",
                part.number, part.label, part.offset, part.size, part.partuuid
            ));
        }
        s
    }
}

fn rootfs_key(p: &Profile, packages: &[String], epoch: Option<i64>) -> Result<String> {
    let mut key = serde_json::json!({
        "recipe": ROOTFS_RECIPE,
        // mmdebstrap stamps files with it (null: the build's own time), so
        // a tree made without it is never reused by a build with one.
        "epoch": epoch,
        "suite": p.debian.suite,
        "mirror": p.debian.mirror,
        "components": p.debian.components,
        "arch": p.hardware.arch.debian(),
        "packages": packages,
    });
    if let Some(apt) = crate::apt::cache_key_part(&p.apt)? {
        key["apt"] = apt;
    }
    // Only a non-default initramfs changes mmdebstrap's hooks; leaving the
    // key of default builds as it was keeps their caches valid.
    if p.hardware.initramfs != InitramfsKind::InitramfsTools {
        key["initramfs"] = serde_json::to_value(p.hardware.initramfs).unwrap_or_default();
    }
    let foreign = p.hardware.arch != crate::build::host_arch();
    key["host_tools"] = crate::build::reproducible::rootfs_tools(foreign);
    // The bench's all-emulated bootstrap must not share entries with ours.
    if std::env::var_os(crate::build::EMULATE_SCRIPTS).is_some() {
        key["emulated_scripts"] = true.into();
    }
    // A foreign-architecture bootstrap defers some work to the host (2:
    // the packages after the essential set are unpacked by the host's dpkg;
    // 3: the essential set's too; 4: the interpreters and common tools
    // run natively while packages configure).
    if foreign {
        key["cross_recipe"] = 4.into();
    }
    Ok(sha256_bytes(key.to_string().as_bytes()))
}

/// The seed of the disk's and partitions' GUIDs and the filesystems'
/// UUIDs: what names the disk (the profile's name, its hardware and its
/// geometry), not its contents. Like systemd-repart's seed, it keeps them
/// stable across edits of an overlay or a compose file, so fstab (and the
/// layers of the steps that write it) stay the same.
fn layout_seed(p: &Profile) -> String {
    let seed = serde_json::json!({
        "name": p.name,
        "arch": p.hardware.arch.debian(),
        "firmware": p.hardware.firmware,
        "size": p.disk.size.0,
        "esp_size": p.disk.esp_size.0,
    });
    sha256_bytes(seed.to_string().as_bytes())
}

fn profile_hash(
    p: &Profile,
    overlay_files: &[OverlayFile],
    images: &[PlannedImage],
    models: &[PlannedModel],
) -> Result<String> {
    let mut sources = Vec::new();
    for path in p.sources.iter().chain(std::iter::once(&p.hardware.file)) {
        let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        sources.push(sha256_bytes(&text));
    }
    for st in &p.stacks {
        let text =
            fs::read(&st.compose).with_context(|| format!("reading {}", st.compose.display()))?;
        sources.push(sha256_bytes(&text));
    }
    let mut resolved = serde_json::to_value(p)?;
    // Where the files sit on this machine must not change the hash.
    if let Some(obj) = resolved.as_object_mut() {
        obj.remove("sources");
        // Key files and local .deb folders count by fingerprint and content.
        match crate::apt::cache_key_part(&p.apt)? {
            Some(apt) => obj.insert("apt".into(), apt),
            None => obj.remove("apt"),
        };
        if let Some(hw) = obj.get_mut("hardware").and_then(|h| h.as_object_mut()) {
            hw.remove("file");
        }
        if let Some(ovs) = obj.get_mut("overlays").and_then(|o| o.as_array_mut()) {
            for o in ovs.iter_mut().filter_map(|o| o.as_object_mut()) {
                o.remove("dir");
            }
        }
        if let Some(sts) = obj.get_mut("stacks").and_then(|o| o.as_array_mut()) {
            for s in sts.iter_mut().filter_map(|o| o.as_object_mut()) {
                s.remove("compose");
            }
        }
    }
    let files: Vec<(&str, &str, &str, bool)> = overlay_files
        .iter()
        .map(|f| {
            (
                f.overlay.as_str(),
                f.target.as_str(),
                f.sha256.as_str(),
                f.executable,
            )
        })
        .collect();
    let locked: Vec<Option<&str>> = images
        .iter()
        .map(|i| i.locked.as_ref().map(|l| l.digest.as_str()))
        .collect();
    let models: Vec<Option<&str>> = models
        .iter()
        .map(|m| m.locked.as_ref().map(|l| l.digest.as_str()))
        .collect();
    let all = serde_json::json!({
        "profile": resolved, "sources": sources, "overlay_files": files, "images": locked,
        "models": models,
    });
    Ok(sha256_bytes(all.to_string().as_bytes()))
}

/// Every file of every overlay, sorted by target path, later overlays
/// overriding earlier ones.
fn list_overlay_files(p: &Profile) -> Result<Vec<OverlayFile>> {
    let mut out: Vec<OverlayFile> = Vec::new();
    for ov in &p.overlays {
        let mut files = Vec::new();
        walk(&ov.dir, &ov.dir, &mut files)
            .with_context(|| format!("reading overlay `{}` at {}", ov.name, ov.dir.display()))?;
        for (rel, source) in files {
            let template = rel.ends_with(TEMPLATE_SUFFIX);
            let target = format!("/{}", rel.strip_suffix(TEMPLATE_SUFFIX).unwrap_or(&rel));
            let meta = fs::symlink_metadata(&source)
                .with_context(|| format!("reading {}", source.display()))?;
            let executable =
                !meta.file_type().is_symlink() && meta.permissions().mode() & 0o111 != 0;
            let bytes = match meta.file_type().is_symlink() {
                true => fs::read_link(&source)
                    .with_context(|| format!("reading link {}", source.display()))?
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes(),
                false => {
                    fs::read(&source).with_context(|| format!("reading {}", source.display()))?
                }
            };
            out.retain(|f| f.target != target);
            out.push(OverlayFile {
                overlay: ov.name.clone(),
                target,
                source,
                template,
                sha256: sha256_bytes(&bytes),
                executable,
            });
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .and_then(|d| d.collect::<std::io::Result<_>>())
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("walked below root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, path));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "plan_keys_tests.rs"]
mod keys_tests;
