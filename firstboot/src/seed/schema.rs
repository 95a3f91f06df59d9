//! The per-node seed (`nodeforge-seed.toml`): what makes one machine of a
//! role image differ from the next. `nodeforge customize`/`flash`/`serve`
//! write it with [`Seed::to_toml`]; the agent reads it with
//! [`Seed::from_toml`], so both sides share one strict schema.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the seed on the boot/ESP FAT partition.
pub const SEED_FILE_NAME: &str = "nodeforge-seed.toml";

/// Kernel command-line parameter naming a seed URL (netboot):
/// `nodeforge.seed=http://10.0.0.1:8080/seeds/node-3.toml`.
pub const SEED_CMDLINE_PARAM: &str = "nodeforge.seed";

/// Every Tailscale auth key starts with this; the scrub step searches for it.
pub const TSKEY_PREFIX: &str = "tskey-";

/// A Tailscale auth key. Its `Debug` and `Display` never show the value, so
/// it cannot leak through `{:?}` in a log line or an error.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthKey(String);

impl AuthKey {
    pub fn new(key: impl Into<String>) -> Self {
        AuthKey(key.into())
    }

    /// The key itself: only for writing it to the `/run` key file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a key from a file (`nodeforge customize --authkey-file F`),
    /// trimming the trailing newline editors add. Errors name the file,
    /// never the content.
    pub fn from_file(path: &Path) -> Result<AuthKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        let key = text.trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(KeyFileError::NotOneLine {
                path: path.to_owned(),
            });
        }
        Ok(AuthKey(key.to_string()))
    }
}

/// Why [`AuthKey::from_file`] found no key. The message is whole in
/// `Display` (the builder reports it with `{}`), and never holds the file's
/// content.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading auth key file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("auth key file {} must hold one key on one line", path.display())]
    NotOneLine { path: PathBuf },
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl fmt::Display for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Per-node settings. Every field is optional: an absent seed means "use
/// the baked config as is".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Overrides the baked hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// One-off Tailscale auth key; scrubbed after a successful join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale_auth_key: Option<AuthKey>,
    /// Extra tags advertised besides the role's baked ones (`tag:lab`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tailscale_tags: Vec<String>,
    /// Extra OpenSSH public keys for the image's admin user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Values for the secrets the image's stacks declare, by name
    /// (`POSTGRES_PASSWORD = "…"`); a declared secret not given here is
    /// generated at first boot. Scrubbed with the auth key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stack_secrets: std::collections::BTreeMap<String, AuthKey>,
    /// The restic repository this node's backups go to, over the image's
    /// own (`vars.backup_repository` of overlays/backup): a path on the
    /// node or any repository restic takes (`s3:https://host/bucket`,
    /// `sftp:user@host:/path`, `rest:https://host/`). Not a secret: its
    /// credentials are stack secrets (`AWS_ACCESS_KEY_ID` …), never part
    /// of the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_repository: Option<String>,
}

/// Why a seed (or one of its values) was refused. Each message is whole in
/// `Display` and names the field, never a secret's value: the builder
/// reports these with `{}`, the agent puts them on the console.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("hostname {0:?} is not a valid RFC 1123 host name")]
    Hostname(String),
    #[error("tailscale_auth_key is empty or contains whitespace")]
    AuthKeyShape,
    #[error("tag {0:?} is not of the form tag:name")]
    Tag(String),
    #[error("ssh_authorized_keys[{index}] is not an OpenSSH public key: {error}")]
    SshKey { index: usize, error: ssh_key::Error },
    #[error("stack secret name {0:?} is not valid: letters, digits and `_`")]
    SecretName(String),
    #[error("stack secret {0} must be one non-empty line without `'`")]
    SecretValue(String),
    #[error("backup_repository {0:?} is {1}")]
    BackupRepository(String, &'static str),
}

