//! The updater against a real HTTP server with byte ranges, on slots that
//! are files: what it fetches, what it writes, and each refusal, with the
//! inactive slot compared byte for byte before and after.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nodeforge_delta::DEFAULT_CUTTING;
use nodeforge_firstboot::update::{self, HttpOrigin, Request, Running, UpdateRefused};
use nodeforge_release::{FileDigest, Release, RootSlot};
use sha2::{Digest, Sha256};
use ssh_key::{Algorithm, PrivateKey};

const SLOT: usize = 8 << 20;
/// Bytes before the root slot in the image (the partition table, the ESP).
const HEAD: usize = 64 << 10;

/// Deterministic incompressible bytes: sha256 in counter mode.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = 0u64;
    while out.len() < n {
        out.extend_from_slice(&Sha256::digest(
            [seed.to_le_bytes(), block.to_le_bytes()].concat(),
        ));
        block += 1;
    }
    out.truncate(n);
    out
}

/// A root slot: 3 MiB of data, then free space (zeros).
fn slot_v1() -> Vec<u8> {
    let mut s = noise(3 << 20, 7);
    s.resize(SLOT, 0);
    s
}

/// v1 with 100 bytes changed at 1 MiB: a compose edit.
fn slot_v2() -> Vec<u8> {
    let mut s = slot_v1();
    s[(1 << 20)..(1 << 20) + 100].copy_from_slice(&noise(100, 99));
    s
}

fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

/// A build's output directory as a server holds it: `web.img` with the
/// slot at HEAD, its chunk index, the signed release.
struct Build {
    dir: PathBuf,
}

fn publish(dir: &Path, slot: &[u8], epoch: i64, key: &PrivateKey) -> Build {
    fs::create_dir_all(dir).unwrap();
    let mut img = noise(HEAD, 1);
    img.extend_from_slice(slot);
    fs::write(dir.join("web.img"), &img).unwrap();
    let index = nodeforge_delta::index(&mut &slot[..], DEFAULT_CUTTING).unwrap();
    let chunks = serde_json::to_vec(&index).unwrap();
    fs::write(dir.join("web.root.chunks.json"), &chunks).unwrap();
    let release = Release {
        format: nodeforge_release::FORMAT,
        name: "web".into(),
        role: "web".into(),
        arch: update::debian_arch().into(),
        version: format!("v{epoch}-{}", hex::encode(&Sha256::digest(slot)[..4])),
        epoch: Some(epoch),
        files: BTreeMap::from([
            ("web.img".to_string(), digest(&img)),
            ("web.root.chunks.json".to_string(), digest(&chunks)),
        ]),
        root_slot: Some(RootSlot {
            file: "web.img".into(),
            offset: HEAD as u64,
            size: slot.len() as u64,
            chunks: "web.root.chunks.json".into(),
            disk_guid: None,
        }),
    };
    let doc = release.to_bytes();
    fs::write(dir.join("web.release.json"), &doc).unwrap();
    let sig = nodeforge_release::sign(&doc, key).unwrap();
    fs::write(dir.join("web.release.json.sig"), sig).unwrap();
    Build {
        dir: dir.to_path_buf(),
    }
}

/// A static file server with byte ranges, over `dir`; counts the body
/// bytes it sends.
struct Server {
    url: String,
    sent: Arc<AtomicUsize>,
}

fn serve(dir: &Path) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/builds", l.local_addr().unwrap());
    let dir = dir.to_path_buf();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            let path = first.split(' ').nth(1).unwrap().to_owned();
            let mut range = None;
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == "\r\n" || l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("Range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                }
            }
            let file = dir.join(path.trim_start_matches("/builds/"));
            let Ok(data) = fs::read(&file) else {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            let head = match range {
                Some((a, b)) => {
                    let body = &data[a as usize..=b as usize];
                    counter.fetch_add(body.len(), Ordering::SeqCst);
                    let h = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                        data.len(),
                        body.len()
                    );
                    [h.as_bytes(), body].concat()
                }
                None => {
                    counter.fetch_add(data.len(), Ordering::SeqCst);
                    let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
                    [h.as_bytes(), &data].concat()
                }
            };
            let _ = s.write_all(&head);
        }
    });
    Server { url, sent }
}

