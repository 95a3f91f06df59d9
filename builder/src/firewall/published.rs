//! Which ports a profile's stacks publish beyond loopback, read from the
//! rendered compose files, and whether the profile says the LAN may reach
//! them (`nodeforge check`).
//!
//! Port syntax checked against the Compose Specification (services.ports,
//! short and long syntax; docker compose v2.32, 2026-12): short
//! `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTOCOL]`, an IPv6
//! host address in brackets; long `{target, published, host_ip, protocol}`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::profile::{Firewall, Profile};

/// One published port mapping of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub service: String,
    /// None: every address of the host.
    pub host_ip: Option<String>,
    /// The host ports; empty when the engine picks one (`"3000"`).
    pub host_ports: Vec<u16>,
    pub container_port: String,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl Binding {
    fn on_loopback(&self) -> bool {
        self.host_ip
            .as_deref()
            .and_then(parse_ip)
            .is_some_and(|ip| ip.is_loopback())
    }

    /// An address given that is neither every address, loopback, one of
    /// Tailscale's (100.64.0.0/10, fd7a:115c:a1e0::/48) nor on the
    /// engine's default bridge (docker0, 172.17.0.0/16: containers only).
    fn on_a_lan_address(&self) -> bool {
        match self.host_ip.as_deref().and_then(parse_ip) {
            None => false,
            Some(ip) if ip.is_unspecified() || ip.is_loopback() => false,
            Some(IpAddr::V4(v4)) => {
                let [a, b, ..] = v4.octets();
                !((a == 100 && (b & 0xc0) == 64) || (a == 172 && b == 17))
            }
            Some(IpAddr::V6(v6)) => v6.segments()[..3] != [0xfd7a, 0x115c, 0xa1e0],
        }
    }

    fn where_(&self) -> String {
        match &self.host_ip {
            None => "every address".to_owned(),
            Some(ip) if parse_ip(ip).is_some_and(|i| i.is_unspecified()) => {
                "every address".to_owned()
            }
            Some(ip) => ip.clone(),
        }
    }

    fn ports(&self) -> String {
        if self.host_ports.is_empty() {
            format!(
                "a port the engine picks (container port {})",
                self.container_port
            )
        } else {
            let list: Vec<String> = self.host_ports.iter().map(u16::to_string).collect();
            format!("port {}", list.join(", "))
        }
    }
}

/// A host address must be an IP address (compose takes no names there).
fn check_ip(ip: Option<&str>) -> Result<()> {
    match ip {
        Some(ip) if parse_ip(ip).is_none() => bail!("`{ip}` is not an IP address"),
        _ => Ok(()),
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Every port mapping in a rendered compose file, service by service;
/// `${VAR}` in a port is the stack's `env` value, as compose takes it
/// from the stack's `.env`.
pub fn bindings(compose_yaml: &str, env: &BTreeMap<String, String>) -> Result<Vec<Binding>> {
    let doc: Value = serde_yaml_ng::from_str(compose_yaml).context("reading the compose file")?;
    let mut out = Vec::new();
    let Some(services) = doc.get("services").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (name, svc) in services {
        let Some(ports) = svc.get("ports") else {
            continue;
        };
        let ports = ports
            .as_array()
            .ok_or_else(|| anyhow!("service `{name}`: `ports` is not a list"))?;
        for p in ports {
            let p = interpolate_value(p, env).with_context(|| format!("service `{name}`: {p}"))?;
            let b =
                binding(name, &p).with_context(|| format!("service `{name}`: ports entry {p}"))?;
            out.push(b);
        }
    }
    Ok(out)
}

/// A ports entry with `${…}` in its strings (short syntax, or any field
/// of the long one) interpolated.
fn interpolate_value(v: &Value, env: &BTreeMap<String, String>) -> Result<Value> {
    Ok(match v {
        Value::String(s) if s.contains('$') => Value::String(interpolate(s, env)?),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), interpolate_value(v, env)?)))
                .collect::<Result<_>>()?,
        ),
        v => v.clone(),
    })
}

