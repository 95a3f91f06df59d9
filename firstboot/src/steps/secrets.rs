//! Step `stack-secrets`: every secret a stack declares gets a value in the
//! stack's secrets file (mode 0600) before anything starts: the one already
//! there (a secret is generated once and kept across boots), else the
//! seed's, else a fresh random one. Runs before the scrub step, which then
//! removes the seed's values from the boot partition.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use rand_core::RngCore;

use super::{Ctx, Outcome};
use crate::fsutil::{atomic_write, read_optional, under};
use crate::stacks::{env_file, parse_env_file, StackEntry};

/// Random bytes per generated secret: 128 bits, written as 32 hex digits,
/// a form every service accepts (MinIO caps its password at 40 bytes).
const GENERATED_BYTES: usize = 16;

pub fn stack_secrets(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let Some(manifest) = super::containers::load_manifest(ctx.root)? else {
        return Ok(Outcome::Skipped("the image has no stacks".into()));
    };
    let stacks: Vec<&StackEntry> = manifest
        .stacks
        .iter()
        .filter(|s| !s.secrets.is_empty())
        .collect();
    if stacks.is_empty() {
        return Ok(Outcome::Skipped("no stack declares secrets".into()));
    }
    let mut count = Count::default();
    for s in &stacks {
        let file = s.secrets_file.as_deref().with_context(|| {
            format!(
                "stack {} declares secrets but the manifest names no secrets file",
                s.name
            )
        })?;
        let path = under(ctx.root, file);
        let existing = read_optional(&path)?
            .map(|t| parse_env_file(&t))
            .unwrap_or_default();
        let values = resolve(s, &existing, ctx.seed, &mut count);
        if values != existing {
            let text = env_file(values.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            atomic_write(&path, text.as_bytes(), 0o600)
                .with_context(|| format!("writing the secrets of stack {}", s.name))?;
        }
    }
    Ok(Outcome::Done(format!(
        "{} secrets of {} stacks: {} generated, {} from the seed, {} kept",
        count.generated + count.seeded + count.kept,
        stacks.len(),
        count.generated,
        count.seeded,
        count.kept
    )))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub generated: usize,
    pub seeded: usize,
    pub kept: usize,
}

/// The value of each of the stack's secrets: kept, from the seed, or new.
pub fn resolve(
    s: &StackEntry,
    existing: &BTreeMap<String, String>,
    seed: &crate::seed::Seed,
    count: &mut Count,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in &s.secrets {
        let value = if let Some(v) = existing.get(name) {
            count.kept += 1;
            v.clone()
        } else if let Some(v) = seed.stack_secrets.get(name) {
            count.seeded += 1;
            v.expose().to_owned()
        } else {
            count.generated += 1;
            generate()
        };
        out.insert(name.clone(), value);
    }
    out
}

/// A new random secret from the kernel's generator.
pub fn generate() -> String {
    let mut bytes = [0u8; GENERATED_BYTES];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{AuthKey, Seed};

    fn stack() -> StackEntry {
        StackEntry {
            name: "db".into(),
            compose: "/etc/nodeforge/stacks/db/compose.yaml".into(),
            env_file: None,
            secrets: vec!["A".into(), "B".into(), "C".into()],
            secrets_file: Some(crate::stacks::secrets_file("db")),
            health_timeout_secs: 10,
            images: vec![],
            probes: vec![],
        }
    }

    #[test]
    fn kept_then_seeded_then_generated() {
        let existing = BTreeMap::from([("A".to_owned(), "old".to_owned())]);
        let seed = Seed {
            stack_secrets: BTreeMap::from([
                ("A".to_owned(), AuthKey::new("ignored")),
                ("B".to_owned(), AuthKey::new("from-seed")),
            ]),
            ..Seed::default()
        };
        let mut count = Count::default();
        let v = resolve(&stack(), &existing, &seed, &mut count);
        assert_eq!(v["A"], "old");
        assert_eq!(v["B"], "from-seed");
        assert_eq!(v["C"].len(), 2 * GENERATED_BYTES);
        assert!(v["C"].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            count,
            Count {
                generated: 1,
                seeded: 1,
                kept: 1
            }
        );
        assert_ne!(generate(), generate());
    }
}