impl Seed {
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("Seed always serialises")
    }

    /// Parses and validates a seed; unknown keys are refused.
    pub fn from_toml(text: &str) -> Result<Self, SeedError> {
        let seed: Seed = toml::from_str(text)?;
        seed.validate()?;
        Ok(seed)
    }

    /// Checks values the schema alone cannot: hostname syntax, tag syntax,
    /// key shape and that every SSH key parses.
    pub fn validate(&self) -> Result<(), SeedError> {
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if let Some(k) = &self.tailscale_auth_key {
            let k = k.expose();
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(SeedError::AuthKeyShape);
            }
        }
        for t in &self.tailscale_tags {
            validate_tag(t)?;
        }
        for (i, k) in self.ssh_authorized_keys.iter().enumerate() {
            ssh_key::PublicKey::from_openssh(k.trim())
                .map_err(|error| SeedError::SshKey { index: i, error })?;
        }
        for (name, v) in &self.stack_secrets {
            validate_secret(name, v.expose())?;
        }
        if let Some(r) = &self.backup_repository {
            validate_backup_repository(r)?;
        }
        Ok(())
    }

    /// Whether the seed holds anything the scrub step must remove.
    pub fn has_secrets(&self) -> bool {
        self.tailscale_auth_key.is_some() || !self.stack_secrets.is_empty()
    }

    /// The same seed with the auth key removed: what the scrub step writes
    /// back to the boot partition.
    pub fn without_secrets(&self) -> Seed {
        Seed {
            tailscale_auth_key: None,
            stack_secrets: Default::default(),
            ..self.clone()
        }
    }
}

/// A stack secret: an environment name, and a value of one line without
/// `'` (it is written single-quoted to the stack's secrets file). The
/// message names the secret, never the value.
pub fn validate_secret(name: &str, value: &str) -> Result<(), SeedError> {
    let name_ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(SeedError::SecretName(name.to_owned()));
    }
    if value.is_empty() || value.contains(['\n', '\r', '\'']) {
        return Err(SeedError::SecretValue(name.to_owned()));
    }
    Ok(())
}

/// restic's repository back ends (restic docs, "Preparing a new
/// repository"; checked 0.18): `<backend>:<location>`, or a local path.
const RESTIC_BACKENDS: &[&str] = &[
    "local", "sftp", "rest", "s3", "swift", "b2", "azure", "gs", "rclone",
];

/// A restic repository a seed may name: an absolute path or one of
/// restic's back ends, on one line, with no password in it (restic reads
/// credentials from its environment: the stack secrets). The message
/// shows the value, which is no secret (a password found in it is not
/// shown).
pub fn validate_backup_repository(r: &str) -> Result<(), SeedError> {
    let bad = |why| Err(SeedError::BackupRepository(r.to_owned(), why));
    if r.is_empty() || r.chars().any(char::is_control) || r.contains('\'') {
        return bad("not one line without `'`");
    }
    if r.starts_with('/') {
        return Ok(());
    }
    let backend = r.split_once(':').map(|(b, _)| b).unwrap_or("");
    if !RESTIC_BACKENDS.contains(&backend) {
        return bad("neither an absolute path nor a restic repository \
             (local:, sftp:, rest:, s3:, swift:, b2:, azure:, gs:, rclone:)");
    }
    // `scheme://user:password@host`: a password in the URL would sit on
    // the boot partition and in the node's files.
    if let Some((_, rest)) = r.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, host)) = authority.split_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                // The message shows the URL without the password.
                let shown = r.replacen(authority, &format!("{user}:***@{host}"), 1);
                return Err(SeedError::BackupRepository(
                    shown,
                    "holding a password: give it as a stack secret instead \
                     (AWS_SECRET_ACCESS_KEY for s3:, RESTIC_REST_PASSWORD for rest:)",
                ));
            }
        }
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner
/// hyphens, each 1–63 bytes, 253 in all.
pub fn validate_hostname(h: &str) -> Result<(), SeedError> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(ok_label) {
        return Err(SeedError::Hostname(h.to_owned()));
    }
    Ok(())
}

