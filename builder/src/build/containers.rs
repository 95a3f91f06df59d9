//! Two steps. `containers`: the locked images written into the Docker
//! engine's own store (/var/lib/docker, see `oci::docker_store`), so first
//! boot does no image work. `stacks`: each stack's compose file rendered
//! into /etc/nodeforge/stacks/<stack>/, and /etc/nodeforge/stacks.toml
//! telling the agent what to start and probe. Apart, a compose edit
//! re-runs only `stacks`; the store comes from `containers`' cached layer.

use std::collections::BTreeMap;
use std::fs;

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::stacks::{
    secrets_file, ImageEntry, ProbeEntry, StackEntry, StacksManifest, STACKS_DIR,
    STACKS_MANIFEST_PATH,
};

use super::context::BuildContext;
use super::overlay::tera_error_chain;
use super::progress::StepOutcome;
use super::remote_cache::RemoteCache;
use crate::fsutil;
use crate::oci::cache::BlobCache;
use crate::oci::docker_store::{self, StoreImage, DOCKER_ROOT};
use crate::oci::lock::{self, profile_images, LockFile};
use crate::oci::manifest::{ImageManifest, Manifest};
use crate::oci::{Client, Digest, Mirrors, Reference};
use crate::profile::{ProbeCheck, Stack};

/// What the store is made from: the architecture and each image's locked
/// digest (the tag it is stored under derives from both).
pub fn images_inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    let images: Vec<(&str, Option<&str>)> = plan
        .images
        .iter()
        .map(|i| {
            (
                i.reference.as_str(),
                i.locked.as_ref().map(|l| l.digest.as_str()),
            )
        })
        .collect();
    serde_json::json!({ "arch": plan.profile.hardware.arch.debian(), "images": images })
}

/// What the compose files and the stacks manifest are made from: each
/// stack's settings and template (by content), and the template context.
pub fn stacks_inputs(plan: &crate::plan::Plan) -> Result<serde_json::Value> {
    let mut stacks = Vec::new();
    for st in &plan.profile.stacks {
        let template = fs::read(&st.compose)
            .with_context(|| format!("reading compose template {}", st.compose.display()))?;
        let mut v = serde_json::to_value(st)?;
        v["compose"] = fsutil::sha256_bytes(&template).into();
        stacks.push(v);
    }
    Ok(serde_json::json!({ "stacks": stacks, "vars": plan.profile.template_context() }))
}

/// The fields of the `containers` fact the `stacks` step reads back (the
/// fact survives in the layer when `containers` is reused).
#[derive(serde::Deserialize)]
struct StoredImage {
    reference: String,
    tag: String,
    digest: String,
    image_id: String,
}

/// Step `containers`.
pub fn write_images(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let plan = ctx.plan;
    let p = &plan.profile;
    if p.stacks.is_empty() {
        return Ok(StepOutcome::Skipped("the profile has no stacks".into()));
    }
    let refs = profile_images(p);
    let locked = LockFile::check(
        plan.lock.as_ref(),
        &plan.lock_path,
        p.sources.last().expect("a profile has a source"),
        p.hardware.arch.debian(),
        &refs,
    )?;
    let cache = BlobCache::new(&ctx.opts.cache_dir);
    let client = registry_client(ctx, lock::mirrors(&locked)?)?;
    let mut fetched = Vec::new();
    let mut facts = Vec::new();
    let mut blob_total = 0;
    let mut from_remote = 0;
    for (r, l) in refs.iter().zip(locked) {
        let parsed = Reference::parse(r)?;
        let manifest = ensure_blobs(
            "image",
            &cache,
            client.as_ref(),
            ctx.remote.as_ref(),
            &parsed,
            &l.digest,
            &mut from_remote,
        )
        .with_context(|| format!("fetching image {r} ({})", l.digest))?;
        let tag = parsed.load_tag(&l.digest);
        let blob_bytes: u64 = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .map(|d| d.size)
            .sum();
        blob_total += blob_bytes;
        facts.push(serde_json::json!({
            "reference": r, "digest": l.digest, "tag": tag,
            "image_id": manifest.config.digest, "blob_bytes": blob_bytes,
        }));
        fetched.push((parsed, l.digest.clone(), manifest, tag));
    }
    let images: Vec<StoreImage> = fetched
        .iter()
        .map(|(reference, manifest_digest, manifest, tag)| StoreImage {
            reference,
            tag,
            manifest_digest,
            manifest,
        })
        .collect();
    let report = docker_store::write_store(&ctx.target(DOCKER_ROOT), &images, &cache)
        .with_context(|| format!("writing the images into {DOCKER_ROOT} in the image"))?;
    ctx.facts.insert(
        "containers".into(),
        serde_json::json!({
            "images": facts, "blob_bytes": blob_total, "layers": report.layers,
            "unpacked_bytes": report.unpacked_bytes, "offline": ctx.opts.offline,
            "blobs_from_remote_cache": from_remote,
        }),
    );
    Ok(StepOutcome::Done)
}

