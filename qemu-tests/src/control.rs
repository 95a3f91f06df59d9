//! The stand-in control server's view of the tailnet, shipped in the
//! stand-in `tailscale` package as its netmap: the MagicDNS suffix, every
//! node of the fleet with its 100.x address and the MAC of the NIC its
//! tunnel runs over in a fleet boot test, and each node's packet filter.
//!
//! As Tailscale's control server does, the filter is compiled here, per
//! destination node, from the policy file that `nodeforge tailnet policy`
//! writes for the profiles; the stand-in tailscaled enforces its own
//! node's rules on `tailscale0` (iptables, default drop). So a boot test
//! checks the generated policy end to end, not this crate's evaluator.
//!
//! Netmap lines:
//!   `suffix DOMAIN`
//!   `peer HOSTNAME 100.64.0.N`
//!   `underlay HOSTNAME MAC`: the NIC carrying the node's tunnel
//!   `allow HOSTNAME SOURCE PORTS`: HOSTNAME accepts new connections from
//!   SOURCE (an address/32, or 100.64.0.0/10 for `*`) on PORTS: `*` (every
//!   port and protocol), `N` or `N-M` (TCP and UDP); a policy's comma
//!   list becomes one line per element

use std::path::PathBuf;

use anyhow::{Context, Result};
use nodeforge::tailnet::policy::Policy;

use crate::workspace_root;

/// Every tailnet address: the source `*` stands for.
const TAILNET: &str = "100.64.0.0/10";

/// A node as the control server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetNode {
    pub hostname: String,
    pub address: String,
    pub tags: Vec<String>,
    /// The MAC of the NIC a fleet boot test gives the node for its tunnel.
    pub underlay_mac: String,
}

fn profiles_dir() -> PathBuf {
    workspace_root().join("profiles")
}

/// The fleet of profiles/node.toml's `[tailnet]`, in name order, each
/// with an address from 100.64.0.11 on.
pub fn nodes() -> Result<(String, Vec<TailnetNode>)> {
    let node = profiles_dir().join("node.toml");
    let p =
        nodeforge::profile::load(&node).with_context(|| format!("loading {}", node.display()))?;
    let domain = p
        .tailnet
        .domain
        .clone()
        .with_context(|| format!("{} declares no [tailnet] domain", node.display()))?;
    let nodes = p
        .fleet
        .iter()
        .filter(|m| m.role != p.role)
        .enumerate()
        .map(|(i, m)| TailnetNode {
            hostname: m.hostname.clone(),
            address: format!("100.64.0.{}", 11 + i),
            tags: m.tags.clone(),
            underlay_mac: format!("52:54:00:74:73:{:02x}", 11 + i),
        })
        .collect();
    Ok((domain, nodes))
}

/// The policy `nodeforge tailnet policy profiles` writes, parsed back.
pub fn generated_policy() -> Result<Policy> {
    let text = nodeforge::tailnet::write_policy(&[profiles_dir()], None)
        .context("generating the tailnet policy of profiles/")?;
    Ok(Policy::parse(&text)?)
}

/// The netmap of the fleet under the generated policy.
pub fn netmap() -> Result<String> {
    let (domain, nodes) = nodes()?;
    Ok(render(&domain, &nodes, &generated_policy()?))
}

/// The netmap's text: `suffix`, then `peer`, `underlay` and `allow` lines.
pub fn render(domain: &str, nodes: &[TailnetNode], policy: &Policy) -> String {
    let mut text = format!("suffix {domain}\n");
    for n in nodes {
        text.push_str(&format!("peer {} {}\n", n.hostname, n.address));
    }
    for n in nodes {
        text.push_str(&format!("underlay {} {}\n", n.hostname, n.underlay_mac));
    }
    for rule in packet_filter(policy, nodes) {
        text.push_str(&format!(
            "allow {} {} {}\n",
            rule.dst_host, rule.source, rule.ports
        ));
    }
    text
}

/// One accept rule of a node's packet filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FilterRule {
    pub dst_host: String,
    pub source: String,
    pub ports: String,
}

/// Each node's accept rules under `policy`: for every accept ACL whose
/// destination is `*` or one of the node's tags, every source the ACL
/// names that is a node here (a tag: its nodes' addresses; `*`: the whole
/// tailnet). Sources that are people or groups have no node in a test
/// fleet and give no rule. Sorted and without repeats.
pub fn packet_filter(policy: &Policy, nodes: &[TailnetNode]) -> Vec<FilterRule> {
    let mut rules = Vec::new();
    for dst_node in nodes {
        for acl in policy.acls.iter().filter(|a| a.action == "accept") {
            for dst in &acl.dst {
                let Some((host, ports)) = dst.rsplit_once(':') else {
                    continue;
                };
                if host != "*" && !dst_node.tags.iter().any(|t| t == host) {
                    continue;
                }
                for src in &acl.src {
                    for source in sources(src, nodes) {
                        for range in ports.split(',') {
                            rules.push(FilterRule {
                                dst_host: dst_node.hostname.clone(),
                                source: source.clone(),
                                ports: range.to_owned(),
                            });
                        }
                    }
                }
            }
        }
    }
    rules.sort();
    rules.dedup();
    rules
}

fn sources(src: &str, nodes: &[TailnetNode]) -> Vec<String> {
    if src == "*" {
        return vec![TAILNET.to_owned()];
    }
    nodes
        .iter()
        .filter(|n| n.tags.iter().any(|t| t == src))
        .map(|n| format!("{}/32", n.address))
        .collect()
}

