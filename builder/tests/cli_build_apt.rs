//! Extra apt sources through the whole build, offline: a fake mmdebstrap
//! records the sources lines it is given (checking that their keyrings and
//! package indexes exist on the host) and writes them into its fake rootfs
//! as the real one does; every later step runs for real. The image must
//! keep the repository (.sources, keyring) and lose the host-only lines.
//! Needs root, like every build.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{is_root, stderr, Project, KEY};
use nodeforge::exec::{find_program, Cmd};

const FIXTURE_KEY: &str = include_str!("fixtures/test-repo-key.asc");
const FIXTURE_FPR: &str = include_str!("fixtures/test-repo-key.fpr");

fn project() -> Project {
    let p = Project::new();
    p.write("keys/nvidia.asc", FIXTURE_KEY);
    p.write(
        "profiles/x.toml",
        &format!(
            "name = \"x\"\nhardware = \"pc\"\npackages = [\"tailscale\"]\n[[users]]\nname = \"admin\"\nsudo = true\nauthorized_keys = [\"{KEY}\"]\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n\n[[apt.repositories]]\nname = \"nvidia-container-toolkit\"\nurl = \"https://nvidia.github.io/libnvidia-container/stable/deb/amd64\"\nsuite = \"/\"\nkey = \"keys/nvidia.asc\"\nfingerprint = \"{}\"\n\n[[apt.local]]\npath = \"debs\"\n",
            FIXTURE_FPR.trim()
        ),
    );
    p.write("agent", "#!/bin/sh\necho fake agent\n");
    // A deb for the local source (its content does not matter here).
    let pkg = p.path("pkg");
    p.write(
        "pkg/DEBIAN/control",
        "Package: tailscale\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@nodeforge.invalid>\nDescription: stand-in\n",
    );
    p.write(
        "pkg/usr/bin/tailscale",
        nodeforge_firstboot::TAILSCALE_STANDIN,
    );
    fs::create_dir_all(p.path("debs")).unwrap();
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(p.path("debs/tailscale_1.0_all.deb"))
        .run()
        .unwrap();
    let tree = p.path("fake-rootfs");
    for (rel, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("etc/group", "root:x:0:\nsudo:x:27:\nshadow:x:42:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\nsudo:*::\n"),
        ("var/lib/dpkg/status", "Package: systemd\nStatus: install ok installed\nArchitecture: amd64\nVersion: 257.9-1\n\n"),
        ("boot/vmlinuz-6.1.0-test", "kernel"),
        ("boot/initrd.img-6.1.0-test", "initrd"),
        ("usr/lib/systemd/boot/efi/systemd-bootx64.efi", "sd-boot"),
    ] {
        p.write(&format!("fake-rootfs/{rel}"), text);
    }
    // Like mmdebstrap: every mirror argument after the target becomes a
    // sources.list line of the new system.
    let script = format!(
        r#"#!/bin/sh
set -e
printf '%s\n' "$@" > {args}
tree={tree}
mkdir -p "$tree/etc/apt"
: > "$tree/etc/apt/sources.list"
target=
for a in "$@"; do
  if [ -n "$target" ]; then
    case "$a" in
      deb\ *) echo "$a" >> "$tree/etc/apt/sources.list" ;;
      *) echo "deb $a trixie main" >> "$tree/etc/apt/sources.list" ;;
    esac
    case "$a" in *signed-by=*) k=${{a#*signed-by=}}; k=${{k%%]*}}; [ -s "$k" ] || {{ echo "no keyring $k" >&2; exit 1; }} ;; esac
    case "$a" in *copy:*) d=${{a#*copy:}}; d=${{d%% *}}; [ -s "$d/Packages" ] || {{ echo "no index $d/Packages" >&2; exit 1; }} ;; esac
  fi
  case "$a" in *.tar.zst) target="$a" ;; esac
done
tar --zstd -cf "$target" -C "$tree" .
"#,
        args = p.path("mmdebstrap.args").display(),
        tree = tree.display()
    );
    let bin = p.path("fakebin/mmdebstrap");
    p.write("fakebin/mmdebstrap", &script);
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn build(p: &Project) {
    let out = p.nodeforge_with_path(
        &[common::BUILD_X, &["--quiet"]].concat(),
        Some(&p.path("fakebin")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A file of the image's root filesystem, read with debugfs.
fn image_file(p: &Project, path: &str) -> String {
    let img = p.path("out/x.img");
    let parts = nodeforge::disk::gpt_table::read(&img).unwrap();
    let mut data = vec![0u8; parts[1].size as usize];
    {
        use std::os::unix::fs::FileExt;
        fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut data, parts[1].offset)
            .unwrap();
    }
    let root = p.path("root.ext4");
    fs::write(&root, data).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(&root)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn repositories_reach_mmdebstrap_and_stay_in_the_image() {
    if !is_root() || find_program("dpkg-deb").is_none() || find_program("debugfs").is_none() {
        eprintln!("SKIPPED: needs root, dpkg-deb and debugfs");
        return;
    }
    let p = project();
    build(&p);
    let args = fs::read_to_string(p.path("mmdebstrap.args")).unwrap();
    let cache = fs::canonicalize(p.path("cache")).unwrap();
    let keyring = cache.join(format!("nodeforge-apt/keys/{}.gpg", FIXTURE_FPR.trim()));
    assert!(
        args.lines().any(|l| l
            == format!(
            "deb [signed-by={}] https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /",
            keyring.display()
        )),
        "{args}"
    );
    let local = args
        .lines()
        .find(|l| l.starts_with("deb [trusted=yes] copy:/"))
        .unwrap_or_else(|| panic!("no local line in {args}"));
    assert!(
        local.contains("/nodeforge-apt/local-") && local.ends_with(" ./"),
        "{local}"
    );

    let check_image = |p: &Project| {
        let sources = image_file(p, "/etc/apt/sources.list");
        assert_eq!(sources, "deb http://deb.debian.org/debian trixie main\n");
        let repo = image_file(
            p,
            "/etc/apt/sources.list.d/nvidia-container-toolkit.sources",
        );
        assert!(
            repo.contains("URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64\n")
                && repo.contains("Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.gpg\n"),
            "{repo}"
        );
        let key = image_file(p, "/etc/apt/keyrings/nvidia-container-toolkit.gpg");
        assert!(!key.is_empty());
    };
    check_image(&p);

    // A second build reuses the cached rootfs and still installs the repository.
    fs::remove_file(p.path("mmdebstrap.args")).unwrap();
    fs::remove_dir_all(p.path("out")).unwrap();
    build(&p);
    assert!(!p.path("mmdebstrap.args").exists(), "mmdebstrap ran again");
    check_image(&p);

    // The local packages' contents and the repositories shape the rootfs key.
    let plan = |p: &Project| {
        let out = p.nodeforge(&["plan", "--json", "profiles/x.toml"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["rootfs_key"].as_str().unwrap().to_owned()
    };
    let before = plan(&p);
    assert_eq!(plan(&p), before);
    fs::copy(
        p.path("debs/tailscale_1.0_all.deb"),
        p.path("debs/tailscale-copy_1.0_all.deb"),
    )
    .unwrap();
    let more_debs = plan(&p);
    assert_ne!(more_debs, before);
    let text = fs::read_to_string(p.path("profiles/x.toml")).unwrap();
    p.write(
        "profiles/x.toml",
        &text.replace("suite = \"/\"", "suite = \"stable/\""),
    );
    assert_ne!(plan(&p), more_debs);
}