/// The registry client a step fetches blobs with, through `mirrors`;
/// None for an `--offline` build.
pub(super) fn registry_client(ctx: &BuildContext, mirrors: Mirrors) -> Result<Option<Client>> {
    if ctx.opts.offline {
        return Ok(None);
    }
    let client = Client::new().context("setting up the registry client")?;
    Ok(Some(client.with_mirrors(mirrors)))
}

/// Step `stacks`.
pub fn write_stacks(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let p = &ctx.plan.profile;
    if p.stacks.is_empty() {
        return Ok(StepOutcome::Skipped("the profile has no stacks".into()));
    }
    let stored: Vec<StoredImage> = ctx
        .facts
        .get("containers")
        .and_then(|c| c.get("images"))
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .context("reading the containers step's image list")?
        .context("the containers step recorded no images")?;
    let images: BTreeMap<String, ImageEntry> = stored
        .into_iter()
        .map(|a| {
            let entry = ImageEntry {
                reference: a.reference,
                tag: a.tag,
                digest: a.digest,
                image_id: a.image_id,
            };
            (entry.reference.clone(), entry)
        })
        .collect();
    let mut manifest = StacksManifest::default();
    for st in &p.stacks {
        manifest.stacks.push(write_stack(ctx, st, &images)?);
    }
    let path = ctx.target(STACKS_MANIFEST_PATH);
    crate::fsutil::create_dir_all(path.parent().expect("has parent"))?;
    fsutil::atomic_write(&path, manifest.to_toml().as_bytes())
        .with_context(|| format!("writing {STACKS_MANIFEST_PATH} in the image"))?;
    Ok(StepOutcome::Done)
}

/// Refuses a profile whose stacks' images or models are not all locked
/// (or locked for another architecture), naming the command that fixes it.
pub fn check_locked(plan: &crate::plan::Plan) -> Result<()> {
    let p = &plan.profile;
    let profile_path = p.sources.last().expect("a profile has a source");
    LockFile::check(
        plan.lock.as_ref(),
        &plan.lock_path,
        profile_path,
        p.hardware.arch.debian(),
        &profile_images(p),
    )?;
    LockFile::check_models(plan.lock.as_ref(), &plan.lock_path, profile_path, &p.models)?;
    Ok(())
}

/// The image manifest of `digest` (of an image or a model: `kind` names it
/// in errors), with it, its config and its layers in
/// the cache: from there if present, else from the remote build cache
/// (`--cache-from`, counted in `from_remote`), else from the image's
/// registry (unless offline, which names the missing blob instead). Each
/// is offered to `--cache-to`.
pub(super) fn ensure_blobs(
    kind: &str,
    cache: &BlobCache,
    client: Option<&Client>,
    remote: Option<&RemoteCache>,
    image: &Reference,
    digest: &Digest,
    from_remote: &mut usize,
) -> Result<ImageManifest> {
    let need_client = |what: &str, d: &Digest| {
        client.ok_or_else(|| {
            anyhow::anyhow!(
                "offline build: {what} {d} of {kind} {image} is not in the blob cache ({}); \
                 build once without --offline (or with --cache-from a registry cache that has it) to fetch it",
                cache.path(d).display()
            )
        })
    };
    let mut from_cache_registry = |d: &Digest, size: Option<u64>| {
        let found = cache.get(d).is_none() && remote.is_some_and(|r| r.fetch_blob(cache, d, size));
        *from_remote += usize::from(found);
    };
    from_cache_registry(digest, None);
    let body = match cache.get(digest) {
        Some(_) => cache.read(digest)?,
        None => {
            // `manifest` checks the body against the digest asked for.
            let (_, body, _) = need_client("manifest", digest)?.manifest(image, digest.as_str())?;
            cache.put(digest, &body)?;
            body
        }
    };
    let manifest = match Manifest::parse(None, &body)? {
        Manifest::Image(m) => m,
        Manifest::Index(_) => bail!(
            "the locked digest {digest} of {image} is an index, not a platform's manifest: run `nodeforge lock` again"
        ),
    };
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        from_cache_registry(&d.digest, Some(d.size));
        if cache.get(&d.digest).is_none() {
            let c = need_client("blob", &d.digest)?;
            cache.fetch(c, image, &d.digest, Some(d.size))?;
        }
    }
    if let Some(remote) = remote {
        for d in std::iter::once(digest).chain(
            std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|l| &l.digest),
        ) {
            remote.store_blob(d, &cache.path(d));
        }
    }
    Ok(manifest)
}

