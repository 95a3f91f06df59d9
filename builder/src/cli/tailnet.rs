//! `nodeforge tailnet …`: arguments and what they run.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::fsutil;
use crate::tailnet::api::{KeyRequest, OAuthClient, DEFAULT_API};

/// Where the OAuth client's secret may come from besides a file.
pub const SECRET_ENV: &str = "TS_OAUTH_CLIENT_SECRET";
pub const CLIENT_ID_ENV: &str = "TS_OAUTH_CLIENT_ID";

#[derive(Debug, Subcommand)]
pub enum TailnetCommand {
    /// Write the tailnet policy file (tagOwners and ACLs) from the profiles'
    /// [tailscale] tables.
    Policy {
        /// Profile files or directories of them.
        #[arg(default_value = "profiles")]
        paths: Vec<PathBuf>,
        /// Write the policy here (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Mint a tagged, pre-approved, single-use auth key for a role through
    /// the Tailscale API with an OAuth client, or --revoke one.
    MintKey(MintKeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct MintKeyArgs {
    /// The role (profile name or role) whose tags the key carries.
    #[arg(required_unless_present = "revoke")]
    pub role: Option<String>,
    /// Where the role profiles are.
    #[arg(long, default_value = "profiles")]
    pub profiles: PathBuf,
    /// How long the key can be used to join (e.g. 1h, 7d; at most 90d).
    #[arg(long, default_value = "1h")]
    pub expiry: String,
    /// The OAuth client's ID (default: $TS_OAUTH_CLIENT_ID).
    #[arg(long)]
    pub oauth_client_id: Option<String>,
    /// File holding the OAuth client's secret (default: $TS_OAUTH_CLIENT_SECRET).
    #[arg(long)]
    pub oauth_secret_file: Option<PathBuf>,
    /// Tailscale's API (another URL only for tests against a local server).
    #[arg(long, default_value = DEFAULT_API)]
    pub api: String,
    /// Write the key to this file (mode 0600), or `-` for standard output.
    #[arg(long, short, conflicts_with = "revoke")]
    pub output: Option<PathBuf>,
    /// Delete the auth key with this ID instead of minting one.
    #[arg(long, value_name = "KEY_ID")]
    pub revoke: Option<String>,
    /// Re-flashing the machine HOSTNAME: remove its stale, offline device
    /// from the tailnet first, so the new node gets the name back instead
    /// of HOSTNAME-1 (the OAuth client also needs the devices scope).
    #[arg(long, value_name = "HOSTNAME", conflicts_with = "revoke")]
    pub replace: Option<String>,
}

pub fn run(cmd: TailnetCommand) -> Result<()> {
    match cmd {
        TailnetCommand::Policy { paths, output } => {
            let text = crate::tailnet::write_policy(&paths, output.as_deref())?;
            match output {
                Some(out) => eprintln!("wrote the tailnet policy to {}", out.display()),
                None => print!("{text}"),
            }
            Ok(())
        }
        TailnetCommand::MintKey(args) => mint_key(args),
    }
}

fn mint_key(args: MintKeyArgs) -> Result<()> {
    // Decide where the key goes before it exists.
    if args.revoke.is_none() && args.output.is_none() {
        bail!(
            "say where the key goes: -o FILE (written with mode 0600), or -o - for standard output"
        );
    }
    let client_id = match args.oauth_client_id.clone() {
        Some(id) => id,
        None => std::env::var(CLIENT_ID_ENV).map_err(|_| {
            anyhow::anyhow!("no OAuth client ID: give --oauth-client-id or set {CLIENT_ID_ENV}")
        })?,
    };
    let secret = read_secret(args.oauth_secret_file.as_deref())?;
    let client = OAuthClient::new(&args.api, &client_id, &secret)?;
    if let Some(id) = &args.revoke {
        client.revoke_key(id)?;
        eprintln!("revoked auth key {id}");
        return Ok(());
    }
    let role = args.role.as_deref().unwrap_or_default();
    let profiles = crate::tailnet::load_profiles(std::slice::from_ref(&args.profiles))?;
    let profile = crate::tailnet::find_role(&profiles, role)?;
    let tags = crate::tailnet::role_tags(profile)?;
    let expiry = crate::cache::parse_duration(&args.expiry)?;
    if let Some(host) = &args.replace {
        let removed = client.remove_stale_devices(host)?;
        match removed.as_slice() {
            [] => eprintln!("no device named {host} on the tailnet: nothing to replace"),
            devices => {
                for d in devices {
                    eprintln!(
                        "removed the stale device {} ({}) from the tailnet",
                        d.tailnet_name(),
                        d.id
                    );
                }
            }
        }
    }
    let key = client.mint_key(&KeyRequest {
        tags: tags.clone(),
        expiry,
        description: format!("nodeforge {}", profile.name),
    })?;
    let out = args.output.expect("checked above");
    if out.as_os_str() == "-" {
        println!("{}", key.key);
    } else {
        write_secret(&out, format!("{}\n", key.key).as_bytes())?;
    }
    eprintln!(
        "minted auth key {} for role {} (tags {}; single use, pre-approved; expires {}){}; revoke it with `nodeforge tailnet mint-key --revoke {}`",
        key.id,
        profile.name,
        tags.join(","),
        key.expires.as_deref().unwrap_or("as asked"),
        if out.as_os_str() == "-" {
            String::new()
        } else {
            format!(" into {}", out.display())
        },
        key.id
    );
    Ok(())
}

/// The OAuth secret from a file, else the environment: never from argv,
/// where other users' `ps` would see it.
fn read_secret(file: Option<&Path>) -> Result<String> {
    let secret = match file {
        Some(f) => fs::read_to_string(f)
            .with_context(|| format!("reading the OAuth client secret from {}", f.display()))?,
        None => std::env::var(SECRET_ENV).map_err(|_| {
            anyhow::anyhow!(
                "no OAuth client secret: give --oauth-secret-file FILE or set {SECRET_ENV}"
            )
        })?,
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        bail!(
            "the OAuth client secret is empty ({})",
            file.map(|f| f.display().to_string())
                .unwrap_or_else(|| SECRET_ENV.into())
        );
    }
    Ok(secret)
}

/// Writes a secret atomically, readable by its owner only from the start.
fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = fsutil::partial_path(path);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f.write_all(data).and_then(|_| f.sync_all());
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    fsutil::commit_partial(&tmp, path)
}