fn key() -> PrivateKey {
    PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
}

/// A node running v1 (epoch 100) with an inactive slot full of old bytes.
struct Node {
    dir: tempfile::TempDir,
    epoch: i64,
    /// Versions the node already has.
    current: Vec<String>,
    /// Where the running slot's index is kept between tries, if anywhere.
    index_cache: Option<PathBuf>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("root-a"), slot_v1()).unwrap();
        fs::write(dir.path().join("root-b"), noise(SLOT + (1 << 20), 3)).unwrap();
        Node {
            dir,
            epoch: 100,
            current: Vec::new(),
            index_cache: None,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn update(
        &self,
        server: &Server,
        trusted: &PrivateKey,
        allow_downgrade: bool,
    ) -> anyhow::Result<update::Installed> {
        let state = self.path("state");
        let req = Request {
            build: "web",
            trusted: trusted.public_key(),
            running: Running {
                arch: update::debian_arch().into(),
                epoch: Some(self.epoch),
            },
            running_slot: &self.path("root-a"),
            target_slot: &self.path("root-b"),
            state_dir: &state,
            index_cache: self.index_cache.as_deref(),
            disk_guid: None,
            current: &self.current,
            before_writing: None,
            allow_downgrade,
        };
        let origin = HttpOrigin::new(&server.url, std::time::Duration::from_secs(10));
        update::update(&origin, &req, &mut |l| eprintln!("{l}"))
    }
    fn target(&self) -> Vec<u8> {
        fs::read(self.path("root-b")).unwrap()
    }
}

fn refusal(e: &anyhow::Error) -> &UpdateRefused {
    e.downcast_ref::<UpdateRefused>()
        .unwrap_or_else(|| panic!("not a refusal: {e:#}"))
}

#[test]
fn a_compose_edit_fetches_one_chunk_and_the_slot_is_the_new_build() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let node = Node::new();
    let done = node.update(&server, &k, false).unwrap();

    let target = node.target();
    assert_eq!(&target[..SLOT], &slot_v2()[..], "the written slot is v2");
    let docs = [
        "web.release.json",
        "web.release.json.sig",
        "web.root.chunks.json",
    ]
    .iter()
    .map(|f| fs::metadata(v2.dir.join(f)).unwrap().len() as usize)
    .sum::<usize>();
    let fetched = server.sent.load(Ordering::SeqCst) - docs;
    assert_eq!(fetched as u64, done.fetched_bytes);
    assert!(
        done.fetched_bytes > 0 && done.fetched_bytes <= 256 << 10,
        "one chunk around the edit, got {done:?}"
    );
    assert_eq!(
        done.fetched_bytes + done.copied_bytes + done.zero_bytes,
        SLOT as u64
    );
    let record: update::Installed =
        serde_json::from_slice(&fs::read(node.path("state/last-update.json")).unwrap()).unwrap();
    assert_eq!(record, done);
    assert!(!node.path("state/staging").exists(), "staging is removed");
}

#[test]
fn a_kept_index_of_a_running_slot_written_since_costs_the_changed_chunk_only() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let mut node = Node::new();
    node.index_cache = Some(node.path("run/running-index.json"));
    let first = node.update(&server, &k, false).unwrap();
    assert!(node.path("run/running-index.json").exists());
    // The running slot is written to after it was indexed (the root is
    // mounted read-write): 2 MiB in, where v2 has v1's bytes.
    let mut running = fs::read(node.path("root-a")).unwrap();
    running[2 << 20] ^= 1;
    fs::write(node.path("root-a"), &running).unwrap();
    fs::write(node.path("root-b"), noise(SLOT + (1 << 20), 4)).unwrap();
    let again = node.update(&server, &k, false).unwrap();
    assert_eq!(
        &node.target()[..SLOT],
        &slot_v2()[..],
        "the written slot is v2"
    );
    // The kept index still said v1's bytes were there: that copy read
    // back wrong and its chunk was fetched, nothing else.
    let extra = again.fetched_bytes - first.fetched_bytes;
    assert!(extra > 0 && extra <= 256 << 10, "{first:?} then {again:?}");
    // Without a kept index the change is found by indexing: the same
    // bytes are fetched, from the plan.
    node.index_cache = None;
    fs::write(node.path("root-b"), noise(SLOT + (1 << 20), 5)).unwrap();
    let fresh = node.update(&server, &k, false).unwrap();
    assert_eq!(fresh.fetched_bytes, again.fetched_bytes);
    assert_eq!(&node.target()[..SLOT], &slot_v2()[..]);
}

