//! `flash oci://REF@sha256:…`: a build pushed with `nodeforge push`,
//! streamed from the registry. The block map comes first (read whole,
//! checked by digest); the image blob is decompressed as it arrives, each
//! range checked against the map's sha256 before it is written, and the
//! blob's own digest checked at its end. Nothing is staged on disk.

use anyhow::{Context, Result};

use super::source::ImageSource;
use crate::bmap::Bmap;
use crate::oci::artifact::{Pulled, BMAP, DISK_IMAGE_ZSTD};
use crate::oci::client::Client;
use crate::oci::mirror::{Mirror, Mirrors};

/// The block map, where it came from, and the image as a stream.
pub fn open(uri: &str, mirrors: &[Mirror]) -> Result<(Bmap, String, ImageSource)> {
    let (client, pulled, bmap) = open_bmap(uri, mirrors)?;
    let bmap_layer = pulled.layer(BMAP)?;
    let image = pulled.layer(DISK_IMAGE_ZSTD)?;
    let name = format!("blob {} of {uri}", image.digest);
    let stream = pulled.stream(&client, image)?;
    let src = ImageSource::zstd_stream(&name, Box::new(stream))?;
    Ok((bmap, format!("blob {} of {uri}", bmap_layer.digest), src))
}

/// The pushed build's artifact and its block map (read whole, checked by
/// digest): what a caller needs to pick a disk before any image byte.
pub fn open_bmap(uri: &str, mirrors: &[Mirror]) -> Result<(Client, Pulled, Bmap)> {
    // Credentials as `docker login` keeps them, when the registry asks.
    let client = Client::new()?
        .with_credentials(crate::oci::auth::Credentials::load(None)?)
        .with_mirrors(Mirrors::new(mirrors.iter().cloned()));
    let pulled = Pulled::fetch(&client, uri)?;
    let bmap_layer = pulled.layer(BMAP)?;
    let text = pulled.read_small(&client, bmap_layer)?;
    let text = String::from_utf8(text).with_context(|| {
        format!(
            "blob {} of {uri} (the block map) is not text",
            bmap_layer.digest
        )
    })?;
    let bmap = Bmap::parse(&text)
        .with_context(|| format!("reading the block map {} of {uri}", bmap_layer.digest))?;
    Ok((client, pulled, bmap))
}