/// Compose's interpolation from `env`: `$VAR`, `${VAR}`, `${VAR:-default}`
/// (also when empty), `${VAR-default}` (only when unset), `${VAR:?err}`,
/// `${VAR?err}`, `${VAR:+alt}`, `${VAR+alt}`; `$$` is a literal `$`.
fn interpolate(s: &str, env: &BTreeMap<String, String>) -> Result<String> {
    let name_end = |t: &str| {
        t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, op, arg, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| anyhow!("`${{` without its `}}` in `{s}`"))?;
            let expr = &braced[..end];
            let n = name_end(expr);
            let modifier = &expr[n..];
            let op = ([":-", ":?", ":+", "-", "?", "+"])
                .into_iter()
                .find(|op| modifier.starts_with(op));
            match op {
                Some(op) => (&expr[..n], op, &modifier[op.len()..], &braced[end + 1..]),
                None if modifier.is_empty() => (expr, "", "", &braced[end + 1..]),
                None => bail!("`${{{expr}}}` in `{s}` is not a variable compose knows"),
            }
        } else {
            let n = name_end(after);
            (&after[..n], "", "", &after[n..])
        };
        let value = env.get(name).map(String::as_str);
        let set_nonempty = value.is_some_and(|v| !v.is_empty());
        let chosen = match op {
            ":-" if !set_nonempty => arg,
            "-" if value.is_none() => arg,
            ":?" if !set_nonempty => bail!("`{name}` is unset or empty: {arg}"),
            "?" if value.is_none() => bail!("`{name}` is unset: {arg}"),
            ":+" => {
                if set_nonempty {
                    arg
                } else {
                    ""
                }
            }
            "+" => {
                if value.is_some() {
                    arg
                } else {
                    ""
                }
            }
            _ => value.ok_or_else(|| {
                anyhow!(
                    "`{name}` is not in the stack's env: give it there, or write the port itself"
                )
            })?,
        };
        out.push_str(chosen);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn binding(service: &str, entry: &Value) -> Result<Binding> {
    match entry {
        Value::Number(n) => Ok(Binding {
            service: service.to_owned(),
            host_ip: None,
            host_ports: Vec::new(),
            container_port: n.to_string(),
            protocol: "tcp".into(),
        }),
        Value::String(s) => short_syntax(service, s),
        Value::Object(o) => {
            let text = |k: &str| match o.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let target = text("target").ok_or_else(|| anyhow!("no `target`"))?;
            let host_ports = match text("published") {
                Some(p) => port_range(&p)?,
                None => Vec::new(),
            };
            let host_ip = text("host_ip").filter(|ip| !ip.is_empty());
            check_ip(host_ip.as_deref())?;
            Ok(Binding {
                service: service.to_owned(),
                host_ip,
                host_ports,
                container_port: target,
                protocol: text("protocol").unwrap_or_else(|| "tcp".into()),
            })
        }
        _ => bail!("not a string, number or mapping"),
    }
}

fn short_syntax(service: &str, s: &str) -> Result<Binding> {
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto.to_owned()),
        None => (s, "tcp".to_owned()),
    };
    // An IPv6 host address comes in brackets: `[::1]:8080:80`.
    let (host_ip, rest) = match spec.strip_prefix('[') {
        Some(r) => {
            let (ip, rest) = r
                .split_once("]:")
                .ok_or_else(|| anyhow!("`{s}`: an IPv6 address needs `]:` after it"))?;
            (Some(ip.to_owned()), rest)
        }
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        // An IPv6 address may also come bare (`::1:6000:6000`, as in the
        // Compose Specification): the last two parts are the ports.
        (None, [ip @ .., h, c]) => (Some(ip.join(":")), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => bail!("`{s}` is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]"),
    };
    let host_ports = match host {
        Some("") | None => Vec::new(),
        Some(h) => port_range(h)?,
    };
    let host_ip = host_ip.filter(|ip| !ip.is_empty());
    check_ip(host_ip.as_deref())?;
    Ok(Binding {
        service: service.to_owned(),
        host_ip,
        host_ports,
        container_port: container.to_owned(),
        protocol,
    })
}

/// `8080` or `5000-5010`.
fn port_range(s: &str) -> Result<Vec<u16>> {
    let port = |p: &str| -> Result<u16> {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("`{p}` is not a port (1 to 65535)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                bail!("`{s}`: the range ends before it starts");
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![port(s)?]),
    }
}

/// Why the profile may not publish `b` as it does, if it may not: without
/// a `[firewall]` a port beyond loopback is open to the LAN; with one, a
/// port bound to a LAN address is meant for the LAN and must be declared.
pub fn refusal(stack: &str, b: &Binding, firewall: Option<&Firewall>) -> Option<String> {
    if b.on_loopback() {
        return None;
    }
    let head = format!(
        "stack `{stack}`, service `{}` publishes {} {} on {}",
        b.service,
        b.protocol,
        b.ports(),
        b.where_()
    );
    let Some(fw) = firewall else {
        return Some(format!(
            "{head}, and the profile has no [firewall], so the LAN reaches it: publish it on \
             127.0.0.1 (\"127.0.0.1:HOST_PORT:CONTAINER_PORT\"), or add a [firewall] saying what \
             the LAN may reach (profiles/node.toml has one)"
        ));
    };
    if !b.on_a_lan_address() {
        return None;
    }
    let declared = match b.protocol.as_str() {
        "udp" => &fw.lan_udp,
        _ => &fw.lan_tcp,
    };
    let undeclared: Vec<String> = b
        .host_ports
        .iter()
        .filter(|p| !declared.contains(p))
        .map(u16::to_string)
        .collect();
    if b.host_ports.is_empty() || !undeclared.is_empty() {
        return Some(format!(
            "{head}, a LAN address, but [firewall] lan_{} does not declare {}: add it there, or \
             publish it on every address for the tailnet only",
            b.protocol,
            if undeclared.is_empty() {
                "a port the engine picks".to_owned()
            } else {
                undeclared.join(", ")
            }
        ));
    }
    None
}

