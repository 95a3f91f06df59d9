//! What `nodeforge serve` answers, apart from the sockets:
//!
//! - `/boot.ipxe`: chains to the machine's own script by its MAC;
//! - `/nodes/<mac>/boot.ipxe`: the node's build's iPXE script, with the
//!   URLs of its files and its seed;
//! - `/nodes/<mac>/<build>.{vmlinuz,initrd,squashfs}`: the files, with
//!   byte ranges;
//! - `/nodes/<mac>/seed.toml`: the node's seed, once (it carries the auth
//!   key), then 410 Gone.
//!
//! With `--release-key`, `/releases/<build>/<file>` offers each build's
//! update (the signed release, its chunk index, byte ranges of the image)
//! to `nodeforge-firstboot update --from http://…/releases/<build>`.
//!
//! Install-mode nodes boot the same files with `nodeforge.install=` (their
//! order, `/nodes/<mac>/install.toml`) instead of the seed; they also get
//! `<build>.img` and its `.bmap`, and POST `/nodes/<mac>/installed` when
//! done, after which their script sends them to their local disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::nodes::{InstallPlan, Lookup, Mac, Node, NodeTable};
use crate::build::netboot::{NetbootFiles, BASE_VAR, NODE_VAR};
use crate::install::{InstallOrder, INSTALL_PARAM};
use nodeforge_firstboot::seed::SEED_CMDLINE_PARAM;

/// A request as the routes see it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The Host header: the server's address as the machine reached it.
    pub host: Option<String>,
    pub range: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    /// Bytes `offset..offset + len` of a file.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// The MAC the request belongs to, for the log.
    pub mac: Option<Mac>,
    /// The node it belongs to, for the log.
    pub node: Option<String>,
}

impl Response {
    fn text(status: u16, text: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Body::Bytes(text.into().into_bytes()),
            mac: None,
            node: None,
        }
    }

    fn ipxe(script: String) -> Self {
        Response {
            content_type: "text/plain; charset=utf-8",
            ..Response::text(200, script)
        }
    }

    fn for_node(mut self, mac: Mac, node: Option<&Node>) -> Self {
        self.mac = Some(mac);
        self.node = node.map(|n| n.name.clone());
        self
    }

    pub fn body_len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// The server's state: the fleet, where the builds are, which seeds have
/// gone out.
pub struct App {
    pub nodes: NodeTable,
    pub artifacts: PathBuf,
    seeds_served: Mutex<HashSet<Mac>>,
    installed: Mutex<HashSet<Mac>>,
    /// With `--release-key`: the files checked against their signed release.
    releases: Option<super::verify::Releases>,
}

impl App {
    pub fn new(
        nodes: NodeTable,
        artifacts: PathBuf,
        releases: Option<super::verify::Releases>,
    ) -> Self {
        App {
            nodes,
            artifacts,
            releases,
            seeds_served: Mutex::new(HashSet::new()),
            installed: Mutex::new(HashSet::new()),
        }
    }

    pub fn respond(&self, req: &Request) -> Response {
        let path = req.path.split('?').next().unwrap_or("");
        let allowed = match req.method.as_str() {
            "GET" | "HEAD" => !path.ends_with("/installed"),
            "POST" => path.ends_with("/installed"),
            _ => false,
        };
        if !allowed {
            return Response::text(405, "method not allowed here\n");
        }
        if path == "/boot.ipxe" {
            // iPXE fills in its own MAC address.
            return Response::ipxe("#!ipxe\nchain /nodes/${mac:hexhyp}/boot.ipxe\n".into());
        }
        if let Some(rest) = path.strip_prefix("/releases/") {
            return self.update_file(req, rest);
        }
        let Some(rest) = path.strip_prefix("/nodes/") else {
            return Response::text(404, "not found\n");
        };
        let Some((mac_text, file)) = rest.split_once('/') else {
            return Response::text(404, "not found\n");
        };
        let Some(mac) = Mac::parse(mac_text) else {
            return Response::text(400, format!("{mac_text} is not a MAC address\n"));
        };
        let node = match self.nodes.lookup(mac) {
            Lookup::Known(n) | Lookup::Default(n) => n,
            Lookup::Refused => {
                return Response::text(
                    403,
                    format!(
                        "machine {mac} is not in the fleet file and it has no default_node: \
                         refusing to boot it\n"
                    ),
                )
                .for_node(mac, None)
            }
        };
        let resp = match (file, &node.install) {
            ("boot.ipxe", _) => self.node_script(req, mac, &node),
            ("seed.toml", _) => self.seed(mac, &node),
            ("install.toml", Some(plan)) => match base_url(req, mac) {
                Ok(base) => install_order(&base, &node, plan),
                Err(r) => r,
            },
            ("installed", Some(_)) => {
                lock(&self.installed).insert(mac);
                Response::text(200, "noted: it boots from its disk from now on\n")
            }
            _ => self.artifact(req, &node, file),
        };
        resp.for_node(mac, Some(&node))
    }

