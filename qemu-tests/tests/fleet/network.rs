//! The fleet test's network checks: the host firewall keeps the LAN out
//! of the published ports, and the tailnet's flows end as the generated
//! policy says.

use qemu_tests::stacks::{assert_closed_from_lan, Running};

/// The host firewall (profiles/node.toml's [firewall]) is loaded on both
/// nodes, and from the LAN (QEMU's user network, forwarded from this
/// machine) data's PostgreSQL, Redis and MinIO and core's Prometheus and
/// Loki get no connection, though Docker publishes them on every address;
/// over the tailnet the permitted peers reach them (check_scrapes,
/// check_postgres_from_core, check_logs_reach_core).
pub fn check_firewall(
    core: &Running,
    core_lan: &[(u16, u16)],
    data: &Running,
    data_lan: &[(u16, u16)],
) {
    for (host, vm) in [("nxcore", core), ("datacore", data)] {
        let out = vm.ssh.run(
            "systemctl is-active nodeforge-firewall.service; sudo nft list chain inet nodeforge input",
        );
        assert!(out.starts_with("active\n"), "{host}: {out}");
        assert!(out.contains("tcp dport 22 accept"), "{host}: {out}");
    }
    let probe = |guest: u16| -> &'static [u8] {
        match guest {
            // PostgreSQL's SSLRequest: the server (and PgBouncer) answers
            // `N` or `S` at once.
            5432 | 6432 => &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            6379 => b"PING\r\n",
            _ => b"GET / HTTP/1.0\r\n\r\n",
        }
    };
    for (host, vm, forwards) in [("nxcore", core, core_lan), ("datacore", data, data_lan)] {
        for (port, guest) in forwards {
            assert_closed_from_lan(
                vm.ssh.port(),
                *port,
                &format!("{host}:{guest}"),
                probe(*guest),
            );
        }
        // They were refused by the rule for Docker's published ports (the
        // forward chain), not by something else on the way.
        let forward = vm.ssh.run("sudo nft list chain inet nodeforge forward");
        let refused: u64 = forward
            .lines()
            .find(|l| l.contains("reject with tcp reset"))
            .and_then(|l| l.split("counter packets ").nth(1))
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{host}: no counted reject rule in:\n{forward}"));
        assert!(
            refused >= forwards.len() as u64,
            "{host}: the forward chain refused {refused} connections, fewer than the {} tried:\n{forward}",
            forwards.len()
        );
    }
    eprintln!("fleet: from the LAN, nxcore's 9090 and 3100 and datacore's 5432, 6432, 6379 and 9000 are closed; SSH answers");
}

/// How a connection attempt from one node to another's tailnet name
/// ended: `reached` (connected, or the far node refused it: nothing
/// listens there) or `dropped` (no answer in 8 s: the packet filter).
/// Anything else (a name that does not resolve, no route) fails the test.
fn attempt(from: &Running, host: &str, port: u16) -> &'static str {
    let out = from.ssh.output_with_input(
        &format!(
            "timeout 8 bash -c 'exec 3<>/dev/tcp/{host}.tail79107c.ts.net/{port}' 2>&1; echo \"rc=$?\""
        ),
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (said, rc) = text.trim().rsplit_once("rc=").unwrap_or((&text, ""));
    match rc {
        "0" => "reached",
        "1" if said.contains("Connection refused") => "reached",
        "124" => "dropped",
        _ => panic!(
            "connecting to {host}:{port} ended neither connected, refused nor unanswered: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The seed's flows, allowed and denied, tried from the nodes over their
/// tunnels; each must end as the generated policy says.
pub fn check_flows(nodes: &[(&str, &Running); 3]) {
    let vm = |h: &str| nodes.iter().find(|(n, _)| *n == h).unwrap().1;
    let flows: &[(&str, &str, u16, &str)] = &[
        // Everyone reaches core's gateway, metrics and logs.
        ("datacore", "nxcore", 443, "reached"),
        ("datacore", "nxcore", 9090, "reached"),
        ("media", "nxcore", 3100, "reached"),
        ("media", "nxcore", 9090, "reached"),
        // Core reaches everything.
        ("nxcore", "datacore", 5432, "reached"),
        ("nxcore", "datacore", 22, "reached"),
        ("nxcore", "media", 8096, "reached"),
        // Nothing else.
        ("media", "datacore", 5432, "dropped"),
        ("media", "datacore", 6432, "dropped"),
        ("media", "datacore", 6379, "dropped"),
        ("datacore", "media", 8096, "dropped"),
        ("datacore", "nxcore", 22, "dropped"),
        ("media", "nxcore", 5432, "dropped"),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, want) in flows {
        let got = attempt(vm(from), to, *port);
        eprintln!("fleet: flow {from} -> {to}:{port}: {got} (policy: {want})");
        if got != *want {
            wrong.push(format!("{from} -> {to}:{port}: {got}, policy says {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "flows not as the policy says:\n{wrong:#?}"
    );
}