/// The node the netmap has for `hostname` (`None`: not in the fleet).
pub fn node(hostname: &str) -> Result<Option<TailnetNode>> {
    let (_, nodes) = nodes()?;
    Ok(nodes.into_iter().find(|n| n.hostname == hostname))
}

/// The address the netmap gives `hostname`.
pub fn peer_address(hostname: &str) -> Result<Option<String>> {
    Ok(node(hostname)?.map(|n| n.address))
}

/// The MAC of the NIC a fleet test gives `hostname` for its tunnel.
pub fn underlay_mac(hostname: &str) -> Result<Option<String>> {
    Ok(node(hostname)?.map(|n| n.underlay_mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(policy_nodes: &[TailnetNode], host: &str) -> TailnetNode {
        policy_nodes
            .iter()
            .find(|n| n.hostname == host)
            .unwrap_or_else(|| panic!("{host} is not in the fleet"))
            .clone()
    }

    fn allows(rules: &[FilterRule], dst: &str, source: &str, port: &str) -> bool {
        rules
            .iter()
            .any(|r| r.dst_host == dst && r.source == source && (r.ports == "*" || r.ports == port))
    }

    /// The netmap names the fleet's suffix and every other role's node by
    /// the hostnames the profiles give them, with its underlay NIC.
    #[test]
    fn the_netmap_is_the_fleet_of_the_profiles() {
        let map = netmap().unwrap();
        assert!(map.starts_with("suffix tail79107c.ts.net\n"), "{map}");
        for host in [
            "nxcore",
            "datacore",
            "ainode",
            "media",
            "sentinel",
            "workspace",
        ] {
            let ip = peer_address(host)
                .unwrap()
                .unwrap_or_else(|| panic!("{host} missing:\n{map}"));
            assert!(ip.starts_with("100.64.0."), "{ip}");
            let mac = underlay_mac(host).unwrap().unwrap();
            assert!(map.contains(&format!("underlay {host} {mac}\n")), "{map}");
        }
        assert_eq!(
            peer_address("zentoria").unwrap(),
            None,
            "another fleet's node: {map}"
        );
    }

    /// The generated policy compiles to the seed's flows: ai and workspace
    /// reach datacore's PostgreSQL, core reaches every port of every node,
    /// the fleet reaches core's Prometheus and Loki, anyone core's 443;
    /// nothing else gets a rule.
    #[test]
    fn the_generated_policy_compiles_to_the_seeds_flows() {
        let (_, nodes) = nodes().unwrap();
        let rules = packet_filter(&generated_policy().unwrap(), &nodes);
        let ip = |h: &str| format!("{}/32", node(&nodes, h).address);
        assert!(allows(&rules, "datacore", &ip("ainode"), "5432"));
        assert!(allows(&rules, "datacore", &ip("workspace"), "5432"));
        assert!(!allows(&rules, "datacore", &ip("workspace"), "6379"));
        assert!(!allows(&rules, "datacore", &ip("media"), "5432"));
        assert!(allows(&rules, "datacore", &ip("nxcore"), "22"));
        for h in ["datacore", "workspace", "media", "ainode", "sentinel"] {
            assert!(allows(&rules, "nxcore", &ip(h), "9090"), "{h}");
            assert!(allows(&rules, "nxcore", &ip(h), "3100"), "{h}");
            assert!(!allows(&rules, "nxcore", &ip(h), "22"), "{h}");
        }
        assert!(allows(&rules, "nxcore", TAILNET, "443"));
        assert!(!allows(&rules, "workspace", &ip("datacore"), "8443"));
    }

    /// A policy's comma list of ports becomes one rule per element, the
    /// form the stand-in tailscaled turns into iptables rules.
    #[test]
    fn a_port_list_is_one_rule_per_range() {
        let (_, nodes) = nodes().unwrap();
        let policy = Policy::parse(
            r#"{"acls":[{"action":"accept","src":["tag:media"],"dst":["tag:data:80,443,8000-8010"]}]}"#,
        )
        .unwrap();
        let ports: Vec<String> = packet_filter(&policy, &nodes)
            .into_iter()
            .map(|r| r.ports)
            .collect();
        assert_eq!(ports, ["443", "80", "8000-8010"]);
    }

    /// The enforcement follows the policy, not a list of its own: without
    /// the ACL that lets ai reach data, ainode gets no rule on datacore,
    /// while the rest stays.
    #[test]
    fn a_policy_without_the_ai_rule_gives_ai_no_way_to_data() {
        let (_, nodes) = nodes().unwrap();
        let mut policy = generated_policy().unwrap();
        let before = policy.acls.len();
        policy
            .acls
            .retain(|a| !(a.src == ["tag:ai"] && a.dst.iter().all(|d| d.starts_with("tag:data:"))));
        assert_eq!(policy.acls.len(), before - 1, "{:?}", policy.acls);
        let rules = packet_filter(&policy, &nodes);
        let ai = format!("{}/32", node(&nodes, "ainode").address);
        assert!(!rules
            .iter()
            .any(|r| r.dst_host == "datacore" && r.source == ai));
        let ws = format!("{}/32", node(&nodes, "workspace").address);
        assert!(allows(&rules, "datacore", &ws, "5432"));
    }
}