    /// The build's script with the node's URLs set before it; an
    /// installed node is sent to its local disk instead.
    fn node_script(&self, req: &Request, mac: Mac, node: &Node) -> Response {
        if node.install.is_some() && lock(&self.installed).contains(&mac) {
            return Response::ipxe(format!(
                "#!ipxe\necho nodeforge serve: {mac} (node {}) is installed; booting from its local disk\nexit\n",
                node.name
            ));
        }
        let base = match base_url(req, mac) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let files = NetbootFiles::of(&node.artifacts);
        if let Err(r) = self.released(&files.script) {
            return r;
        }
        let path = self.artifacts.join(&files.script);
        let build_script = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                return Response::text(
                    500,
                    format!(
                        "{}: {e} (build it with `nodeforge build --format netboot`)\n",
                        path.display()
                    ),
                )
            }
        };
        let body = build_script
            .strip_prefix("#!ipxe\n")
            .unwrap_or(&build_script);
        let params = match node.install {
            None => format!("{SEED_CMDLINE_PARAM}={base}seed.toml"),
            Some(_) => format!("{INSTALL_PARAM}={base}install.toml"),
        };
        Response::ipxe(format!(
            "#!ipxe\n\
             # nodeforge serve: {mac} is fleet node {name}\n\
             set {BASE_VAR} {base}\n\
             set {NODE_VAR} {params}\n\
             {body}",
            name = node.name,
        ))
    }

    fn seed(&self, mac: Mac, node: &Node) -> Response {
        if !lock(&self.seeds_served).insert(mac) {
            return Response::text(
                410,
                format!(
                    "the seed of {mac} (node {}) was already served once; restart \
                     `nodeforge serve` to hand it out again\n",
                    node.name
                ),
            );
        }
        Response {
            content_type: "application/toml",
            ..Response::text(200, node.seed.to_toml())
        }
    }

    fn artifact(&self, req: &Request, node: &Node, file: &str) -> Response {
        let offered = super::nodes::fetchable_files(&node.artifacts, node.install.is_some());
        if !offered.iter().any(|f| f == file) {
            return Response::text(404, format!("node {} has no file {file:?}\n", node.name));
        }
        if let Err(r) = self.released(file) {
            return r;
        }
        let path = self.artifacts.join(file);
        let len = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                return Response::text(
                    404,
                    format!(
                        "{} is missing (build it with `nodeforge build --format netboot`)\n",
                        path.display()
                    ),
                )
            }
        };
        file_response(&path, len, req.range.as_deref())
    }
}

