//! Tests of the cross-build hooks, run against fake roots and stand-in
//! programs (one test chroots into a tiny tree, as root).

use super::*;

/// Stand-in programs in `dir/bin` that append their name and arguments to
/// `dir/calls`, then run their body; returns the bin directory and a PATH
/// that finds them first.
fn recording_stand_ins(
    dir: &std::path::Path,
    programs: &[(&str, &str)],
) -> (std::path::PathBuf, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (prog, body) in programs {
        let p = bin.join(prog);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho {prog} \"$@\" >> \"{}/calls\"\n{body}",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (bin, path)
}

#[test]
fn every_diversion_is_removed_after_its_work_is_redone() {
    let h = hooks(&[Deferred::UpdateInitramfs, Deferred::Depmod], false);
    assert_eq!(h.essential.len(), 2);
    assert!(h.essential[0].contains("--add /usr/sbin/update-initramfs"));
    assert!(h.essential[1].contains("ln -s /bin/true \"$1/usr/sbin/depmod\""));
    // initramfs: remove only; depmod: remove, then native depmod.
    assert_eq!(h.customize.len(), 3);
    assert!(h.customize[1].contains("--remove /usr/sbin/depmod"));
    assert!(h.customize[2].starts_with("for d in"));
    assert!(h
        .customize
        .iter()
        .all(|c| !c.contains("chroot \"$1\" depmod")));
}

#[test]
fn ssh_host_keys_are_made_natively_where_the_postinst_looks() {
    let h = hooks(&[], true);
    assert_eq!(h.essential.len(), 1);
    assert!(h.customize.is_empty());
    crate::testutil::require_program("ssh-keygen", "openssh-client");
    let root = tempfile::tempdir().unwrap();
    crate::exec::Cmd::new("sh")
        .args(["-c", &h.essential[0], "hook"])
        .arg(root.path())
        .run()
        .unwrap();
    for t in ["rsa", "ecdsa", "ed25519"] {
        let key = root.path().join(format!("etc/ssh/ssh_host_{t}_key"));
        assert!(key.is_file() && key.with_extension("pub").is_file(), "{t}");
    }
}

/// Runs the native-unpack hook against a fake apt configuration, then
/// the wrapper it wrote with stand-in `dpkg` and `chroot` that record
/// their arguments: unpacks go to the host's dpkg with the root, the
/// log and the path filters; everything else to the chroot's dpkg.
#[test]
fn apt_unpacks_natively_and_configures_in_the_chroot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = d.join("apt.conf");
    std::fs::write(&conf, "Dir \"/r\";\n").unwrap();
    let hook = native_unpack_hook(&["path-exclude=/usr/share/man/*"]);
    crate::exec::Cmd::new("sh")
        .args(["-c", &hook, "hook", "/tmp/root dir"])
        .env("MMDEBSTRAP_APT_CONFIG", &conf)
        .run()
        .unwrap();
    let wrapper = format!("{}.nodeforge-dpkg", conf.display());
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.starts_with("Dir \"/r\";\nDPkg::Chroot-Directory \"\";\n"));
    assert!(text.contains(&format!("DPkg::Options:: \"{wrapper}\";\n")));
    assert!(text.ends_with("DPkg::Options:: \"/tmp/root dir\";\n"));
    if let Some(apt_config) = crate::exec::find_program("apt-config") {
        let dump = crate::exec::Cmd::new(apt_config)
            .arg("dump")
            .env("APT_CONFIG", &conf)
            .stdout_text()
            .unwrap();
        assert!(
            dump.contains("DPkg::Options:: \"/tmp/root dir\";"),
            "{dump}"
        );
    }
    let (_, path) = recording_stand_ins(d, &[("dpkg", ""), ("chroot", "")]);
    // How apt starts it: Dir::Bin::dpkg=env, mmdebstrap's options, ours first.
    for args in [
        &[
            "--status-fd",
            "9",
            "--no-triggers",
            "--unpack",
            "/tmp/root dir/a.deb",
        ][..],
        &["--status-fd", "9", "--configure", "a:arm64"][..],
    ] {
        crate::exec::Cmd::new("sh")
            .arg(&wrapper)
            .args(["/tmp/root dir", "--unset=TMPDIR", "dpkg"])
            .args(args)
            .env("PATH", &path)
            .run()
            .unwrap();
    }
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines,
        [
            "dpkg --root=/tmp/root dir --log=/tmp/root dir/var/log/dpkg.log --force-unsafe-io \
             --force-depends --path-exclude=/usr/share/man/* --status-fd 9 --no-triggers --unpack \
             /tmp/root dir/a.deb",
            "chroot /tmp/root dir dpkg --status-fd 9 --configure a:arm64",
        ]
    );
    // Without mmdebstrap's `dpkg` word the wrapper refuses to guess.
    assert!(crate::exec::Cmd::new("sh")
        .arg(&wrapper)
        .args(["/r", "--configure", "a"])
        .env("PATH", &path)
        .run()
        .is_err());
}