/// Every refusal for the profile's stacks, their compose templates
/// rendered as the build renders them.
pub fn check_profile(profile: &Profile) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for st in &profile.stacks {
        let tags = st.images.iter().map(|r| (r.as_str(), r.as_str())).collect();
        let text = crate::build::containers::render_compose(profile, st, &tags)?;
        let bs = bindings(&text, &st.env)
            .with_context(|| format!("stack `{}` ({})", st.name, st.compose.display()))?;
        out.extend(
            bs.iter()
                .filter_map(|b| refusal(&st.name, b, profile.firewall.as_ref())),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(yaml_port: &str) -> Binding {
        let doc = format!("services:\n  web:\n    ports:\n      - {yaml_port}\n");
        let env = BTreeMap::from([("WEB_PORT".to_owned(), "8080".to_owned())]);
        let mut b = bindings(&doc, &env).unwrap();
        assert_eq!(b.len(), 1);
        b.remove(0)
    }

    fn fw() -> Firewall {
        Firewall {
            lan_tcp: vec![22, 53],
            lan_udp: vec![53],
        }
    }

    #[test]
    fn short_and_long_syntax_are_read() {
        let b = one("\"127.0.0.1:9001:9001\"");
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b.host_ports, vec![9001]);
        let b = one("\"53:53/udp\"");
        assert_eq!((b.host_ip, b.protocol.as_str()), (None, "udp"));
        let b = one("\"[::1]:8080:80\"");
        assert_eq!(b.host_ip.as_deref(), Some("::1"));
        assert!(b.on_loopback());
        let b = one("3000");
        assert!(b.host_ports.is_empty());
        let b = one("\"5000-5002:5000-5002\"");
        assert_eq!(b.host_ports, vec![5000, 5001, 5002]);
        let b = one("{ target: 80, published: \"8080\", host_ip: 192.168.1.5, protocol: tcp }");
        assert_eq!(b.host_ports, vec![8080]);
        assert!(b.on_a_lan_address());
        let b = one("\"${WEB_PORT}:8080\"");
        assert_eq!(b.host_ports, vec![8080]);
        let b = one("\"127.0.0.1:${MISSING:-9000}:9000\"");
        assert_eq!(b.host_ports, vec![9000]);
        let b = one("\"${WEB_PORT:?set WEB_PORT}:80\"");
        assert_eq!(b.host_ports, vec![8080]);
        let b = one("\"::1:6000:6000\"");
        assert_eq!(b.host_ip.as_deref(), Some("::1"));
        assert_eq!(b.host_ports, vec![6000]);
        assert!(b.on_loopback());
        let b = one("\"127.0.0.1::80\"");
        assert!(b.host_ports.is_empty() && b.on_loopback());
        let b =
            one("{ target: 80, published: \"${WEB_PORT}\", host_ip: \"${LAN_IP:-192.168.1.5}\" }");
        assert_eq!(b.host_ports, vec![8080]);
        assert!(b.on_a_lan_address());
        let bad = |p: &str| {
            let doc = format!("services:\n  web:\n    ports:\n      - {p}\n");
            format!("{:#}", bindings(&doc, &BTreeMap::new()).unwrap_err())
        };
        assert!(bad("\"a:b:80:80\"").contains("`a:b` is not an IP address"));
        assert!(bad("\"[::1]8080:80\"").contains("needs `]:` after it"));
        assert!(bad("\"0:80\"").contains("`0` is not a port"));
        assert!(bad("\"${NOPE}:80\"").contains("`NOPE` is not in the stack's env"));
        assert!(bad("\"${NOPE:?say NOPE}:80\"").contains("`NOPE` is unset or empty: say NOPE"));
    }

    #[test]
    fn without_a_firewall_only_loopback_is_allowed() {
        assert_eq!(refusal("s", &one("\"127.0.0.1:80:80\""), None), None);
        let why = refusal("s", &one("\"8080:80\""), None).unwrap();
        assert!(
            why.starts_with("stack `s`, service `web` publishes tcp port 8080 on every address, and the profile has no [firewall]"),
            "{why}"
        );
    }

    #[test]
    fn with_a_firewall_lan_addresses_need_declared_ports() {
        let f = fw();
        assert_eq!(refusal("s", &one("\"5432:5432\""), Some(&f)), None);
        assert_eq!(
            refusal("s", &one("\"100.64.0.7:5432:5432\""), Some(&f)),
            None
        );
        assert_eq!(
            refusal("s", &one("\"172.17.0.1:3100:3100\""), Some(&f)),
            None
        );
        assert_eq!(
            refusal("s", &one("\"192.168.1.5:53:53/udp\""), Some(&f)),
            None
        );
        let why = refusal("s", &one("\"192.168.1.5:5432:5432\""), Some(&f)).unwrap();
        assert!(
            why.contains("publishes tcp port 5432 on 192.168.1.5, a LAN address, but [firewall] lan_tcp does not declare 5432"),
            "{why}"
        );
    }
}
