//! Wait (bounded, with backoff) until the node has a default route.
//! network-online.target already orders us after the network manager's
//! idea of "online", but that can be satisfied by a link without a route.

use std::time::Duration;

use anyhow::{bail, Result};

use super::{Ctx, Outcome};
use crate::fsutil::{read_optional, under};

/// The first interface with an IPv4 or IPv6 default route, if any.
pub fn default_route(root: &std::path::Path) -> Result<Option<String>> {
    // /proc/net/route: Iface Destination Gateway Flags …, hex fields;
    // destination 0 with RTF_UP (0x1) is a default route.
    if let Some(text) = read_optional(&under(root, "/proc/net/route"))? {
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 4 && f[1] == "00000000" && f[0] != "lo" {
                let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
                if flags & 0x1 != 0 {
                    return Ok(Some(f[0].to_string()));
                }
            }
        }
    }
    // /proc/net/ipv6_route: dest, dest_len, …, flags (9th), iface (10th).
    if let Some(text) = read_optional(&under(root, "/proc/net/ipv6_route"))? {
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                let flags = u32::from_str_radix(f[8], 16).unwrap_or(0);
                // RTF_UP and not RTF_REJECT (0x200, the "unreachable" route).
                if flags & 0x1 != 0 && flags & 0x200 == 0 {
                    return Ok(Some(f[9].to_string()));
                }
            }
        }
    }
    Ok(None)
}

pub fn wait_for_network(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let limit = Duration::from_secs(ctx.cfg.network_timeout_secs);
    let mut waited = Duration::ZERO;
    let mut delay = Duration::from_millis(250);
    loop {
        if let Some(iface) = default_route(ctx.root)? {
            return Ok(if waited.is_zero() {
                Outcome::Skipped(format!("network already up (default route via {iface})"))
            } else {
                Outcome::Done(format!(
                    "default route via {iface} after {:.1} s",
                    waited.as_secs_f64()
                ))
            });
        }
        if waited >= limit {
            break;
        }
        let d = delay.min(limit - waited);
        (ctx.sleep)(d);
        waited += d;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let why = format!("no default route after {} s", limit.as_secs());
    if ctx.cfg.tailscale.is_some() {
        // Joining needs the network: fail (systemd retries the unit).
        bail!(crate::tailscale::TailscaleError::NoNetwork(why));
    }
    Ok(Outcome::Skipped(format!(
        "{why}; no later step needs the network"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_default_routes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        assert_eq!(default_route(p).unwrap(), None);
        std::fs::create_dir_all(p.join("proc/net")).unwrap();
        std::fs::write(
            p.join("proc/net/route"),
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n",
        )
        .unwrap();
        assert_eq!(default_route(p).unwrap(), None);
        std::fs::write(
            p.join("proc/net/ipv6_route"),
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 enp1s0\n",
        )
        .unwrap();
        assert_eq!(default_route(p).unwrap().as_deref(), Some("enp1s0"));
        std::fs::write(
            p.join("proc/net/route"),
            "Iface\tDestination\tGateway\tFlags\n eth0\t00000000\t0102000A\t0003\n",
        )
        .unwrap();
        assert_eq!(default_route(p).unwrap().as_deref(), Some("eth0"));
    }
}