/// Tailscale ACL tags look like `tag:name`.
pub fn validate_tag(t: &str) -> Result<(), SeedError> {
    let name = t.strip_prefix("tag:").unwrap_or("");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SeedError::Tag(t.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB5x0h6BmBYe0EPuN1jwai2AarDy4K6IzzJPhqhT+PKp ops@lab";

    fn full() -> Seed {
        Seed {
            hostname: Some("media-3".into()),
            tailscale_auth_key: Some(AuthKey::new("tskey-auth-abc123")),
            tailscale_tags: vec!["tag:lab".into()],
            ssh_authorized_keys: vec![KEY.into()],
            stack_secrets: Default::default(),
            backup_repository: None,
        }
    }

    #[test]
    fn backup_repositories_are_paths_or_restic_back_ends_without_passwords() {
        for ok in [
            "/srv/backups/restic",
            "s3:http://datacore.tail79107c.ts.net:9000/backups",
            "sftp:backup@nas:/srv/restic",
            "rest:https://backup@rest.example:8000/node",
            "local:/mnt/usb/restic",
        ] {
            validate_backup_repository(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = validate_backup_repository("rest:https://user:hunter2@host:8000/")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("user:***@host:8000"),
            "{e}"
        );
        for (bad, says) in [
            ("", "one line"),
            ("srv/backups", "neither an absolute path"),
            ("ftp:host/x", "neither an absolute path"),
            ("/srv/a\nb", "one line"),
            ("/srv/it's", "one line"),
            ("rest:https://user:hunter2@host:8000/", "holding a password"),
        ] {
            let e = validate_backup_repository(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let seed = Seed {
            backup_repository: Some("srv/backups".into()),
            ..Seed::default()
        };
        assert!(matches!(
            seed.validate(),
            Err(SeedError::BackupRepository(..))
        ));
    }

    #[test]
    fn round_trips() {
        let s = full();
        assert_eq!(Seed::from_toml(&s.to_toml()).unwrap(), s);
        assert_eq!(Seed::from_toml("").unwrap(), Seed::default());
        // What an operator finds on the boot partition.
        assert_eq!(
            s.to_toml(),
            format!(
                "hostname = \"media-3\"\ntailscale_auth_key = \"tskey-auth-abc123\"\ntailscale_tags = [\"tag:lab\"]\nssh_authorized_keys = [\"{KEY}\"]\n"
            )
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Seed::from_toml("hostname = 'a'\nauthkey = 'x'\n").unwrap_err();
        assert!(e.to_string().contains("authkey"), "{e}");
        let e = Seed::from_toml("hostname = 'bad_name'\n").unwrap_err();
        assert!(e.to_string().contains("bad_name"), "{e}");
        let e = Seed::from_toml("ssh_authorized_keys = ['ssh-ed25519 nope']\n").unwrap_err();
        assert!(e.to_string().contains("ssh_authorized_keys[0]"), "{e}");
        let e = Seed::from_toml("tailscale_tags = ['lab']\n").unwrap_err();
        assert!(e.to_string().contains("tag:name"), "{e}");
    }

    #[test]
    fn debug_and_without_secrets_hide_the_key() {
        let s = full();
        assert!(!format!("{s:?}").contains("tskey-auth"));
        let clean = s.without_secrets().to_toml();
        assert!(!clean.contains("tskey"), "{clean}");
        assert!(clean.contains("media-3"));
    }

    #[test]
    fn stack_secrets_are_validated_hidden_and_scrubbed() {
        let s = Seed::from_toml("[stack_secrets]\nPOSTGRES_PASSWORD = \"s3cr3t-value\"\n").unwrap();
        assert_eq!(
            s.stack_secrets["POSTGRES_PASSWORD"].expose(),
            "s3cr3t-value"
        );
        assert!(s.has_secrets());
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(!s.without_secrets().to_toml().contains("s3cr3t"));
        assert!(!s.without_secrets().has_secrets());
        let e = Seed::from_toml("[stack_secrets]\nA = \"it's\"\n").unwrap_err();
        assert!(
            e.to_string().contains("stack secret A") && !e.to_string().contains("it's"),
            "{e}"
        );
        let e = Seed::from_toml("[stack_secrets]\n\"a-b\" = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("a-b"), "{e}");
    }

    #[test]
    fn auth_key_from_file() {
        let (dir, p) = crate::testutil::scratch_path("key");
        std::fs::write(&p, "tskey-auth-abc\n").unwrap();
        assert_eq!(AuthKey::from_file(&p).unwrap().expose(), "tskey-auth-abc");
        std::fs::write(&p, "tskey-a\ntskey-b\n").unwrap();
        let e = AuthKey::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("one key") && !e.contains("tskey-a"), "{e}");
        let missing = dir.path().join("nope");
        let e = AuthKey::from_file(&missing).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("reading auth key file {}: ", missing.display())),
            "{e}"
        );
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("a-1.example").is_ok());
        for bad in ["", "-a", "a-", "a..b", "a b", &"x".repeat(64)] {
            let e = validate_hostname(bad).unwrap_err();
            assert!(matches!(&e, SeedError::Hostname(h) if h == bad), "{e:?}");
            assert!(
                e.to_string().contains("not a valid RFC 1123 host name"),
                "{e}"
            );
        }
    }
}
