//! Step `models`: the profile's Ollama models (`[[models]]`) written into
//! Ollama's model store in the image (`oci::ollama`), from their locked
//! manifests and the blob cache, so the node has them at first boot with
//! no network. A cached layer keyed by the locked digests.

use anyhow::{Context, Result};

use super::containers::{ensure_blobs, registry_client};
use super::context::BuildContext;
use super::progress::StepOutcome;
use crate::oci::cache::BlobCache;
use crate::oci::lock::{self, LockFile};
use crate::oci::ollama::{self, ModelName, StoreModel, MODELS_DIR};

/// What the store is made from: each model and its locked digest.
pub fn inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    let models: Vec<(&str, Option<&str>)> = plan
        .models
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.locked.as_ref().map(|l| l.digest.as_str()),
            )
        })
        .collect();
    serde_json::json!({ "models": models, "dir": MODELS_DIR })
}

pub fn applies(plan: &crate::plan::Plan) -> bool {
    !plan.profile.models.is_empty()
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let plan = ctx.plan;
    let p = &plan.profile;
    let locked = LockFile::check_models(
        plan.lock.as_ref(),
        &plan.lock_path,
        p.sources.last().expect("a profile has a source"),
        &p.models,
    )?;
    let cache = BlobCache::new(&ctx.opts.cache_dir);
    let names = locked
        .iter()
        .map(|l| ModelName::parse(&l.name))
        .collect::<Result<Vec<_>>>()?;
    let client = registry_client(ctx, lock::model_mirrors(&locked)?)?;
    let mut fetched = Vec::new();
    let mut from_remote = 0;
    for (name, l) in names.iter().zip(&locked) {
        let manifest = ensure_blobs(
            "model",
            &cache,
            client.as_ref(),
            ctx.remote.as_ref(),
            &name.reference(),
            &l.digest,
            &mut from_remote,
        )
        .with_context(|| format!("fetching model {} ({})", l.name, l.digest))?;
        // The lock refused anything but a model (ModelName::is_model).
        let bytes = cache.read(&l.digest)?;
        fetched.push((name, bytes, manifest));
    }
    let models: Vec<StoreModel> = fetched
        .iter()
        .map(|(name, bytes, manifest)| StoreModel {
            name,
            manifest_bytes: bytes,
            manifest,
        })
        .collect();
    let bytes = ollama::write_store(&ctx.target(MODELS_DIR), &models, &cache)
        .with_context(|| format!("writing the models into {MODELS_DIR} in the image"))?;
    let facts: Vec<serde_json::Value> = locked
        .iter()
        .map(|l| serde_json::json!({ "name": l.name, "digest": l.digest }))
        .collect();
    ctx.facts.insert(
        "models".into(),
        serde_json::json!({ "models": facts, "bytes": bytes, "blobs_from_remote_cache": from_remote }),
    );
    Ok(StepOutcome::Done)
}
