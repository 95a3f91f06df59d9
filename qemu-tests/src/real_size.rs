//! Real-size stand-ins for benchmarks: each test image gets one more layer
//! of incompressible bytes, so that its compressed size is that of the
//! public image it stands for (linux/amd64, as its registry serves it).
//! The functional tests keep the small images; benches/role-boot.sh
//! `--real-size` boots these, so a first boot handles what a user's does.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Result;
use nodeforge::oci::fixture::{layer_tar, TestImage};
use nodeforge::oci::Digest;

/// Compressed size (bytes, linux/amd64: the sum of the platform manifest's
/// layer sizes) of each public image, and where it was read. Images not
/// listed keep their small test image (no source was found for them).
pub const PUBLIC_SIZES: &[(&str, u64, &str)] = &[
    (
        "traefik:v3.1.6",
        48_653_174,
        "github.com/maxmood96/repo-info repos/traefik/remote/v3.1.6.md @ c63b5771922c (a fork of docker-library/repo-info)",
    ),
    (
        "nginx:1.27.2-alpine",
        22_764_242,
        "github.com/maxmood96/repo-info repos/nginx/remote/1.27.2-alpine.md @ 04db8889e032",
    ),
    (
        "redis:7.4.1",
        44_998_013,
        "github.com/maxmood96/repo-info repos/redis/remote/7.4.1.md @ 057145d3aab9",
    ),
    (
        "postgres:16.4",
        153_447_662,
        "github.com/maxmood96/repo-info repos/postgres/remote/16.4.md @ 043638061e43",
    ),
    (
        "n8nio/n8n:1.64.3",
        193_010_000,
        "the registry's tag page of n8nio/n8n 1.76.3, linux/amd64: 193.01 MB (the nearest tag found; 1.64.3's was not)",
    ),
];

/// The public compressed size recorded for `name`, if any.
pub fn public_size(name: &str) -> Option<u64> {
    PUBLIC_SIZES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, size, _)| *size)
}

/// Deterministic incompressible bytes (splitmix64), seeded by `seed`.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut state =
        u64::from_str_radix(&Digest::of(seed.as_bytes()).hex()[..16], 16).expect("hex digits");
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The size gzip makes of `layer` (deflate level 6, as the test registry
/// compresses), remembered by digest: images share the Debian layer.
fn gzipped_len(layer: &[u8]) -> Result<u64> {
    use std::io::Write;
    static SIZES: Mutex<BTreeMap<Digest, u64>> = Mutex::new(BTreeMap::new());
    let digest = Digest::of(layer);
    if let Some(n) = SIZES.lock().unwrap_or_else(|e| e.into_inner()).get(&digest) {
        return Ok(*n);
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(layer)?;
    let n = e.finish()?.len() as u64;
    SIZES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(digest, n);
    Ok(n)
}

/// `image` with a padding layer that brings its compressed size to
/// `target` bytes (unchanged if it is that large already).
pub fn pad(image: TestImage, name: &str, target: u64) -> Result<TestImage> {
    let mut current = image.config.len() as u64;
    for l in &image.layers {
        current += gzipped_len(l)?;
    }
    let Some(missing) = target.checked_sub(current).filter(|m| *m > 4096) else {
        return Ok(image);
    };
    let data = noise(name, missing as usize);
    let layer = layer_tar(&[("nodeforge-padding/public-size.bin", 0o644, &data)])?;
    let mut config: serde_json::Value = serde_json::from_slice(&image.config)?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("image config of {name} has no diff_ids"))?
        .push(Digest::of(&layer).to_string().into());
    if let Some(h) = config["history"].as_array_mut() {
        h.push(
            serde_json::json!({"created_by": "nodeforge qemu-tests: padding to the public size"}),
        );
    }
    let mut layers = image.layers;
    layers.push(layer);
    Ok(TestImage {
        config: serde_json::to_vec(&config)?,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_brings_an_image_to_its_public_size_with_bytes_gzip_cannot_shrink() {
        let base = TestImage {
            config: br#"{"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#.to_vec(),
            layers: vec![],
        };
        let padded = pad(base, "example/app:1", 3 << 20).unwrap();
        assert_eq!(padded.layers.len(), 1);
        let total = padded.config.len() as u64 + gzipped_len(&padded.layers[0]).unwrap();
        let off = total.abs_diff(3 << 20);
        assert!(off < 8192, "{total} is not about 3 MiB");
        let config: serde_json::Value = serde_json::from_slice(&padded.config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            Digest::of(&padded.layers[0]).to_string()
        );
        assert_eq!(noise("a", 64), noise("a", 64));
        assert_ne!(noise("a", 64), noise("b", 64));
    }
}
