//! `nodeforge-firstboot update`: writes a newer signed release of this
//! node's build into the inactive root slot, fetching only the chunks the
//! running slot lacks.
//!
//! Every check that can refuse runs before the inactive slot is written:
//! the signature (against the release key baked into the image), the
//! architecture, the order of releases (a lower epoch is a downgrade), a
//! version that failed on this node before, the slot's size and the free
//! space for what must be fetched, and every fetched chunk's sha256
//! (fetched chunks are staged and checked first, so one flipped byte on the
//! server leaves the inactive slot as it was). Switching to the written slot
//! (the boot entry, boot counting) is the caller's next step.

pub mod assess;
pub mod node;
mod origin;
pub mod switch;
mod transfer;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeforge_delta::ChunkIndex;
use nodeforge_release::{FileDigest, Release};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_key::PublicKey;

pub use origin::HttpOrigin;
pub use transfer::Transferred;

/// The release key baked into the image (the `.pub` of `nodeforge keys
/// generate`).
pub const RELEASE_KEY_PATH: &str = "/etc/nodeforge/release.pub";
/// The updater's state: versions that failed here, the last update.
pub const STATE_DIR: &str = "/var/lib/nodeforge/update";
/// Release documents and signatures are a few KiB; refuse anything absurd.
const MAX_DOCUMENT: usize = 1 << 20;

/// Why an update was refused. Each is decided before the inactive slot is
/// written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateRefused {
    #[error(transparent)]
    Release(#[from] nodeforge_release::Refused),
    #[error(
        "{doc} is for {offered}, this node is {running}: an update keeps the node's architecture"
    )]
    OtherArch {
        doc: String,
        offered: String,
        running: String,
    },
    #[error(
        "{doc} is a downgrade: its epoch {offered} is older than the running build's {running} \
         (pass --allow-downgrade to install it anyway)"
    )]
    Downgrade {
        doc: String,
        offered: i64,
        running: i64,
    },
    #[error(
        "{doc} has no epoch (built without SOURCE_DATE_EPOCH or a pinned snapshot), so whether \
         it is newer cannot be told; rebuild it reproducibly or pass --allow-downgrade"
    )]
    NoEpoch { doc: String },
    #[error(
        "{doc}: version {version} failed to boot on this node before; it is not installed again \
         (a newer build is)"
    )]
    FailedBefore { doc: String, version: String },
    #[error(
        "{doc}: version {version} is already on this node (the running slot, or the one that \
         boots next): nothing to do"
    )]
    Current { doc: String, version: String },
    #[error("{doc} is a release of build `{offered}`, not of this node's `{wanted}`")]
    OtherBuild {
        doc: String,
        offered: String,
        wanted: String,
    },
    #[error("{doc}: its chunk index is unusable: {why}")]
    BadIndex { doc: String, why: String },
    #[error("{doc} names no root slot (built by an older nodeforge): rebuild it")]
    NoRootSlot { doc: String },
    #[error(
        "{doc} was built for the disk layout {offered}, this node has {running} (the profile's \
         name or [disk] sizes changed): such a release cannot go into a slot; re-flash the node"
    )]
    OtherLayout {
        doc: String,
        offered: String,
        running: String,
    },
    #[error(
        "{doc}: the new root slot is {want} bytes, the inactive slot {slot} holds {room}: \
         re-flash the node with a larger disk layout"
    )]
    TooLarge {
        doc: String,
        want: u64,
        slot: String,
        room: u64,
    },
    #[error(
        "{dir} has {free} bytes free, the update needs {need} (the chunks it fetches and 64 MiB \
         left for the running stacks): free space there (or update from a build that shares \
         more with this one)"
    )]
    NoSpace { dir: String, free: u64, need: u64 },
    #[error(
        "{file}: the chunk at offset {offset} ({len} bytes) has sha256 {got}, the signed index \
         says {want}; the server's copy is damaged (nothing was written to the inactive slot)"
    )]
    BadPayload {
        file: String,
        offset: u64,
        len: u32,
        got: String,
        want: String,
    },
}

/// What the node knows about itself, for the checks.
#[derive(Debug, Clone)]
pub struct Running {
    /// Debian's name of this machine's architecture (amd64, arm64).
    pub arch: String,
    /// The running build's epoch (baked into `firstboot.toml`).
    pub epoch: Option<i64>,
}