/// Renders the stack's compose template and `.env` into the image and
/// returns its entry of the manifest.
fn write_stack(
    ctx: &BuildContext,
    st: &Stack,
    images: &BTreeMap<String, ImageEntry>,
) -> Result<StackEntry> {
    let dir = format!("{STACKS_DIR}/{}", st.name);
    crate::fsutil::create_dir_all(ctx.target(&dir))
        .with_context(|| format!("creating {dir} in the image"))?;
    let tags: BTreeMap<&str, &str> = images
        .iter()
        .filter(|(r, _)| st.images.contains(r))
        .map(|(r, e)| (r.as_str(), e.tag.as_str()))
        .collect();
    let rendered = render_compose(&ctx.plan.profile, st, &tags)?;
    let compose = format!("{dir}/compose.yaml");
    fsutil::atomic_write(&ctx.target(&compose), rendered.as_bytes())
        .with_context(|| format!("writing {compose} in the image"))?;
    let env_file = if st.env.is_empty() {
        None
    } else {
        let path = format!("{dir}/.env");
        fsutil::atomic_write(&ctx.target(&path), env_file(&st.env).as_bytes())
            .with_context(|| format!("writing {path} in the image"))?;
        Some(path)
    };
    Ok(StackEntry {
        name: st.name.clone(),
        compose,
        env_file,
        secrets: st.secrets.clone(),
        secrets_file: (!st.secrets.is_empty()).then(|| secrets_file(&st.name)),
        health_timeout_secs: st.health_timeout_secs,
        images: st
            .images
            .iter()
            .filter_map(|r| images.get(r).cloned())
            .collect(),
        probes: st
            .probes
            .iter()
            .map(|p| ProbeEntry {
                service: p.service.clone(),
                http: match &p.check {
                    ProbeCheck::Http(u) => Some(u.clone()),
                    ProbeCheck::Tcp(_) => None,
                },
                tcp: match &p.check {
                    ProbeCheck::Tcp(a) => Some(a.clone()),
                    ProbeCheck::Http(_) => None,
                },
            })
            .collect(),
    })
}

/// The stack's compose file: its template rendered with the profile's
/// template context, `stack`, `env` and `images` (each reference → the
/// tag its image loads as).
pub fn render_compose(
    profile: &crate::profile::Profile,
    st: &Stack,
    tags: &BTreeMap<&str, &str>,
) -> Result<String> {
    let mut vars = profile.template_context();
    vars["stack"] = st.name.clone().into();
    vars["env"] = serde_json::to_value(&st.env)?;
    vars["images"] = serde_json::to_value(tags)?;
    let vars = tera::Context::from_serialize(vars).context("preparing template variables")?;
    let text = fs::read_to_string(&st.compose)
        .with_context(|| format!("reading compose template {}", st.compose.display()))?;
    tera::Tera::one_off(&text, &vars, false)
        .map_err(|e| anyhow::anyhow!("{}", tera_error_chain(&e)))
        .with_context(|| {
            format!(
                "rendering compose template {} of stack {}",
                st.compose.display(),
                st.name
            )
        })
}

/// A compose `.env`: single-quoted values are taken literally (no
/// interpolation); validation keeps `'` and newlines out of values.
pub fn env_file(env: &BTreeMap<String, String>) -> String {
    nodeforge_firstboot::stacks::env_file(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_quoted_literally() {
        let env = BTreeMap::from([
            ("PORT".to_owned(), "8080".to_owned()),
            (
                "GREETING".to_owned(),
                "hello $USER # not a comment".to_owned(),
            ),
        ]);
        assert_eq!(
            env_file(&env),
            "GREETING='hello $USER # not a comment'\nPORT='8080'\n"
        );
    }
}
