//! Keeping Tailscale auth keys out of text bound for the console, the
//! journal or status.json. Both the seed loader and the agent use it, so it
//! lives apart from either.

use crate::seed::schema::TSKEY_PREFIX;

/// What stands where a key was.
pub const REDACTED: &str = "<redacted>";

/// Removes auth keys from text (a TOML parse error, for one, quotes the
/// offending line): `key` wherever it occurs, and anything that looks like
/// a Tailscale key.
pub fn redact(text: &str, key: Option<&str>) -> String {
    let mut out = match key {
        Some(k) if !k.is_empty() => text.replace(k, REDACTED),
        _ => text.to_string(),
    };
    while let Some(i) = out.find(TSKEY_PREFIX) {
        let end = out[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map_or(out.len(), |n| i + n);
        out.replace_range(i..end, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_keys() {
        assert_eq!(
            redact(
                "line 2: tailscale_auth_key = \"tskey-auth-kX_1\" nope",
                None
            ),
            "line 2: tailscale_auth_key = \"<redacted>\" nope"
        );
        assert_eq!(
            redact("secret abc123 here", Some("abc123")),
            "secret <redacted> here"
        );
    }
}