/// One update, as the command line gives it.
pub struct Request<'a> {
    /// The build's name: its files are `<build>.release.json` …
    pub build: &'a str,
    pub trusted: &'a PublicKey,
    pub running: Running,
    /// The running root slot (a partition, or a file in tests).
    pub running_slot: &'a Path,
    /// The slot to write.
    pub target_slot: &'a Path,
    /// The updater's state directory; fetched chunks are staged here.
    pub state_dir: &'a Path,
    /// Where the running slot's index is kept between tries in one boot
    /// (under /run), or `None` to index it every time.
    pub index_cache: Option<&'a Path>,
    /// With A/B slots: this node's disk GUID, which the release must name.
    pub disk_guid: Option<&'a str>,
    /// Versions the node has: its running slot's, and one written that
    /// boots next. Offered again, they are not written again.
    pub current: &'a [String],
    /// Runs once every chunk is fetched and checked, before the target is
    /// opened: the switch retires the target's boot entry here, so a slot
    /// half written is never booted.
    pub before_writing: Option<&'a dyn Fn() -> Result<()>>,
    pub allow_downgrade: bool,
}

/// What an update did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub epoch: Option<i64>,
    pub slot: PathBuf,
    pub size: u64,
    pub chunks: usize,
    pub fetched_bytes: u64,
    pub copied_bytes: u64,
    pub zero_bytes: u64,
}

/// Fetches, checks and writes the release of `req.build` into the target
/// slot. `say` gets one line per stage for the console.
pub fn update(origin: &HttpOrigin, req: &Request, say: &mut dyn FnMut(&str)) -> Result<Installed> {
    let release = fetch_release(origin, req)?;
    let doc = origin.locate(&nodeforge_release::release_file_name(req.build));
    check_release(&release, &doc, req)?;
    let slot = release
        .root_slot
        .clone()
        .ok_or_else(|| UpdateRefused::NoRootSlot { doc: doc.clone() })?;
    if let Some(running) = req.disk_guid {
        if slot.disk_guid.as_deref() != Some(running) {
            return Err(UpdateRefused::OtherLayout {
                doc,
                offered: slot
                    .disk_guid
                    .clone()
                    .unwrap_or_else(|| "without slots".into()),
                running: running.into(),
            }
            .into());
        }
    }
    say(&format!(
        "release {} (epoch {}) verified against {}",
        short(&release.version),
        release.epoch.map_or("none".into(), |e| e.to_string()),
        nodeforge_release::fingerprint(req.trusted)
    ));
    let want = fetch_index(origin, &release, &slot.chunks, &doc)?;
    let why = want.problem().or_else(|| {
        (want.size != slot.size).then(|| {
            format!(
                "it covers {} bytes, the release's slot {}",
                want.size, slot.size
            )
        })
    });
    if let Some(why) = why {
        return Err(UpdateRefused::BadIndex { doc, why }.into());
    }
    let room = transfer::size_of(req.target_slot)?;
    if want.size > room {
        return Err(UpdateRefused::TooLarge {
            doc,
            want: want.size,
            slot: req.target_slot.display().to_string(),
            room,
        }
        .into());
    }
    let kept = req
        .index_cache
        .and_then(|c| transfer::kept_index(req.running_slot, &want, c));
    let (have, how) = match kept {
        Some(index) => (
            index,
            "its index kept from an earlier try of this boot".to_owned(),
        ),
        None => {
            say(&format!(
                "indexing the running slot {}",
                req.running_slot.display()
            ));
            let clock = std::time::Instant::now();
            let index = transfer::index_slot(req.running_slot, &want)?;
            let how = format!("indexed in {:.1} s", clock.elapsed().as_secs_f64());
            match req.index_cache {
                Some(c) => (transfer::keep_index(req.running_slot, index, c), how),
                None => (index, how),
            }
        }
    };
    let plan = nodeforge_delta::assemble::plan(&have, &want)
        .context("planning the update against the running slot")?;
    say(&format!(
        "{} of {} chunks to fetch ({} bytes), {} bytes from the running slot ({})",
        plan.fetch_chunks,
        want.chunks.len(),
        plan.fetch_bytes,
        plan.local_bytes,
        how
    ));
    let done = transfer::Transfer {
        origin,
        file: &slot.file,
        base: slot.offset,
        plan: &plan,
        running: req.running_slot,
        target: req.target_slot,
        before_writing: req.before_writing,
    }
    .run(req.state_dir)?;
    let zero_bytes = want
        .size
        .saturating_sub(done.fetched_bytes + done.copied_bytes);
    let installed = Installed {
        name: release.name.clone(),
        version: release.version.clone(),
        epoch: release.epoch,
        slot: req.target_slot.to_path_buf(),
        size: want.size,
        chunks: want.chunks.len(),
        fetched_bytes: done.fetched_bytes,
        copied_bytes: done.copied_bytes,
        zero_bytes,
    };
    let record = serde_json::to_vec_pretty(&installed).expect("serialises");
    crate::fsutil::atomic_write(&req.state_dir.join("last-update.json"), &record, 0o644)?;
    say(&format!(
        "wrote {} ({} bytes): fetched {}, copied {}, zeros {}; every chunk checked \
         (fetched in {:.1} s, written in {:.1} s, read back in {:.1} s)",
        req.target_slot.display(),
        want.size,
        done.fetched_bytes,
        done.copied_bytes,
        zero_bytes,
        done.secs.fetch,
        done.secs.write,
        done.secs.read_back
    ));
    Ok(installed)
}

