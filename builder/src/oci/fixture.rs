//! A real OCI registry for tests and benchmarks: Debian's `docker-registry`
//! on loopback with storage in a temp dir, filled over its HTTP API with
//! small images made here (a busybox layer, a config, a manifest).

use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client as Http;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use super::manifest::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, OCI_MANIFEST};
use super::Digest;
use crate::exec::Cmd;

/// A running `docker-registry serve`, stopped when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    http: Http,
    dir: tempfile::TempDir,
    /// Each layer compressed once, by its uncompressed digest: images that
    /// share a large layer (the boot tests' Debian one) reuse it.
    gzipped: std::sync::Mutex<std::collections::HashMap<Digest, Vec<u8>>>,
}

/// An image's content: a config and uncompressed layer tars.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits for `/v2/`.
    /// The port is free when picked but another process may take it before
    /// the registry binds it: then another port is tried.
    pub fn start() -> Result<TestRegistry> {
        let mut attempt = 0;
        loop {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match TestRegistry::start_on(port) {
                Err(e) if attempt < 5 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1
                }
                r => return r,
            }
        }
    }

    /// Starts a registry on 127.0.0.1:`port` (for profiles that name it).
    pub fn start_on(port: u16) -> Result<TestRegistry> {
        TestRegistry::start_with(port, None)
    }

    /// Starts a registry that wants Basic credentials (`user`, `password`,
    /// through an htpasswd file made with apache2-utils' htpasswd).
    pub fn start_with_login(user: &str, password: &str) -> Result<TestRegistry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        TestRegistry::start_with(port, Some((user, password)))
    }

    fn start_with(port: u16, login: Option<(&str, &str)>) -> Result<TestRegistry> {
        let dir = tempfile::tempdir().context("creating the registry's directory")?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let auth = match login {
            Some((user, password)) => {
                let file = dir.path().join("htpasswd");
                // The password goes over stdin (-i), not the command line.
                let out = Cmd::new("htpasswd")
                    .args(["-B", "-i", "-n", user])
                    .stdin(password.as_bytes())
                    .run()
                    .context(
                        "making the registry's htpasswd file (apt-get install apache2-utils)",
                    )?;
                std::fs::write(&file, out.stdout)
                    .with_context(|| format!("writing {}", file.display()))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let child = Cmd::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .spawn_logged(&dir.path().join("registry.log"))
            .context("starting the test registry (apt-get install docker-registry)")?;
        let mut reg = TestRegistry {
            child,
            addr,
            http: Http::builder().timeout(Duration::from_secs(30)).build()?,
            dir,
            gzipped: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = reg.child.try_wait() {
                bail!(
                    "docker-registry exited ({status}) before answering on {}; its log:\n{}",
                    reg.addr,
                    reg.log()
                );
            }
            if let Ok(r) = reg.http.get(reg.url("/v2/")).send() {
                // 401: it answers, and wants the login.
                if r.status().is_success() || (login.is_some() && r.status().as_u16() == 401) {
                    return Ok(reg);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer on {} within 15s; its log:\n{}",
                    reg.addr,
                    reg.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where the registry keeps blob `digest` on disk (distribution's
    /// filesystem layout), for tests that damage a stored blob.
    pub fn blob_path(&self, digest: &Digest) -> std::path::PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Uploads a blob (monolithic POST then PUT) and returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        let r = self
            .http
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()?;
        if r.status().as_u16() != 202 {
            bail!("starting an upload to {repo}: HTTP {}", r.status());
        }
        let loc = r
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload response without Location")?
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            self.url(&loc)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.put_created(
            format!("{loc}{sep}digest={digest}"),
            "application/octet-stream",
            data,
            || format!("uploading blob {digest} to {repo}"),
        )?;
        Ok(digest)
    }

    /// PUTs `body` to `url`; any answer but 201 Created is an error that
    /// starts with `what` and holds the registry's text.
    fn put_created(
        &self,
        url: String,
        content_type: &str,
        body: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        let r = self
            .http
            .put(url)
            .header(CONTENT_TYPE, content_type)
            .body(body.to_vec())
            .send()?;
        if r.status().as_u16() != 201 {
            bail!(
                "{}: HTTP {}: {}",
                what(),
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Puts a manifest or index under `reference` (a tag or its digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Digest> {
        self.put_created(
            self.url(&format!("/v2/{repo}/manifests/{reference}")),
            media_type,
            body,
            || format!("putting manifest {repo}:{reference}"),
        )?;
        Ok(Digest::of(body))
    }

    /// Pushes a STAND-IN Ollama model under `repo:tag`, in the format of
    /// Ollama's registry (a Docker v2 manifest whose layers are the
    /// weights, template, parameters and licence, each with Ollama's media
    /// type): `weights` stand for the GGUF file. Returns the manifest
    /// digest, which `ollama list` shows as the model's ID.
    pub fn push_ollama_model(&self, repo: &str, tag: &str, weights: &[u8]) -> Result<Digest> {
        let parts: [(&str, &[u8]); 4] = [
            (crate::oci::ollama::WEIGHTS_MEDIA_TYPE, weights),
            ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
            (
                "application/vnd.ollama.image.params",
                br#"{"stop":["<|eot_id|>"]}"#,
            ),
            (
                "application/vnd.ollama.image.license",
                b"stand-in model for tests",
            ),
        ];
        let mut layers = Vec::new();
        for (media, data) in parts {
            let d = self.push_blob(repo, data)?;
            layers.push(serde_json::json!({"mediaType": media, "digest": d, "size": data.len()}));
        }
        let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "model_format": "gguf", "model_family": "stand-in", "model_families": ["stand-in"],
            "model_type": "tiny", "file_type": "F32", "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let config_digest = self.push_blob(repo, &config)?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": super::manifest::DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest, "size": config.len(),
            },
            "layers": layers,
        }))?;
        self.push_manifest(repo, tag, super::manifest::DOCKER_MANIFEST, &manifest)
    }

    /// Pushes an image's blobs and manifest, tagged `tag` (none: by digest
    /// only). Returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: Option<&str>, image: &TestImage) -> Result<Digest> {
        self.push_built(repo, tag, image, false)
    }

    /// Like [`push_image`](Self::push_image) with gzip-compressed layers,
    /// as real registries serve them (the config keeps the uncompressed
    /// digests as diff IDs).
    pub fn push_image_gzip(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &TestImage,
    ) -> Result<Digest> {
        self.push_built(repo, tag, image, true)
    }

    fn push_built(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &TestImage,
        gzip: bool,
    ) -> Result<Digest> {
        let body = self.image_manifest(repo, image, gzip)?;
        let digest = Digest::of(&body);
        self.push_manifest(repo, tag.unwrap_or(digest.as_str()), OCI_MANIFEST, &body)
    }

    fn image_manifest(&self, repo: &str, image: &TestImage, gzip: bool) -> Result<Vec<u8>> {
        let config = self.push_blob(repo, &image.config)?;
        let mut layers = Vec::new();
        for l in &image.layers {
            let (blob, media_type) = match gzip {
                true => (self.gzip_layer(l)?, OCI_LAYER_TAR_GZIP),
                false => (l.clone(), OCI_LAYER_TAR),
            };
            let d = self.push_blob(repo, &blob)?;
            layers.push(
                serde_json::json!({"mediaType": media_type, "digest": d, "size": blob.len()}),
            );
        }
        Ok(serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": image.config.len()},
            "layers": layers,
        }))?)
    }

    /// `layer` gzip-compressed, from the memo when it was compressed before.
    fn gzip_layer(&self, layer: &[u8]) -> Result<Vec<u8>> {
        let key = Digest::of(layer);
        let mut memo = self.gzipped.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blob) = memo.get(&key) {
            return Ok(blob.clone());
        }
        let blob = gzip_bytes(self.dir.path(), layer)?;
        memo.insert(key, blob.clone());
        Ok(blob)
    }

    /// Pushes one image per `(arch, image)` and an index of them tagged
    /// `tag`. Returns the index digest and each platform manifest's digest.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&str, &TestImage)],
    ) -> Result<(Digest, Vec<Digest>)> {
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for (arch, image) in images {
            let body = self.image_manifest(repo, image, false)?;
            let d = self.push_manifest(repo, Digest::of(&body).as_str(), OCI_MANIFEST, &body)?;
            entries.push(serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": d, "size": body.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
            digests.push(d);
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))?;
        Ok((self.push_manifest(repo, tag, OCI_INDEX, &index)?, digests))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `data` compressed with gzip (`-n`: no name or time, so the same input
/// gives the same blob).
fn gzip_bytes(scratch: &Path, data: &[u8]) -> Result<Vec<u8>> {
    let f = scratch.join("layer.tar");
    std::fs::write(&f, data).with_context(|| format!("writing {}", f.display()))?;
    let out = Cmd::new("gzip").args(["-n", "-c", "-6"]).arg(&f).run()?;
    std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
    Ok(out.stdout)
}

/// A tar of `(path, mode, content)` files; a content starting with `->`
/// makes a symlink to the rest. Fixed owner and times.
pub fn layer_tar(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if let Some(target) = data.strip_prefix(b"->") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, path, std::str::from_utf8(target)?)?;
        } else {
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, path, *data)?;
        }
    }
    Ok(tar.into_inner()?)
}

