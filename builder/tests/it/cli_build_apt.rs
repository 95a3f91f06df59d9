//! Extra apt sources through the whole build, offline: a fake mmdebstrap
//! records the sources lines it is given (checking that their keyrings and
//! package indexes exist on the host) and writes them into its fake rootfs
//! as the real one does; every later step runs for real. The image must
//! keep the repository (.sources, keyring) and lose the host-only lines.
//! Needs root, like every build.

use std::fs;

use crate::support::fake::{build_args, fake_tool, rootfs_key, write_agent, write_tree, BASE_TREE};
use crate::support::image::Ext4;
use crate::support::{require_root, require_tool, Project, FIXTURE_FPR, FIXTURE_KEY, KEY};
use nodeforge::exec::Cmd;

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
    write_agent(&p);
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
    write_tree(&tree, BASE_TREE);
    // Like mmdebstrap: every mirror argument after the target becomes a
    // sources.list line of the new system.
    let script = format!(
        r#"set -e
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
    fake_tool(&p, "mmdebstrap", &script);
    p
}

fn build(p: &Project) {
    p.cmd(&build_args("profiles/x.toml", &["--quiet"]))
        .path_prepend(&p.path("fakebin"))
        .ok();
}

/// A file of the built image's root filesystem.
fn image_file(p: &Project, path: &str) -> String {
    Ext4::root_of(&p.path("out/x.img"), p.root()).text(path)
}

#[test]
fn repositories_reach_mmdebstrap_and_stay_in_the_image() {
    require_root();
    require_tool("dpkg-deb", "dpkg");
    require_tool("debugfs", "e2fsprogs");
    let p = project();
    build(&p);
    let args = p.read("mmdebstrap.args");
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
        let key = Ext4::root_of(&p.path("out/x.img"), p.root())
            .file("/etc/apt/keyrings/nvidia-container-toolkit.gpg");
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
    let plan = |p: &Project| rootfs_key(&p.ok(&["plan", "--json", "profiles/x.toml"]));
    let before = plan(&p);
    assert_eq!(plan(&p), before);
    fs::copy(
        p.path("debs/tailscale_1.0_all.deb"),
        p.path("debs/tailscale-copy_1.0_all.deb"),
    )
    .unwrap();
    let more_debs = plan(&p);
    assert_ne!(more_debs, before);
    p.edit("profiles/x.toml", |t| {
        t.replace("suite = \"/\"", "suite = \"stable/\"")
    });
    assert_ne!(plan(&p), more_debs);
}