fn short(version: &str) -> String {
    version.chars().take(12).collect()
}

/// The release and its signature, verified against the trusted key.
fn fetch_release(origin: &HttpOrigin, req: &Request) -> Result<Release> {
    let doc_name = nodeforge_release::release_file_name(req.build);
    let sig_name = nodeforge_release::signature_file_name(req.build);
    let (doc, sig) = (origin.locate(&doc_name), origin.locate(&sig_name));
    let bytes = origin
        .get(&doc_name, MAX_DOCUMENT)
        .with_context(|| format!("fetching the release {doc}"))?;
    let signature = origin.get(&sig_name, MAX_DOCUMENT).with_context(|| {
        format!("fetching the release's signature {sig} (releases for nodes are built with --signing-key)")
    })?;
    let signature = String::from_utf8(signature)
        .map_err(|e| nodeforge_release::Refused::MalformedSignature {
            sig: sig.clone(),
            reason: e.to_string(),
        })
        .map_err(UpdateRefused::from)?;
    nodeforge_release::verify(&bytes, &signature, req.trusted, &doc, &sig)
        .map_err(UpdateRefused::from)?;
    Ok(nodeforge_release::parse(&bytes, &doc)?)
}

/// The checks on the release itself, before anything is fetched.
fn check_release(release: &Release, doc: &str, req: &Request) -> Result<(), UpdateRefused> {
    if release.name != req.build {
        return Err(UpdateRefused::OtherBuild {
            doc: doc.into(),
            offered: release.name.clone(),
            wanted: req.build.into(),
        });
    }
    if req.current.contains(&release.version) {
        return Err(UpdateRefused::Current {
            doc: doc.into(),
            version: release.version.clone(),
        });
    }
    if release.arch != req.running.arch {
        return Err(UpdateRefused::OtherArch {
            doc: doc.into(),
            offered: release.arch.clone(),
            running: req.running.arch.clone(),
        });
    }
    if failed_versions(req.state_dir).contains(&release.version) {
        return Err(UpdateRefused::FailedBefore {
            doc: doc.into(),
            version: release.version.clone(),
        });
    }
    if req.allow_downgrade {
        return Ok(());
    }
    match (release.epoch, req.running.epoch) {
        (None, _) => Err(UpdateRefused::NoEpoch { doc: doc.into() }),
        (Some(offered), Some(running)) if offered < running => Err(UpdateRefused::Downgrade {
            doc: doc.into(),
            offered,
            running,
        }),
        _ => Ok(()),
    }
}

/// `failed`: one version per line, written when a slot's boot counter ran
/// out (boot assessment).
pub fn failed_versions(state_dir: &Path) -> Vec<String> {
    fs::read_to_string(state_dir.join("failed"))
        .map(|t| t.lines().map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// The chunk index the release lists, checked against its digest.
fn fetch_index(
    origin: &HttpOrigin,
    release: &Release,
    file: &str,
    doc: &str,
) -> Result<ChunkIndex> {
    let listed = release.listed(file, doc).map_err(UpdateRefused::from)?;
    let max = usize::try_from(listed.size).unwrap_or(usize::MAX);
    let shown = origin.locate(file);
    let bytes = origin
        .get(file, max)
        .with_context(|| format!("fetching the chunk index {shown}"))?;
    let got = FileDigest {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
    };
    release
        .check_digest(file, &shown, &got, doc)
        .map_err(UpdateRefused::from)?;
    serde_json::from_slice(&bytes).with_context(|| format!("{shown}: not a chunk index"))
}

/// Debian's name for the architecture this agent was built for.
pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        other => other,
    }
}