#[test]
fn an_unrelated_running_slot_fetches_the_whole_new_slot_and_still_writes_it_exactly() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let node = Node::new();
    fs::write(node.path("root-a"), noise(SLOT, 55)).unwrap();
    let done = node.update(&server, &k, false).unwrap();
    assert_eq!(&node.target()[..SLOT], &slot_v2()[..]);
    assert_eq!(done.copied_bytes, 0);
    // The data, and the zeros of the one chunk that straddles its end.
    let data = 3u64 << 20;
    assert!(
        (data..data + (256 << 10)).contains(&done.fetched_bytes),
        "{done:?}"
    );
}

/// Publishes v2 with `epoch` signed by `signer`, lets `tamper` change the
/// server's copy, updates a v1 node that trusts `trusted`: the update must
/// fail and leave the inactive slot as it was. Returns the error.
fn refused(
    epoch: i64,
    signer: &PrivateKey,
    trusted: &PrivateKey,
    tamper: impl FnOnce(&Path),
) -> anyhow::Error {
    let out = tempfile::tempdir().unwrap();
    let v2 = publish(&out.path().join("v2"), &slot_v2(), epoch, signer);
    tamper(&v2.dir);
    let server = serve(&v2.dir);
    let node = Node::new();
    let before = node.target();
    let e = node
        .update(&server, trusted, false)
        .expect_err("the update went through");
    assert!(
        node.target() == before,
        "the inactive slot was written: {e:#}"
    );
    e
}

#[test]
fn one_flipped_byte_on_the_server_is_refused_before_the_inactive_slot_is_written() {
    let k = key();
    let e = refused(200, &k, &k, |dir| {
        // Inside the edited chunk: the one range that is fetched.
        let at = (HEAD + (1 << 20) + 50) as u64;
        let img = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("web.img"))
            .unwrap();
        let mut b = [0u8];
        img.read_exact_at(&mut b, at).unwrap();
        img.write_all_at(&[b[0] ^ 1], at).unwrap();
    });
    assert!(
        matches!(refusal(&e), UpdateRefused::BadPayload { .. }),
        "{e:#}"
    );
    let msg = format!("{e:#}");
    assert!(msg.contains("web.img: the chunk at offset"), "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
}

#[test]
fn a_release_signed_by_another_key_is_refused_naming_both_keys() {
    let (k, other) = (key(), key());
    let e = refused(200, &other, &k, |_| {});
    assert!(
        matches!(
            refusal(&e),
            UpdateRefused::Release(nodeforge_release::Refused::OtherKey { .. })
        ),
        "{e:#}"
    );
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&nodeforge_release::fingerprint(k.public_key())),
        "{msg}"
    );
}

#[test]
fn a_downgrade_is_refused_unless_allowed() {
    let k = key();
    let e = refused(50, &k, &k, |_| {});
    assert!(
        matches!(
            refusal(&e),
            UpdateRefused::Downgrade {
                offered: 50,
                running: 100,
                ..
            }
        ),
        "{e:#}"
    );
    assert!(format!("{e:#}").contains("--allow-downgrade"));
    let out = tempfile::tempdir().unwrap();
    let v0 = publish(&out.path().join("v0"), &slot_v2(), 50, &k);
    let node = Node::new();
    node.update(&serve(&v0.dir), &k, true).unwrap();
    assert_eq!(&node.target()[..SLOT], &slot_v2()[..]);
}

#[test]
fn a_slot_too_small_and_a_version_that_failed_before_are_refused() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let node = Node::new();
    fs::write(node.path("root-b"), vec![7u8; SLOT - 4096]).unwrap();
    let e = node.update(&server, &k, false).unwrap_err();
    assert!(
        matches!(refusal(&e), UpdateRefused::TooLarge { .. }),
        "{e:#}"
    );
    assert!(node.target().iter().all(|&b| b == 7));

    fs::write(node.path("root-b"), vec![7u8; SLOT]).unwrap();
    let release: Release =
        serde_json::from_slice(&fs::read(v2.dir.join("web.release.json")).unwrap()).unwrap();
    fs::create_dir_all(node.path("state")).unwrap();
    fs::write(node.path("state/failed"), format!("{}\n", release.version)).unwrap();
    let e = node.update(&server, &k, false).unwrap_err();
    assert!(
        matches!(refusal(&e), UpdateRefused::FailedBefore { .. }),
        "{e:#}"
    );
    assert!(node.target().iter().all(|&b| b == 7));
}