impl App {
    /// `/releases/<build>/<file>`: a file of a build's signed update.
    fn update_file(&self, req: &Request, rest: &str) -> Response {
        let Some(releases) = &self.releases else {
            return Response::text(
                404,
                "this serve offers no updates: start it with --release-key, so that only \
                 releases signed by that key are offered\n",
            );
        };
        let Some((build, file)) = rest.split_once('/') else {
            return Response::text(404, "not found\n");
        };
        if !releases.offers_update(build, file) {
            return Response::text(
                404,
                format!("build {build:?} offers no update file {file:?}\n"),
            );
        }
        if let Err(r) = self.released(file) {
            return r;
        }
        let path = self.artifacts.join(file);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => file_response(&path, m.len(), req.range.as_deref()),
            _ => Response::text(404, format!("{} is missing\n", path.display())),
        }
    }

    /// Without a release key everything is; with one, what matched the
    /// signed release at start and is unchanged since.
    fn released(&self, file: &str) -> Result<(), Response> {
        match &self.releases {
            None => Ok(()),
            Some(r) => r
                .allow(file)
                .map_err(|why| Response::text(500, format!("{why}\n"))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `http://<host>/nodes/<mac>/`, with the host the machine reached us at.
fn base_url(req: &Request, mac: Mac) -> Result<String, Response> {
    match &req.host {
        Some(host) => Ok(format!("http://{host}/nodes/{}/", mac.hyphenated())),
        None => Err(Response::text(
            400,
            "no Host header: cannot tell the machine where to fetch from\n",
        )),
    }
}

fn install_order(base: &str, node: &Node, plan: &InstallPlan) -> Response {
    let order = InstallOrder {
        node: node.name.clone(),
        image: format!("{base}{}.img", node.artifacts),
        bmap: format!("{base}{}.img.bmap", node.artifacts),
        seed: format!("{base}seed.toml"),
        done: format!("{base}installed"),
        disk: plan.disk.clone(),
        force: plan.force,
        artifact: plan.from.clone(),
        mirror: plan.mirror.as_ref().map(ToString::to_string),
    };
    Response {
        content_type: "application/toml",
        ..Response::text(200, toml::to_string(&order).expect("an order serialises"))
    }
}

/// A whole file (200), the one range asked for (206), or 416.
pub fn file_response(path: &Path, len: u64, range: Option<&str>) -> Response {
    let whole = Response {
        status: 200,
        content_type: "application/octet-stream",
        headers: vec![("Accept-Ranges", "bytes".into())],
        body: Body::File {
            path: path.to_path_buf(),
            offset: 0,
            len,
        },
        mac: None,
        node: None,
    };
    match range.map(|r| parse_range(r, len)) {
        None | Some(RangeAsk::Whole) => whole,
        Some(RangeAsk::Part(start, end)) => Response {
            status: 206,
            headers: vec![
                ("Accept-Ranges", "bytes".into()),
                ("Content-Range", format!("bytes {start}-{end}/{len}")),
            ],
            body: Body::File {
                path: path.to_path_buf(),
                offset: start,
                len: end + 1 - start,
            },
            ..whole
        },
        Some(RangeAsk::Unsatisfiable) => Response {
            headers: vec![("Content-Range", format!("bytes */{len}"))],
            ..Response::text(416, "range not satisfiable\n")
        },
    }
}

/// What a Range header asks of a `len`-byte file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range (malformed, or several ranges): the whole file, as
    /// RFC 9110 allows.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn parse_range(header: &str, len: u64) -> RangeAsk {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(n) if len > 0 => RangeAsk::Part(len.saturating_sub(n), len - 1),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeAsk::Whole;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                parse(b)
            };
            match end {
                None => RangeAsk::Whole,
                Some(end) if end < start => RangeAsk::Whole,
                Some(_) if start >= len => RangeAsk::Unsatisfiable,
                Some(end) => RangeAsk::Part(start, end.min(len - 1)),
            }
        }
        (true, true) => RangeAsk::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeAsk::Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), RangeAsk::Part(900, 999));
        assert_eq!(
            parse_range("bytes=900-5000", 1000),
            RangeAsk::Part(900, 999)
        );
        assert_eq!(parse_range("bytes=-100", 1000), RangeAsk::Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), RangeAsk::Part(0, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=x-1", 1000), RangeAsk::Whole);
    }

    #[test]
    fn a_range_answer_says_which_bytes_of_how_many() {
        let r = file_response(Path::new("/f"), 1000, Some("bytes=10-19"));
        assert_eq!(r.status, 206);
        assert!(r
            .headers
            .contains(&("Content-Range", "bytes 10-19/1000".into())));
        assert_eq!(r.body_len(), 10);
        let r = file_response(Path::new("/f"), 1000, Some("bytes=2000-"));
        assert_eq!(r.status, 416);
        assert!(r
            .headers
            .contains(&("Content-Range", "bytes */1000".into())));
        let r = file_response(Path::new("/f"), 1000, None);
        assert_eq!((r.status, r.body_len()), (200, 1000));
    }
}
