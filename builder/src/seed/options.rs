//! The seed described by values from the command line or the fleet file:
//! files are read here (SSH keys, the auth key, stack secrets), so a
//! secret never has to appear on a command line.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeforge_firstboot::seed::{AuthKey, Seed};

/// The seed described by command-line or fleet-file values.
#[derive(Debug, Default, Clone)]
pub struct SeedOptions {
    pub hostname: Option<String>,
    pub authkey_file: Option<PathBuf>,
    pub ssh_keys: Vec<String>,
    pub tags: Vec<String>,
    /// Stack secrets by name, each read from a file (never given inline).
    pub stack_secret_files: Vec<(String, PathBuf)>,
    /// Where the node's backups go, over its image's repository.
    pub backup_repository: Option<String>,
}

impl SeedOptions {
    pub fn to_seed(&self) -> Result<Seed> {
        let mut keys = Vec::new();
        for k in &self.ssh_keys {
            // A path to a .pub file, or the key line itself.
            let line = if Path::new(k).is_file() {
                std::fs::read_to_string(k)
                    .with_context(|| format!("reading SSH key {k}"))?
                    .trim()
                    .to_owned()
            } else {
                k.trim().to_owned()
            };
            keys.push(line);
        }
        let seed = Seed {
            hostname: self.hostname.clone(),
            tailscale_auth_key: self
                .authkey_file
                .as_deref()
                .map(read_auth_key)
                .transpose()?,
            tailscale_tags: self.tags.clone(),
            ssh_authorized_keys: keys,
            stack_secrets: self
                .stack_secret_files
                .iter()
                .map(|(name, file)| Ok((name.clone(), read_stack_secret(name, file)?)))
                .collect::<Result<_>>()?,
            backup_repository: self.backup_repository.clone(),
        };
        seed.validate()?;
        Ok(seed)
    }
}

/// Reads an auth key from a file, or from standard input for `-`; never
/// from the command line, where other users and shell history see it.
pub fn read_auth_key(source: &Path) -> Result<AuthKey> {
    if source == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the auth key from standard input")?;
        let key = text.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            bail!("standard input must hold one auth key on one line");
        }
        return Ok(AuthKey::new(key));
    }
    Ok(AuthKey::from_file(source)?)
}

/// Reads a stack secret's value from a file: one line, trailing newline
/// trimmed. Errors name the secret and the file, never the value.
fn read_stack_secret(name: &str, file: &Path) -> Result<AuthKey> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading stack secret {name} from {}", file.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    nodeforge_firstboot::seed::validate_secret(name, value)
        .map_err(|e| anyhow::anyhow!("{e} (in {})", file.display()))?;
    Ok(AuthKey::new(value))
}
