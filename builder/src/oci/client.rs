//! A small client of the OCI distribution API: manifests and blobs, pulled
//! and pushed anonymously, with a bearer token got from the realm a 401
//! names (with the registry's credentials when there are some), or with
//! Basic authentication where the registry asks for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::manifest::{self, Manifest};
use super::{Digest, Mirrors, Platform, Reference};

/// Why talking to a registry failed; every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {image}: registry at {url} is unreachable: {detail}")]
    Unreachable {
        image: String,
        url: String,
        detail: String,
    },
    #[error("image {image}: {what} not found in the registry (HTTP 404)")]
    NotFound { image: String, what: String },
    #[error("image {image}: the registry refused access to {what} (HTTP {status}){hint}")]
    Denied {
        image: String,
        what: String,
        status: u16,
        hint: String,
    },
    #[error("image {image}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {image}: {detail}")]
    Protocol { image: String, detail: String },
}

/// A manifest resolved for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of the platform's image manifest: what the lock records.
    pub digest: Digest,
    /// Digest of the index the reference pointed at, when it was one.
    pub index_digest: Option<Digest>,
    pub manifest: manifest::ImageManifest,
}

pub struct Client {
    http: reqwest::blocking::Client,
    /// Authorization header values by registry and repository (a bearer
    /// token, or Basic credentials).
    tokens: Mutex<HashMap<String, String>>,
    mirrors: Mirrors,
    credentials: super::auth::Credentials,
}

impl Client {
    pub fn new() -> anyhow::Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .user_agent(concat!("nodeforge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Per read for bodies, so large blobs are not cut off.
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Client {
            http,
            tokens: Mutex::new(HashMap::new()),
            mirrors: Mirrors::default(),
            credentials: Default::default(),
        })
    }

    /// The same client, authenticating with `credentials` where a
    /// registry asks.
    pub fn with_credentials(self, credentials: super::auth::Credentials) -> Client {
        Client {
            credentials,
            ..self
        }
    }

    /// The same client, sending each mirrored registry's requests to its
    /// mirror.
    pub fn with_mirrors(self, mirrors: Mirrors) -> Client {
        Client { mirrors, ..self }
    }

    /// The mirror `image` is fetched through, if any.
    pub fn mirror_of(&self, image: &Reference) -> Option<&super::Mirror> {
        self.mirrors.for_image(image)
    }

    /// Where `image`'s API requests go: its mirror's URL, else its registry.
    pub fn api_base(&self, image: &Reference) -> String {
        self.mirrors.api_base(image)
    }

    /// URL of `rest` (`manifests/…`, `blobs/…`) in `image`'s repository.
    fn repository_url(&self, image: &Reference, rest: &str) -> String {
        format!("{}/{}/{rest}", self.api_base(image), image.repository)
    }

