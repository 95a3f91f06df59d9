//! The `[tailscale]` table: the role's tags, and the tailnet access rules
//! the policy file is generated from.

use toml::Spanned;

use super::error::ProfileError;
use super::file::TailscaleFile;
use super::validate::{self, FileCtx};
use super::{TailnetAccept, TailnetAllow, Tailscale};

/// Owner of a role's tags when the profile names none: the tailnet's admins,
/// as the seed's policy has it.
pub const DEFAULT_OWNER: &str = "autogroup:admin";
/// `accept.from` value meaning the tags of the other roles of this role's
/// fleet.
pub const FLEET: &str = "fleet";

pub fn tailscale(
    ctx: &FileCtx,
    t: &TailscaleFile,
    default_timeout: u64,
    errors: &mut Vec<ProfileError>,
) -> Tailscale {
    let mut tags = Vec::new();
    for tag in &t.tags {
        match validate::tailscale_tag(tag.get_ref()) {
            Ok(()) => tags.push(tag.get_ref().clone()),
            Err(msg) => errors.push(ctx.error_at(tag, msg)),
        }
    }
    let owners = match &t.owners {
        None => vec![DEFAULT_OWNER.to_owned()],
        Some(list) => {
            if list.is_empty() && !t.tags.is_empty() {
                errors.push(ProfileError::whole_file(
                    &ctx.path,
                    "[tailscale] owners is empty: nobody could apply the role's tags (omit it for autogroup:admin)",
                ));
            }
            list.iter()
                .filter_map(|o| match owner(o.get_ref()) {
                    Ok(()) => Some(o.get_ref().clone()),
                    Err(msg) => {
                        errors.push(ctx.error_at(o, msg));
                        None
                    }
                })
                .collect()
        }
    };
    let fleet = t.fleet.as_ref().and_then(|f| {
        let v = f.get_ref();
        let ok = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Some(v.clone())
        } else {
            errors.push(ctx.error_at(
                f,
                format!("fleet `{v}` must be lowercase letters, digits and hyphens"),
            ));
            None
        }
    });
    let allow = t
        .allow
        .iter()
        .filter_map(|a| {
            let to = a.to.get_ref();
            if to != "*" {
                if let Err(msg) = validate::tailscale_tag(to) {
                    errors.push(ctx.error_at(&a.to, format!("allow.to: {msg}, or `*`")));
                    return None;
                }
            }
            Some(TailnetAllow {
                to: to.clone(),
                ports: ports(ctx, &a.ports, errors)?,
            })
        })
        .collect();
    let accept = t
        .accept
        .iter()
        .filter_map(|a| {
            let from = a.from.get_ref();
            if from != "*" && from != FLEET {
                if let Err(msg) = validate::tailscale_tag(from) {
                    errors.push(ctx.error_at(
                        &a.from,
                        format!("accept.from: {msg}, `*` (anyone) or `fleet` (every other role)"),
                    ));
                    return None;
                }
            }
            Some(TailnetAccept {
                from: from.clone(),
                ports: ports(ctx, &a.ports, errors)?,
            })
        })
        .collect();
    if !t.accept.is_empty() && t.tags.is_empty() {
        errors.push(ProfileError::whole_file(
            &ctx.path,
            "[[tailscale.accept]] needs the role's tags: add [tailscale] tags = [\"tag:<role>\"]",
        ));
    }
    Tailscale {
        tags,
        timeout_secs: t.timeout_secs.unwrap_or(default_timeout),
        owners,
        fleet,
        allow,
        accept,
    }
}

/// Ports, sorted and without repeats; port 0 is refused (it means nothing
/// to a firewall rule).
fn ports(ctx: &FileCtx, list: &[Spanned<u16>], errors: &mut Vec<ProfileError>) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for p in list {
        if *p.get_ref() == 0 {
            errors.push(ctx.error_at(
                p,
                "port 0 is not a port: use 1–65535 (omit `ports` for all)",
            ));
            return None;
        }
        out.push(*p.get_ref());
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// A tag owner as Tailscale's policy accepts it.
fn owner(o: &str) -> Result<(), String> {
    let named = |prefix: &str| {
        o.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    let email = o
        .split_once('@')
        .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty() && !o.contains(char::is_whitespace));
    if named("autogroup:") || named("group:") || named("tag:") || email {
        Ok(())
    } else {
        Err(format!(
            "tag owner `{o}` must be autogroup:NAME, group:NAME, tag:NAME or a user's email"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert!(owner("autogroup:admin").is_ok());
        assert!(owner("group:ops").is_ok());
        assert!(owner("alice@example.com").is_ok());
        assert!(owner("admin").is_err());
        assert!(owner("group:").is_err());
    }
}