/// An image config for `arch` with the given layers (uncompressed, so
/// their digests are the diff IDs) and command.
pub fn image_config(arch: &str, layers: &[Vec<u8>], cmd: &[&str], label: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": cmd, "WorkingDir": "/", "Labels": {"nodeforge.test": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "nodeforge fixture"})).collect::<Vec<_>>(),
    }))
    .expect("JSON serialises")
}

/// A busybox image serving `index` over HTTP on `port` (busybox httpd),
/// made from the host's static busybox (Debian's busybox-static).
pub fn busybox_httpd_image(
    arch: &str,
    busybox: &Path,
    index: &str,
    port: u16,
) -> Result<TestImage> {
    let bin = std::fs::read(busybox).with_context(|| {
        format!(
            "reading {} (apt-get install busybox-static)",
            busybox.display()
        )
    })?;
    let layer = layer_tar(&[
        ("bin/busybox", 0o755, &bin),
        ("bin/sh", 0o777, b"->busybox"),
        // Compose healthchecks of the images stood in for run wget.
        ("bin/wget", 0o777, b"->busybox"),
        // The users a compose file may name (`user: root`).
        (
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n"),
        ("www/index.html", 0o644, index.as_bytes()),
    ])?;
    let port = port.to_string();
    let cmd = [
        "/bin/busybox",
        "httpd",
        "-f",
        "-v",
        "-p",
        &port,
        "-h",
        "/www",
    ];
    Ok(TestImage {
        config: image_config(arch, std::slice::from_ref(&layer), &cmd, index),
        layers: vec![layer],
    })
}

/// A stand-in for a public image in boot tests: busybox httpd answering on
/// `port` with a page naming `name`, and 200 on each of `health_paths`
/// (the role's HTTP probes and healthcheck URLs) so the health checks the
/// real image passes pass here too. Each of `tools` (paths of the real
/// image's programs its healthcheck or a unit runs, e.g. `mongosh`) is a
/// shim that reads its input to the end and succeeds when the stand-in's
/// own httpd answers. `env` (`KEY=value`) is the real image's own
/// environment where the node's wiring must reckon with it. It is started
/// through `sh -c` as its entrypoint, so the arguments a compose file
/// gives the real image (its `command:`) are accepted and ignored. Images
/// made for different ports share their one layer.
pub fn stand_in_image(
    arch: &str,
    busybox: &Path,
    name: &str,
    port: u16,
    health_paths: &[String],
    tools: &[&str],
    env: &[&str],
) -> Result<TestImage> {
    let index = format!("nodeforge stand-in for {name}\n");
    let mut image = busybox_httpd_image(arch, busybox, "nodeforge stand-in\n", port)?;
    let mut config: serde_json::Value = serde_json::from_slice(&image.config)?;
    let mut script = String::new();
    for path in health_paths {
        let path = path.trim_matches('/');
        if path.is_empty() {
            continue; // index.html answers the root
        }
        let safe = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
        if !safe || path.split('/').any(|c| c.is_empty() || c == "..") {
            bail!("stand-in for {name}: health path `{path}` is not a plain path");
        }
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        script.push_str(&format!(
            "/bin/busybox mkdir -p /www/{dir} && echo ok > /www/{path}; "
        ));
    }
    for tool in tools {
        let plain = tool.starts_with('/')
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
        if !plain {
            bail!("stand-in for {name}: tool `{tool}` is not an absolute plain path");
        }
        let dir = tool.rsplit_once('/').map_or("/", |(d, _)| d);
        script.push_str(&format!(
            "/bin/busybox mkdir -p {dir}/ && printf '#!/bin/sh\\n/bin/busybox cat >/dev/null\\nexec /bin/busybox wget -q -O /dev/null http://127.0.0.1:{port}/\\n' > {tool} && /bin/busybox chmod 755 {tool}; "
        ));
    }
    script.push_str(&format!("exec /bin/busybox httpd -f -v -p {port} -h /www"));
    config["config"]["Entrypoint"] =
        serde_json::json!(["/bin/busybox", "sh", "-c", script, "stand-in"]);
    config["config"]["Cmd"] = serde_json::Value::Null;
    if !env.is_empty() {
        config["config"]["Env"] = serde_json::json!(env);
    }
    config["config"]["Labels"]["nodeforge.stand-in"] = index.trim_end().into();
    image.config = serde_json::to_vec(&config)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real image's environment reaches the stand-in's config (the
    /// busybox image has no `Env` of its own: a regression of the ai boot
    /// test), and a stand-in without any keeps none.
    #[test]
    fn stand_in_carries_the_real_images_environment() {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: install busybox-static (`nodeforge doctor --install`)"
        );
        let env = ["NVIDIA_VISIBLE_DEVICES=all"];
        let image = stand_in_image("amd64", busybox, "x:1", 8080, &[], &[], &env).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["config"]["Env"], serde_json::json!(env));
        let image = stand_in_image("amd64", busybox, "x:1", 8080, &[], &[], &[]).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert!(config["config"].get("Env").is_none(), "{config:#}");
    }
}
