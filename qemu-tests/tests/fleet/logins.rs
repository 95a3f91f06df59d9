//! The fleet test's login checks: a service whose login the stack writes
//! asks for it, with the node's own secret.

use qemu_tests::stacks::{print_secret, Running};

/// Syncthing (Debian's, in the test image) took the `admin` login the
/// stack wrote before it started: its password login route (registered
/// only while GUI authentication is on) accepts the node's generated
/// SYNCTHING_GUI_PASSWORD with 204 and refuses another with 403, and its
/// REST API refuses a request without a login. Python from the Prometheus
/// test image asks over the stack's network; the password goes from the
/// secrets file over stdin.
pub fn check_syncthing_login(core: &Running) {
    const ASK: &str = r#"
import json, sys, urllib.request as u
pw = sys.stdin.readline().rstrip("\n")
def status(path, body=None):
    req = u.Request("http://syncthing:8384" + path, data=body,
                    headers={"Content-Type": "application/json"} if body else {})
    try:
        return u.urlopen(req, timeout=10).status
    except u.HTTPError as e:
        return e.code
login = lambda p: json.dumps({"Username": "admin", "Password": p}).encode()
print(status("/rest/noauth/auth/password", login(pw)),
      status("/rest/noauth/auth/password", login(pw + "x")),
      status("/rest/system/version"))
"#;
    let out = core.ssh.run(&format!(
        "{} | sudo docker exec -i $(sudo docker ps -qf label=com.docker.compose.service=prometheus) \
         python3 -c '{ASK}'",
        print_secret("core", "SYNCTHING_GUI_PASSWORD")
    ));
    eprintln!(
        "fleet: syncthing login (right, wrong, none): {}",
        out.trim()
    );
    assert_eq!(out.trim(), "204 403 403", "Syncthing's GUI login");
}

/// Portainer (a stand-in: no Portainer here) is started with
/// --admin-password-file, and the file the stack mounts holds the node's
/// PORTAINER_ADMIN_PASSWORD: compared by hash on the node, so neither
/// value leaves it.
pub fn check_portainer_admin_file(core: &Running) {
    let id = "$(sudo docker ps -qf label=com.docker.compose.service=portainer)";
    let args = core
        .ssh
        .run(&format!("sudo docker inspect -f '{{{{json .Args}}}}' {id}"));
    assert!(
        args.contains(r#""--admin-password-file","/run/secrets/portainer_admin_password""#),
        "Portainer's arguments: {args}"
    );
    let hashes = core.ssh.run(&format!(
        "sudo docker exec {id} /bin/busybox cat /run/secrets/portainer_admin_password | sha256sum; \
         {} | tr -d '\\n' | sha256sum",
        print_secret("core", "PORTAINER_ADMIN_PASSWORD")
    ));
    let lines: Vec<&str> = hashes.lines().collect();
    assert!(
        lines.len() == 2 && lines[0] == lines[1],
        "Portainer's password file differs from the stack secret: {hashes}"
    );
}
