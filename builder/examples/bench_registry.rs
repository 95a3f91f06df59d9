//! For benches/containers.sh: starts a docker-registry on loopback and
//! pushes one image per size given (MiB of incompressible filler on top of
//! a busybox httpd layer), prints `IMAGE <reference> <blob bytes>` for each
//! and `READY`, then serves until its stdin closes.
//!
//!     cargo run --release --example bench_registry -- 8 72

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use nodeforge::oci::fixture::{
    busybox_httpd_image, image_config, layer_tar, TestImage, TestRegistry,
};
use sha2::{Digest as _, Sha256};

fn filler(mib: usize) -> Vec<u8> {
    // A hash chain: deterministic, and as incompressible as real binaries.
    let mut out = Vec::with_capacity(mib << 20);
    let mut block = Sha256::digest(b"nodeforge bench").to_vec();
    while out.len() < mib << 20 {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(mib << 20);
    out
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("sizes are whole MiB"))
        .collect::<Result<_>>()?;
    let reg = TestRegistry::start()?;
    for (i, mib) in sizes.iter().enumerate() {
        let base = busybox_httpd_image("amd64", Path::new("/bin/busybox"), "bench\n", 8080)?;
        let data = filler(*mib);
        let extra = layer_tar(&[("data/filler", 0o644, &data)])?;
        let layers = vec![base.layers[0].clone(), extra];
        let cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"];
        let image = TestImage {
            config: image_config("amd64", &layers, &cmd, &format!("bench {mib}")),
            layers,
        };
        let repo = format!("bench/img{i}");
        reg.push_image(&repo, Some("1"), &image)?;
        let bytes: usize = image.config.len() + image.layers.iter().map(Vec::len).sum::<usize>();
        println!("IMAGE {}/{repo}:1 {bytes}", reg.addr);
    }
    println!("READY");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}
