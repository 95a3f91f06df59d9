//! Tailscale's API, the calls nodeforge needs: an OAuth client's access
//! token, then creating (or deleting) a tagged auth key with it, and
//! listing and deleting devices (a re-flashed machine's stale entry, so it
//! gets its name back instead of `name-1`).
//! Secrets (client secret, token, key) never appear in errors or Debug.

use std::fmt;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde::Deserialize;

pub const DEFAULT_API: &str = "https://api.tailscale.com";
/// Tailscale refuses auth keys that live longer than 90 days.
pub const MAX_EXPIRY_SECS: u64 = 90 * 86400;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Tailscale API at {api}: {detail} (check --api and this machine's network)")]
    Unreachable { api: String, detail: String },
    #[error("the Tailscale API refused OAuth client `{client_id}` ({status}): {message} — check the client ID and its secret (--oauth-secret-file or TS_OAUTH_CLIENT_SECRET)")]
    BadCredentials {
        client_id: String,
        status: u16,
        message: String,
    },
    #[error("the Tailscale API refused a key tagged {tags} ({status}): {message} — the OAuth client needs the auth_keys scope and these tags, and the tailnet policy's tagOwners must define them (`nodeforge tailnet policy`)")]
    KeyRefused {
        tags: String,
        status: u16,
        message: String,
    },
    #[error("the tailnet has no auth key `{0}` (404): check the key ID")]
    NoSuchKey(String),
    #[error("the Tailscale API answered {what} with {status}: {message}")]
    Http {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("the Tailscale API's answer to {what} is not what its documentation says: {detail}")]
    BadAnswer { what: &'static str, detail: String },
    #[error("device {name} ({id}) is connected to the tailnet right now: a running machine has that name, so it is not removed — give --replace the name of the machine being re-flashed")]
    DeviceOnline { name: String, id: String },
    #[error("{0}")]
    Usage(String),
}

/// A device of the tailnet, the fields `GET /api/v2/tailnet/-/devices`
/// documents that nodeforge reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    pub id: String,
    /// The machine's own hostname.
    #[serde(default)]
    pub hostname: String,
    /// Its MagicDNS name (`host.tailnet.ts.net`), where `-1` suffixes go.
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "connectedToControl")]
    pub connected: bool,
}

impl Device {
    /// The name the tailnet knows it by: the first label of its MagicDNS
    /// name, else its hostname.
    pub fn tailnet_name(&self) -> &str {
        self.name
            .split('.')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.hostname)
    }
}

#[derive(Deserialize)]
struct DevicesAnswer {
    devices: Vec<Device>,
}

/// An OAuth client (ID and secret) of a tailnet.
pub struct OAuthClient {
    api: String,
    client_id: String,
    secret: String,
    http: Client,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("api", &self.api)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What the new key may do.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub tags: Vec<String>,
    pub expiry: Duration,
    pub description: String,
}

/// A minted auth key.
pub struct MintedKey {
    pub id: String,
    /// The secret `tskey-auth-…` value.
    pub key: String,
    pub expires: Option<String>,
}

impl fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct KeyAnswer {
    id: String,
    key: Option<String>,
    expires: Option<String>,
}