    /// Fetches the manifest `reference` (a tag or digest) of `image`'s
    /// repository. A digest reference is verified against the body.
    pub fn manifest(
        &self,
        image: &Reference,
        reference: &str,
    ) -> Result<(Manifest, Vec<u8>, Digest), RegistryError> {
        let url = self.repository_url(image, &format!("manifests/{reference}"));
        let what = format!("manifest {reference}");
        let resp = self.send(image, &what, || {
            self.http.get(&url).header(ACCEPT, manifest::ACCEPT)
        })?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .bytes()
            .map_err(|e| protocol(image, format!("reading {what}: {e}")))?
            .to_vec();
        let actual = Digest::of(&body);
        if let Ok(expected) = Digest::parse(reference) {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    image: image.to_string(),
                    what,
                    expected,
                    actual,
                });
            }
        }
        let m = Manifest::parse(ct.as_deref(), &body)
            .map_err(|e| protocol(image, format!("{what}: {e}")))?;
        Ok((m, body, actual))
    }

    /// Resolves `image` (by its digest if pinned, else its tag) to the image
    /// manifest for `platform`, going through an index if there is one.
    pub fn resolve(
        &self,
        image: &Reference,
        platform: Platform,
    ) -> Result<Resolved, RegistryError> {
        let (m, _, digest) = self.manifest(image, &image.manifest_ref())?;
        match m {
            Manifest::Image(manifest) => Ok(Resolved {
                digest,
                index_digest: None,
                manifest,
            }),
            Manifest::Index(index) => {
                let d = index
                    .select(platform)
                    .map_err(|e| protocol(image, e.to_string()))?
                    .digest
                    .clone();
                match self.manifest(image, d.as_str())? {
                    (Manifest::Image(manifest), _, _) => Ok(Resolved {
                        digest: d,
                        index_digest: Some(digest),
                        manifest,
                    }),
                    (Manifest::Index(_), _, _) => Err(protocol(
                        image,
                        format!("the {platform} entry {d} of the index is itself an index"),
                    )),
                }
            }
        }
    }

    /// Starts downloading blob `digest`, from byte `offset` on. Returns the
    /// response and whether the registry honoured the range (206); on a
    /// plain 200 the body starts at byte 0.
    pub fn blob(
        &self,
        image: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, bool), RegistryError> {
        let url = self.repository_url(image, &format!("blobs/{digest}"));
        let what = format!("blob {digest}");
        let resp = self.send(image, &what, || {
            let req = self.http.get(&url);
            if offset > 0 {
                req.header(RANGE, format!("bytes={offset}-"))
            } else {
                req
            }
        })?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        Ok((resp, partial))
    }

    /// Whether `image`'s repository holds blob `digest` already.
    pub fn has_blob(&self, image: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.repository_url(image, &format!("blobs/{digest}"));
        match self.send(image, &format!("blob {digest}"), || self.http.head(&url)) {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads the file `path` as blob `digest` (`size` bytes) unless the
    /// repository has it: one POST for an upload URL, one PUT of the body.
    pub fn upload_blob(
        &self,
        image: &Reference,
        digest: &Digest,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), RegistryError> {
        self.upload(image, digest, &|| {
            std::fs::File::open(path)
                .map(|f| reqwest::blocking::Body::sized(f, size))
                .map_err(|e| protocol(image, format!("opening {}: {e}", path.display())))
        })
    }

    /// [`upload_blob`](Self::upload_blob) of bytes in memory.
    pub fn upload_blob_bytes(
        &self,
        image: &Reference,
        digest: &Digest,
        data: &[u8],
    ) -> Result<(), RegistryError> {
        self.upload(image, digest, &|| {
            Ok(reqwest::blocking::Body::from(data.to_vec()))
        })
    }

    fn upload(
        &self,
        image: &Reference,
        digest: &Digest,
        body: &dyn Fn() -> Result<reqwest::blocking::Body, RegistryError>,
    ) -> Result<(), RegistryError> {
        if self.has_blob(image, digest)? {
            return Ok(());
        }
        let what = format!("an upload of blob {digest}");
        let start = self.repository_url(image, "blobs/uploads/");
        let resp = self.send(image, &what, || self.http.post(&start))?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol(image, format!("{what}: no Location in the answer")))?
            .to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            // Relative to the registry's root.
            let base = self.api_base(image);
            format!("{}{location}", base.trim_end_matches("/v2"))
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        // The body is made once per attempt: a token request may come first.
        let first = std::cell::RefCell::new(Some(body()?));
        self.send(image, &format!("blob {digest}"), || {
            let b = match first.borrow_mut().take() {
                Some(b) => b,
                None => body().unwrap_or_else(|_| reqwest::blocking::Body::from(Vec::new())),
            };
            self.http
                .put(&put)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(b)
        })?;
        Ok(())
    }

    /// Puts a manifest under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        image: &Reference,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), RegistryError> {
        let url = self.repository_url(image, &format!("manifests/{reference}"));
        self.send(image, &format!("manifest {reference}"), || {
            self.http
                .put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.to_vec())
        })?;
        Ok(())
    }

    /// Sends a request, authenticating with a bearer token when the
    /// registry asks for one, and maps failures to [`RegistryError`].
    fn send(
        &self,
        image: &Reference,
        what: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = format!("{} {}", image.registry, image.repository);
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let with_token = |req: RequestBuilder, token: &Option<String>| match token {
            Some(t) => req.header(AUTHORIZATION, t),
            None => req,
        };
        let mut resp = with_token(build(), &cached)
            .send()
            .map_err(|e| unreachable(image, &self.api_base(image), e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default();
            let creds = self.credentials.for_registry(&image.registry);
            let token = match (parse_bearer_challenge(&challenge), creds) {
                (Some(params), _) => format!("Bearer {}", self.token(image, &params)?),
                (None, Some((user, password)))
                    if challenge.to_ascii_lowercase().starts_with("basic") =>
                {
                    basic(user, password)
                }
                _ => {
                    return Err(RegistryError::Denied {
                        image: image.to_string(),
                        what: what.to_owned(),
                        status: 401,
                        hint: self.credentials.hint(&image.registry),
                    })
                }
            };
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, token.clone());
            resp = with_token(build(), &Some(token))
                .send()
                .map_err(|e| unreachable(image, &self.api_base(image), e))?;
        }
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        Err(match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                image: image.to_string(),
                what: what.to_owned(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Denied {
                image: image.to_string(),
                what: what.to_owned(),
                status: status.as_u16(),
                hint: self.credentials.hint(&image.registry),
            },
            _ => {
                let body = resp.text().unwrap_or_default();
                protocol(
                    image,
                    format!(
                        "{what}: HTTP {status}: {}",
                        body.chars().take(300).collect::<String>()
                    ),
                )
            }
        })
    }

    /// Gets an anonymous bearer token from the challenge's realm.
    fn token(
        &self,
        image: &Reference,
        params: &HashMap<String, String>,
    ) -> Result<String, RegistryError> {
        let realm = params
            .get("realm")
            .ok_or_else(|| protocol(image, "bearer challenge without a realm".into()))?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", image.repository));
        let mut query = vec![("scope", scope)];
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some((user, password)) = self.credentials.for_registry(&image.registry) {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().map_err(|e| unreachable(image, realm, e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Denied {
                image: image.to_string(),
                what: format!("a token from {realm}"),
                status: resp.status().as_u16(),
                hint: self.credentials.hint(&image.registry),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = resp
            .json()
            .map_err(|e| protocol(image, format!("token response from {realm}: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| protocol(image, format!("token response from {realm} holds no token")))
    }
}

/// An `Authorization: Basic` value.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn protocol(image: &Reference, detail: String) -> RegistryError {
    RegistryError::Protocol {
        image: image.to_string(),
        detail,
    }
}

fn unreachable(image: &Reference, url: &str, e: reqwest::Error) -> RegistryError {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    RegistryError::Unreachable {
        image: image.to_string(),
        url: url.to_owned(),
        detail,
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` into its parameters.
pub fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let (scheme, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
    }
}
