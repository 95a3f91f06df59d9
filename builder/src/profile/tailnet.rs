//! The `[tailscale]` table: the role's tags, and the tailnet access rules
//! the policy file is generated from; and `[tailnet]`, the fleet's
//! settings.

use std::net::IpAddr;

use toml::Spanned;

use super::error::ProfileError;
use super::file::{TailnetFile, TailscaleFile};
use super::validate::{self, FileCtx, Invalid};
use super::{Tailnet, TailnetAccept, TailnetAllow, Tailscale};

/// Merges a file's `[tailnet]` over what the files before it set.
pub fn settings(
    ctx: &FileCtx,
    t: &TailnetFile,
    into: &mut Tailnet,
    errors: &mut Vec<ProfileError>,
) {
    if let Some(d) = &t.domain {
        if let Some(d) = ctx.checked(d, domain, errors) {
            into.domain = Some(d);
            into.declared_in = Some(ctx.path.clone());
        }
    }
    if let Some(g) = &t.gateway {
        if g.get_ref().is_empty() {
            errors.push(ctx.error_at(g, "[tailnet] gateway names a role, e.g. \"core\""));
        } else {
            into.gateway = Some(g.get_ref().clone());
        }
    }
    if let Some(v) = t.accept_routes {
        into.accept_routes = v;
    }
    if let Some(v) = t.ssh {
        into.ssh = v;
    }
    for (role, list) in &t.routes {
        let mut subnets = Vec::new();
        for r in list {
            match subnet(r.get_ref()) {
                Ok(()) => subnets.push(r.get_ref().clone()),
                Err(msg) => errors.push(ctx.error_at(r, format!("[tailnet.routes] {role}: {msg}"))),
            }
        }
        into.routes.insert(role.clone(), subnets);
    }
}

/// A MagicDNS suffix: lowercase DNS labels, at least two.
fn domain(d: &str) -> Result<(), Invalid> {
    let labels: Vec<&str> = d.split('.').collect();
    let ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "tailnet domain `{d}` is not a DNS name (lowercase labels joined by dots, e.g. tail1234.ts.net; \
             the admin console's DNS page shows it)"
        )))
    }
}

/// A subnet route as `tailscale up --advertise-routes` takes it: an
/// address with a prefix length and no host bits set.
pub(super) fn subnet(s: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        Err(Invalid(format!(
            "route `{s}` {why} (write a network such as 192.168.1.0/24)"
        )))
    };
    let Some((addr, len)) = s.split_once('/') else {
        return bad("has no prefix length");
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return bad("does not start with an IP address");
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let Ok(len) = len.parse::<u32>() else {
        return bad("has a prefix length that is not a number");
    };
    if len > max {
        return bad("has a prefix length longer than the address");
    }
    let host_bits = match addr {
        IpAddr::V4(a) => u32::from(a).checked_shl(len).unwrap_or(0) != 0,
        IpAddr::V6(a) => u128::from(a).checked_shl(len).unwrap_or(0) != 0,
    };
    if host_bits {
        return bad("has host bits set");
    }
    Ok(())
}

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
    let tags = t
        .tags
        .iter()
        .filter_map(|tag| ctx.checked(tag, validate::tailscale_tag, errors))
        .collect();
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
                .filter_map(|o| ctx.checked(o, owner, errors))
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
fn owner(o: &str) -> Result<(), Invalid> {
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
        Err(Invalid(format!(
            "tag owner `{o}` must be autogroup:NAME, group:NAME, tag:NAME or a user's email"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::validate::{accepts, why};

    #[test]
    fn subnets() {
        accepts(subnet, &["192.168.1.0/24", "10.0.0.0/8", "fd00::/64"]);
        for (bad, says) in [
            ("192.168.1.1/24", "has host bits set"),
            ("192.168.1.0", "has no prefix length"),
            (
                "192.168.1.0/33",
                "has a prefix length longer than the address",
            ),
            ("lan/24", "does not start with an IP address"),
        ] {
            let e = why(subnet(bad));
            assert!(e.starts_with(&format!("route `{bad}` {says} (")), "{e}");
        }
    }

    #[test]
    fn domains() {
        accepts(domain, &["tail79107c.ts.net", "ts.net"]);
        for bad in ["localhost", "Tail.ts.net", "a..net"] {
            let e = why(domain(bad));
            assert!(e.contains(&format!("`{bad}` is not a DNS name")), "{e}");
        }
    }

    #[test]
    fn owners() {
        accepts(
            owner,
            &["autogroup:admin", "group:ops", "alice@example.com"],
        );
        for bad in ["admin", "group:"] {
            let e = why(owner(bad));
            assert!(e.contains(&format!("tag owner `{bad}` must be")), "{e}");
        }
    }
}
