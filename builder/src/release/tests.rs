use super::*;
use std::collections::BTreeMap;

fn release(dir: &Path) -> Release {
    fs::write(dir.join("web.squashfs"), b"root filesystem bytes").unwrap();
    let mut files = BTreeMap::new();
    files.insert(
        "web.squashfs".to_string(),
        file_digest(&dir.join("web.squashfs")).unwrap(),
    );
    Release {
        format: FORMAT,
        name: "web".into(),
        role: "web".into(),
        arch: "amd64".into(),
        version: "0123abcd".into(),
        epoch: Some(1),
        files,
        root_slot: None,
    }
}

fn keys(dir: &Path, name: &str) -> (PrivateKey, PublicKey) {
    let (private, public) = generate_keys(dir, name).unwrap();
    (
        load_signing_key(&private).unwrap(),
        load_public_key(&public).unwrap(),
    )
}

#[test]
fn a_generated_key_signs_a_release_that_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (private, public) = keys(d.path(), "release");
    let mode = fs::metadata(d.path().join("release.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let r = release(d.path());
    write(d.path(), &r, Some(&private)).unwrap();
    let back = read_verified(d.path(), "web", &public).unwrap();
    assert_eq!(back, r);
    check_file(
        &back,
        d.path(),
        "web.squashfs",
        Path::new("web.release.json"),
    )
    .unwrap();
}

#[test]
fn an_existing_key_is_never_replaced() {
    let d = tempfile::tempdir().unwrap();
    generate_keys(d.path(), "release").unwrap();
    let before = fs::read(d.path().join("release.key")).unwrap();
    let err = generate_keys(d.path(), "release").unwrap_err().to_string();
    assert!(err.contains("release.key already exists"), "{err}");
    assert_eq!(fs::read(d.path().join("release.key")).unwrap(), before);
}

#[test]
fn a_changed_document_another_key_and_no_signature_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (private, public) = keys(d.path(), "release");
    let (other, _) = keys(d.path(), "other");
    let r = release(d.path());

    write(d.path(), &r, Some(&private)).unwrap();
    let path = release_path(d.path(), "web");
    let doc = fs::read_to_string(&path).unwrap();
    fs::write(&path, doc.replace("0123abcd", "0123abce")).unwrap();
    let err = read_verified(d.path(), "web", &public).unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Refused::BadSignature { .. })),
        "{err:#}"
    );

    write(d.path(), &r, Some(&other)).unwrap();
    let err = read_verified(d.path(), "web", &public).unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Refused::OtherKey { .. })),
        "{err:#}"
    );
    assert!(err.to_string().contains("SHA256:"), "{err}");

    // A signature file that is not one is named as such.
    fs::write(signature_path(d.path(), "web"), "not a signature\n").unwrap();
    let err = read_verified(d.path(), "web", &public).unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Refused::MalformedSignature { .. })),
        "{err:#}"
    );
    assert!(
        err.to_string()
            .contains("web.release.json.sig: not an SSH signature"),
        "{err}"
    );

    // Unsigned: an earlier signature is removed, not left to mismatch.
    write(d.path(), &r, None).unwrap();
    assert!(!signature_path(d.path(), "web").exists());
    let err = read_verified(d.path(), "web", &public).unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Refused::Unsigned { .. })),
        "{err:#}"
    );
}

#[test]
fn a_file_that_differs_from_the_release_is_named_with_both_sums() {
    let d = tempfile::tempdir().unwrap();
    let r = release(d.path());
    let mut bytes = fs::read(d.path().join("web.squashfs")).unwrap();
    bytes[3] ^= 1;
    fs::write(d.path().join("web.squashfs"), &bytes).unwrap();
    let err = check_file(&r, d.path(), "web.squashfs", Path::new("web.release.json")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("web.squashfs: the sha256 is "), "{msg}");
    assert!(msg.contains(&r.files["web.squashfs"].sha256), "{msg}");
    let err = check_file(&r, d.path(), "web.img", Path::new("web.release.json")).unwrap_err();
    assert!(
        matches!(err.downcast_ref(), Some(Refused::NotReleased { .. })),
        "{err:#}"
    );
}

#[test]
fn a_newer_release_format_is_named_not_called_broken() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("web.release.json");
    let err = parse(
        br#"{"format": 2, "name": "web", "signed_by_v2": true}"#,
        &path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("release format 2 (this nodeforge reads 1"),
        "{err}"
    );
}

#[test]
fn keys_of_the_wrong_kind_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("not-a-key");
    fs::write(&p, "hello\n").unwrap();
    let err = load_signing_key(&p).unwrap_err().to_string();
    assert!(
        err.contains("not-a-key is not an OpenSSH private key"),
        "{err}"
    );
    let err = load_public_key(&p).unwrap_err().to_string();
    assert!(
        err.contains("not-a-key is not an OpenSSH public key"),
        "{err}"
    );
    let err = load_signing_key(&d.path().join("missing.key"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
    assert!(err.contains("nodeforge keys generate"), "{err}");
}

/// OpenSSH itself accepts the signature: anyone can check a release
/// without nodeforge.
#[test]
fn ssh_keygen_verifies_a_release_signature() {
    if crate::exec::find_program("ssh-keygen").is_none() {
        panic!("ssh-keygen (openssh-client) is needed for this test");
    }
    let d = tempfile::tempdir().unwrap();
    let (private, _) = keys(d.path(), "release");
    let r = release(d.path());
    write(d.path(), &r, Some(&private)).unwrap();
    let pub_line = fs::read_to_string(d.path().join("release.pub")).unwrap();
    fs::write(
        d.path().join("allowed"),
        format!("release@fleet {pub_line}"),
    )
    .unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(d.path().join("allowed"))
        .args(["-I", "release@fleet", "-n", NAMESPACE, "-s"])
        .arg(signature_path(d.path(), "web"))
        .stdin(fs::File::open(release_path(d.path(), "web")).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -Y verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