impl OAuthClient {
    pub fn new(api: &str, client_id: &str, secret: &str) -> Result<Self, ApiError> {
        let api = api.trim_end_matches('/').to_owned();
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(ApiError::Usage(format!(
                "--api `{api}` must be an http:// or https:// URL"
            )));
        }
        if client_id.trim().is_empty() || secret.trim().is_empty() {
            return Err(ApiError::Usage(
                "the OAuth client ID and secret must not be empty".into(),
            ));
        }
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("nodeforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Usage(format!("cannot set up an HTTP client: {e}")))?;
        Ok(OAuthClient {
            api,
            client_id: client_id.trim().to_owned(),
            secret: secret.trim().to_owned(),
            http,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> ApiError {
        // reqwest's message names the URL, never a header or body.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        ApiError::Unreachable {
            api: self.api.clone(),
            detail,
        }
    }

    /// POST /api/v2/oauth/token (client credentials grant).
    pub fn access_token(&self) -> Result<String, ApiError> {
        let body = format!(
            "client_id={}&client_secret={}&grant_type=client_credentials",
            form_encode(&self.client_id),
            form_encode(&self.secret)
        );
        let resp = self
            .http
            .post(format!("{}/api/v2/oauth/token", self.api))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
        ) {
            return Err(ApiError::BadCredentials {
                client_id: self.client_id.clone(),
                status: status.as_u16(),
                message: message(resp),
            });
        }
        let answer: TokenAnswer = json(resp, "the OAuth token request")?;
        if answer.access_token.is_empty() {
            return Err(ApiError::BadAnswer {
                what: "the OAuth token request",
                detail: "empty access_token".into(),
            });
        }
        Ok(answer.access_token)
    }

    /// Mints a tagged, pre-approved, single-use, non-ephemeral auth key.
    pub fn mint_key(&self, req: &KeyRequest) -> Result<MintedKey, ApiError> {
        let secs = req.expiry.as_secs();
        if secs == 0 || secs > MAX_EXPIRY_SECS {
            return Err(ApiError::Usage(format!(
                "--expiry must be between 1s and 90d (Tailscale's limit), not {secs}s"
            )));
        }
        if req.tags.is_empty() {
            return Err(ApiError::Usage("a node key needs at least one tag".into()));
        }
        let token = self.access_token()?;
        let body = serde_json::json!({
            "capabilities": {"devices": {"create": {
                "reusable": false,
                "ephemeral": false,
                "preauthorized": true,
                "tags": req.tags,
            }}},
            "expirySeconds": secs,
            "description": req.description,
        });
        let resp = self
            .http
            .post(format!("{}/api/v2/tailnet/-/keys", self.api))
            .bearer_auth(&token)
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_client_error() && status != StatusCode::UNAUTHORIZED {
            return Err(ApiError::KeyRefused {
                tags: req.tags.join(","),
                status: status.as_u16(),
                message: message(resp),
            });
        }
        let answer: KeyAnswer = json(resp, "the key creation request")?;
        let key = answer
            .key
            .filter(|k| k.starts_with("tskey-"))
            .ok_or_else(|| ApiError::BadAnswer {
                what: "the key creation request",
                detail: "no `key` starting with tskey-".into(),
            })?;
        Ok(MintedKey {
            id: answer.id,
            key,
            expires: answer.expires,
        })
    }

    /// GET /api/v2/tailnet/-/devices.
    pub fn devices(&self) -> Result<Vec<Device>, ApiError> {
        let token = self.access_token()?;
        let resp = self
            .http
            .get(format!("{}/api/v2/tailnet/-/devices", self.api))
            .bearer_auth(&token)
            .header("Accept", "application/json")
            .send()
            .map_err(|e| self.unreachable(e))?;
        Ok(json::<DevicesAnswer>(resp, "the device list request")?.devices)
    }

    /// Removes the offline devices named `hostname` (by their tailnet name,
    /// so an earlier `hostname-1` is left alone), through
    /// DELETE /api/v2/device/{id}; returns those removed. A device of that
    /// name that is online is refused: it is a running machine.
    pub fn remove_stale_devices(&self, hostname: &str) -> Result<Vec<Device>, ApiError> {
        let stale: Vec<Device> = self
            .devices()?
            .into_iter()
            .filter(|d| d.tailnet_name() == hostname)
            .collect();
        if let Some(d) = stale
            .iter()
            .find(|d| d.id.is_empty() || !d.id.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(ApiError::BadAnswer {
                what: "the device list request",
                detail: format!("device ID `{}` is not letters and digits", d.id),
            });
        }
        if let Some(d) = stale.iter().find(|d| d.connected) {
            return Err(ApiError::DeviceOnline {
                name: d.tailnet_name().to_owned(),
                id: d.id.clone(),
            });
        }
        let token = self.access_token()?;
        for d in &stale {
            let resp = self
                .http
                .delete(format!("{}/api/v2/device/{}", self.api, d.id))
                .bearer_auth(&token)
                .send()
                .map_err(|e| self.unreachable(e))?;
            succeeded(resp, "the device deletion request")?;
        }
        Ok(stale)
    }

    /// DELETE /api/v2/tailnet/-/keys/{id}.
    pub fn revoke_key(&self, id: &str) -> Result<(), ApiError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ApiError::Usage(format!(
                "`{id}` is not a key ID (letters and digits, e.g. kXXXXXXXXX11CNTRL)"
            )));
        }
        let token = self.access_token()?;
        let resp = self
            .http
            .delete(format!("{}/api/v2/tailnet/-/keys/{id}", self.api))
            .bearer_auth(&token)
            .send()
            .map_err(|e| self.unreachable(e))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(ApiError::NoSuchKey(id.to_owned())),
            _ => Err(http_error(resp, "the key deletion request")),
        }
    }
}

fn json<T: serde::de::DeserializeOwned>(resp: Response, what: &'static str) -> Result<T, ApiError> {
    let resp = succeeded(resp, what)?;
    let text = resp.text().map_err(|e| ApiError::BadAnswer {
        what,
        detail: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ApiError::BadAnswer {
        what,
        detail: format!("{e}"),
    })
}

/// `resp` when its status is a success; else the error of `what` with
/// the status and the API's message.
fn succeeded(resp: Response, what: &'static str) -> Result<Response, ApiError> {
    match resp.status().is_success() {
        true => Ok(resp),
        false => Err(http_error(resp, what)),
    }
}

fn http_error(resp: Response, what: &'static str) -> ApiError {
    ApiError::Http {
        what,
        status: resp.status().as_u16(),
        message: message(resp),
    }
}

/// The API's error text: its JSON `message`, else the start of the body.
fn message(resp: Response) -> String {
    let text = resp.text().unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v["message"].is_string() => v["message"].as_str().unwrap_or("").to_owned(),
        _ => {
            let t: String = text.trim().chars().take(300).collect();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t
            }
        }
    }
}

/// application/x-www-form-urlencoded value encoding.
fn form_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