/// The essential-set wrapper with stand-in `dpkg`, `dpkg-deb` and a
/// "real" chroot that record their arguments: mmdebstrap's install
/// becomes a native unpack of the same debs under the root, then a
/// chrooted configure of their packages; other commands pass through.
#[test]
fn essential_install_unpacks_natively_and_configures_in_the_chroot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (bin, path) = recording_stand_ins(
        d,
        &[
            ("dpkg", ""),
            ("native-tools", ""),
            ("dpkg-deb", "n=${2##*/}; echo ${n%%_*}\n"),
            ("real-chroot", ""),
        ],
    );
    let wrapper = bin.join("chroot");
    std::fs::write(
        &wrapper,
        essential_chroot_wrapper(&bin.join("real-chroot"), &["path-exclude=/usr/share/man/*"]),
    )
    .unwrap();
    let run = |args: &[&str]| {
        crate::exec::Cmd::new("sh")
            .arg(&wrapper)
            .args(args)
            .env("PATH", &path)
            .run()
            .unwrap();
    };
    run(&[
        "/r",
        "dpkg",
        "--install",
        "--force-depends",
        "--status-fd=7",
        "/var/cache/apt/archives/base-passwd_3_arm64.deb",
        "/var/cache/apt/archives/dash_0.5_arm64.deb",
    ]);
    run(&["/r", "sh", "-c", "true"]);
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines,
        [
            "dpkg-deb --field /r/var/cache/apt/archives/base-passwd_3_arm64.deb Package",
            "dpkg-deb --field /r/var/cache/apt/archives/dash_0.5_arm64.deb Package",
            "dpkg --root=/r --log=/r/var/log/dpkg.log --force-unsafe-io --force-depends \
             --path-exclude=/usr/share/man/* --status-fd=7 --unpack \
             /r/var/cache/apt/archives/base-passwd_3_arm64.deb \
             /r/var/cache/apt/archives/dash_0.5_arm64.deb",
            "native-tools /r",
            "real-chroot /r dpkg --force-depends --status-fd=7 --configure base-passwd dash",
            "real-chroot /r sh -c true",
        ]
    );
}

/// The native-interpreter hooks on a small usr-merged tree (no
/// emulation needed): inside the chroot the host's dash and perl run
/// with perl's modules found, and the undo leaves exactly the tree
/// that was there before, with the target's own files back in place.
#[test]
fn native_interpreters_run_in_the_chroot_and_leave_nothing_behind() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: it chroots into a tree; run the suite as root (README)"
    );
    crate::testutil::require_program("dpkg-divert", "dpkg");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/bin", "usr/lib", "etc", "var/lib/dpkg/info", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("usr/bin/sh", "dash"),
    ] {
        std::os::unix::fs::symlink(to, r.join(link)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::create_dir(r.join("dev")).unwrap();
    nix::sys::stat::mknod(
        &r.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    for tool in NATIVE_TOOLS_LIST {
        std::fs::write(r.join(&tool[1..]), format!("target {tool}")).unwrap();
    }
    let listing = |r: &std::path::Path| {
        let out = crate::exec::Cmd::new("sh")
            .args(["-c", "cd \"$1\" && find . | sort", "x"])
            .arg(r)
            .stdout_text()
            .unwrap();
        out.lines()
            .filter(|l| !l.starts_with("./var/lib/dpkg/diversions"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = listing(r);
    let hook = |script: &str| {
        crate::exec::Cmd::new("sh")
            .args(["-c", script, "hook"])
            .arg(r)
            .run()
            .unwrap();
    };
    hook(&native_tools());
    let out = crate::exec::Cmd::new("chroot")
        .arg(r)
        .env("LC_ALL", "C")
        .args([
            "/bin/sh",
            "-c",
            "perl -MData::Dumper -MFile::Path -e 'print Dumper([1])' && \
             echo shell-ok | grep -c ok | sed s/1/one/",
        ])
        .stdout_text()
        .unwrap();
    assert!(out.contains("$VAR1 = [") && out.ends_with("one\n"), "{out}");
    assert_eq!(
        std::fs::read(r.join("usr/bin/dash.nodeforge-target")).unwrap(),
        b"target /usr/bin/dash"
    );
    if std::path::Path::new("/lib64").is_dir() {
        // merged /usr stays merged: systemd's preinst refuses otherwise
        assert_eq!(
            std::fs::read_link(r.join("lib64")).unwrap(),
            std::path::Path::new("usr/lib64")
        );
    }
    hook(&native_tools_undo());
    assert_eq!(listing(r), before);
    for tool in NATIVE_TOOLS_LIST {
        assert_eq!(
            std::fs::read_to_string(r.join(&tool[1..])).unwrap(),
            format!("target {tool}")
        );
    }
}

/// The ca-certificates hook on a tree without emulation: a fake
/// update-ca-certificates (what --sysroot makes: links with the root
/// in front) ends with links that are absolute inside the image.
#[test]
fn ca_certificate_links_point_inside_the_image() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
    std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
    std::fs::write(
        r.join("usr/sbin/update-ca-certificates"),
        "#!/bin/sh\n[ \"$1\" = --sysroot ] || exit 9\nln -s \"$2//usr/share/ca-certificates/x.crt\" \"$2/etc/ssl/certs/x.pem\"\nln -s x.pem \"$2/etc/ssl/certs/abcd.0\"\n",
    )
    .unwrap();
    let script = Deferred::UpdateCaCertificates.redo().unwrap();
    crate::exec::Cmd::new("sh")
        .args(["-c", script, "hook"])
        .arg(r)
        .run()
        .unwrap();
    let certs = r.join("etc/ssl/certs");
    assert_eq!(
        std::fs::read_link(certs.join("x.pem")).unwrap(),
        std::path::Path::new("/usr/share/ca-certificates/x.crt")
    );
    assert_eq!(
        std::fs::read_link(certs.join("abcd.0")).unwrap(),
        std::path::Path::new("x.pem")
    );
}