#[test]
fn the_command_reads_the_baked_key_and_epoch_and_reports_what_it_fetched() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let node = Node::new();
    let root = node.path("root");
    fs::create_dir_all(root.join("etc/nodeforge")).unwrap();
    fs::write(
        root.join("etc/nodeforge/firstboot.toml"),
        "profile = \"web\"\nrole = \"web\"\nhostname = \"web\"\nepoch = 100\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/nodeforge/release.pub"),
        k.public_key().to_openssh().unwrap(),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nodeforge-firstboot"))
            .arg("update")
            .args(["--from", &server.url, "--root"])
            .arg(&root)
            .arg("--running")
            .arg(node.path("root-a"))
            .arg("--target")
            .arg(node.path("root-b"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("verified against SHA256:"), "{stdout}");
    assert!(stdout.contains("every chunk checked"), "{stdout}");
    assert_eq!(&node.target()[..SLOT], &slot_v2()[..]);

    // Without --from, the baked [update] url; this config has none.
    let out = Command::new(env!("CARGO_BIN_EXE_nodeforge-firstboot"))
        .args(["update", "--root"])
        .arg(&root)
        .arg("--running")
        .arg(node.path("root-a"))
        .arg("--target")
        .arg(node.path("root-b"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no release URL: give --from"), "{stderr}");

    // One update at a time.
    let state = root.join("var/lib/nodeforge/update");
    fs::create_dir_all(&state).unwrap();
    let held = fs::File::create(state.join("lock")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another update holds"), "{stderr}");
    drop(held);
    // The running slot given twice, by two names.
    let alias = node.path("root-a-alias");
    std::os::unix::fs::symlink(node.path("root-a"), &alias).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nodeforge-firstboot"))
        .args(["update", "--from", &server.url, "--root"])
        .arg(&root)
        .arg("--running")
        .arg(node.path("root-a"))
        .arg("--target")
        .arg(&alias)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("are the same device"), "{err}");

    let (code, _, stderr) = run(&["--key", "/nonexistent/release.pub"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("reading the release key /nonexistent/release.pub"),
        "{stderr}"
    );
}

#[test]
fn a_release_the_node_already_has_is_not_written_again() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    let server = serve(&v2.dir);
    let mut node = Node::new();
    let release: Release =
        serde_json::from_slice(&fs::read(v2.dir.join("web.release.json")).unwrap()).unwrap();
    node.current = vec![release.version.clone()];
    let before = node.target();
    let e = node.update(&server, &k, false).unwrap_err();
    assert!(
        matches!(refusal(&e), UpdateRefused::Current { .. }),
        "{e:#}"
    );
    assert!(format!("{e:#}").contains("nothing to do"), "{e:#}");
    assert!(node.target() == before);
}

#[test]
fn a_release_of_another_build_is_refused() {
    let (out, k) = (tempfile::tempdir().unwrap(), key());
    let v2 = publish(&out.path().join("v2"), &slot_v2(), 200, &k);
    // Signed by the trusted key, but named for another profile.
    let doc = fs::read_to_string(v2.dir.join("web.release.json"))
        .unwrap()
        .replacen("\"name\": \"web\"", "\"name\": \"db\"", 1);
    fs::write(v2.dir.join("web.release.json"), &doc).unwrap();
    let sig = nodeforge_release::sign(doc.as_bytes(), &k).unwrap();
    fs::write(v2.dir.join("web.release.json.sig"), sig).unwrap();
    let node = Node::new();
    let before = node.target();
    let e = node.update(&serve(&v2.dir), &k, false).unwrap_err();
    assert!(
        matches!(refusal(&e), UpdateRefused::OtherBuild { .. }),
        "{e:#}"
    );
    assert!(node.target() == before);
}
