//! `nodeforge netinstall URL`: run on a machine netbooted in install mode
//! (its netboot initramfs starts it in the fetched root). It reads the
//! install order `nodeforge serve` made for this machine, fetches only the
//! image's mapped ranges (its .bmap) over HTTP with Range requests into a
//! RAM staging file, then writes them to the disk the fleet's rule picks
//! exactly as `nodeforge flash` does (checked, partition tables last, read
//! back), stamps the node's seed, and tells the server it is done.
//!
//! An order naming a pushed build (the fleet's `install_from`) is written
//! straight from the registry instead, as `flash oci://…` does: the block
//! map first, then the image streamed to the disk with every range and
//! blob checked; nothing is staged, so the machine's RAM need not hold
//! the image's data.

pub mod disk;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bmap::Bmap;
use crate::flash::{self, device::ImageFacts, FlashOptions};
use crate::oci::Mirror;
use crate::seed::SeedStamp;
use disk::DiskRule;
use nodeforge_firstboot::seed::Seed;

/// Kernel command-line parameter naming the install order's URL.
pub const INSTALL_PARAM: &str = "nodeforge.install";
/// Where the netboot root carries the installer (this program).
pub const INSTALLER_PATH: &str = "/usr/lib/nodeforge/nodeforge";

/// What `serve` tells an install-mode machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallOrder {
    /// The fleet's name for the machine.
    pub node: String,
    pub image: String,
    pub bmap: String,
    pub seed: String,
    /// POSTed once the disk is written.
    pub done: String,
    /// `install_disk` (see [`DiskRule`]).
    pub disk: String,
    pub force: bool,
    /// A pushed build (`oci://…@sha256:…`) to write from the registry
    /// instead of `image` and `bmap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// `registry=url`: where the machine reaches `artifact`'s registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// Fetches are retried over a flaky network; each may take this long.
const TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(order_url: &str, staging_dir: &Path) -> Result<()> {
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("making an HTTP client")?;
    let get = |url: &str| -> Result<reqwest::blocking::Response> {
        let r = http.get(url).send().with_context(|| format!("GET {url}"))?;
        if !r.status().is_success() {
            bail!("GET {url}: the server answered {}", r.status());
        }
        Ok(r)
    };
    let order: InstallOrder = toml::from_str(&get(order_url)?.text()?)
        .with_context(|| format!("reading the install order from {order_url}"))?;
    let rule = DiskRule::parse(&order.disk)?;
    let mirrors: Vec<Mirror> = order
        .mirror
        .as_deref()
        .map(Mirror::parse)
        .transpose()
        .with_context(|| format!("the install order from {order_url}"))?
        .into_iter()
        .collect();
    let (bmap, bmap_text) = match &order.artifact {
        Some(uri) => (crate::flash::remote::open_bmap(uri, &mirrors)?.2, None),
        None => {
            let text = get(&order.bmap)?.text()?;
            let bmap = Bmap::parse(&text).with_context(|| format!("reading {}", order.bmap))?;
            (bmap, Some(text))
        }
    };
    let facts = ImageFacts {
        size: bmap.image_size,
        mapped_bytes: bmap.mapped_bytes(),
        file_id: None,
    };
    let disks = disk::candidates(Path::new("/"), &facts)?;
    println!("nodeforge netinstall: disks:\n{}", disk::describe(&disks));
    let target = disk::choose(&rule, &disks, order.force)
        .with_context(|| format!("choosing the disk for node {}", order.node))?;
    let source = order.artifact.as_deref().unwrap_or(&order.image);
    println!(
        "nodeforge netinstall: writing {source} ({} MiB of data) to {}",
        bmap.mapped_bytes() >> 20,
        target.display()
    );

    // From serve: the mapped ranges staged in RAM first. From a registry:
    // streamed by `flash` itself. (`_staging` lives until the write ends.)
    let (image, bmap_path, _staging) = match bmap_text {
        None => (std::path::PathBuf::from(source), None, None),
        Some(text) => {
            let staging = tempfile::Builder::new()
                .prefix("netinstall-")
                .tempdir_in(staging_dir)
                .with_context(|| {
                    format!("making a staging directory in {}", staging_dir.display())
                })?;
            let image = staging.path().join("image.img");
            let bmap_path = staging.path().join("image.img.bmap");
            std::fs::write(&bmap_path, &text)
                .with_context(|| format!("writing {}", bmap_path.display()))?;
            fetch_mapped(&http, &order.image, &bmap, &image)?;
            (image, Some(bmap_path), Some(staging))
        }
    };

    let seed_text = get(&order.seed)?.text()?;
    let seed = Seed::from_toml(&seed_text)
        .map_err(|e| anyhow::anyhow!("the seed from {}: {e}", order.seed))?;
    let stamp = SeedStamp(seed);
    let args = FlashOptions {
        image,
        device: target.clone(),
        bmap: bmap_path,
        yes: true,
        // The fleet rule chose this disk: internal disks are the point.
        force: true,
        no_verify: false,
        quiet: true,
        json: false,
        mirrors,
    };
    let mut input = std::io::empty();
    let mut output = std::io::stdout();
    flash::run_with(
        &args,
        flash::Env {
            sys_root: Path::new("/"),
            stamp: Some(&stamp),
            input: &mut input,
            output: &mut output,
        },
    )
    .with_context(|| format!("writing the image to {}", target.display()))?;
    println!(
        "nodeforge netinstall: {} written, verified and stamped with the seed of {}",
        target.display(),
        order.node
    );
    let r = http
        .post(&order.done)
        .send()
        .with_context(|| format!("POST {}", order.done))?;
    if !r.status().is_success() {
        bail!("POST {}: the server answered {}", order.done, r.status());
    }
    Ok(())
}

/// Fetches each mapped range of the image with a Range request into a
/// sparse file, checking it against the bmap's sha256 as it arrives.
pub fn fetch_mapped(
    http: &reqwest::blocking::Client,
    url: &str,
    bmap: &Bmap,
    dest: &Path,
) -> Result<()> {
    let f = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    f.set_len(bmap.image_size)?;
    let mut buf = vec![0u8; 4 << 20];
    for r in &bmap.ranges {
        let span = bmap.byte_range(r);
        let resp = http
            .get(url)
            .header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", span.start, span.end - 1),
            )
            .send()
            .with_context(|| format!("GET {url} bytes {}..{}", span.start, span.end))?;
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            bail!(
                "GET {url} bytes {}..{}: the server answered {} instead of 206 Partial Content",
                span.start,
                span.end,
                resp.status()
            );
        }
        let mut body = resp;
        let mut pos = span.start;
        let mut hash = Sha256::new();
        while pos < span.end {
            let want = ((span.end - pos) as usize).min(buf.len());
            let n = body
                .read(&mut buf[..want])
                .with_context(|| format!("reading {url} at byte {pos}"))?;
            if n == 0 {
                bail!(
                    "{url}: the body ended at byte {pos} of range {}..{}",
                    span.start,
                    span.end
                );
            }
            hash.update(&buf[..n]);
            f.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        if let Some(want) = r.sha256 {
            let got: [u8; 32] = hash.finalize().into();
            if got != want {
                bail!(
                    "{url}: bytes {}..{} do not match the bmap's sha256; the image and its bmap \
                     are from different builds",
                    span.start,
                    span.end
                );
            }
        }
    }
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip_and_reject_unknown_keys() {
        let o = InstallOrder {
            node: "gamma".into(),
            image: "http://h/nodes/m/x.img".into(),
            bmap: "http://h/nodes/m/x.img.bmap".into(),
            seed: "http://h/nodes/m/seed.toml".into(),
            done: "http://h/nodes/m/installed".into(),
            disk: "smallest-empty".into(),
            force: false,
            artifact: None,
            mirror: None,
        };
        let text = toml::to_string(&o).unwrap();
        // An order without a registry says nothing of one (older
        // installers read it as before).
        assert!(
            !text.contains("artifact") && !text.contains("mirror"),
            "{text}"
        );
        assert_eq!(toml::from_str::<InstallOrder>(&text).unwrap(), o);
        assert!(toml::from_str::<InstallOrder>(&format!("{text}extra = 1\n")).is_err());
        let from_registry = InstallOrder {
            artifact: Some("oci://r.lan:5000/fleet/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
            mirror: Some("r.lan:5000=http://10.0.0.5:5000".into()),
            ..o
        };
        let text = toml::to_string(&from_registry).unwrap();
        assert_eq!(
            toml::from_str::<InstallOrder>(&text).unwrap(),
            from_registry
        );
    }
}
