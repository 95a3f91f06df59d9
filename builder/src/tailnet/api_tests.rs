//! The API client against the local stand-in server (testapi), which
//! checks the documented request shapes.

use super::*;
use crate::tailnet::testapi::{FakeApi, CLIENT_ID, CLIENT_SECRET};

fn request(tags: &[&str]) -> KeyRequest {
    KeyRequest {
        tags: tags.iter().map(|s| s.to_string()).collect(),
        expiry: Duration::from_secs(3600),
        description: "nodeforge core".into(),
    }
}

#[test]
fn mints_a_tagged_single_use_preauthorized_key() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let client = OAuthClient::new(&api.url(), CLIENT_ID, CLIENT_SECRET).unwrap();
    let key = client.mint_key(&request(&["tag:core"])).unwrap();
    assert!(key.key.starts_with("tskey-auth-"), "{}", key.id);
    assert_eq!(api.live_keys().get(&key.id), Some(&key.key));

    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    let (token, create) = (&reqs[0], &reqs[1]);
    assert_eq!(
        (token.method.as_str(), token.path.as_str()),
        ("POST", "/api/v2/oauth/token")
    );
    assert_eq!(
        token.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert!(token.body.contains("grant_type=client_credentials"));
    assert!(!token.headers.contains_key("authorization"));
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/api/v2/tailnet/-/keys")
    );
    assert!(create.headers["authorization"].starts_with("Bearer "));
    assert_eq!(create.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "capabilities": {"devices": {"create": {
                "reusable": false, "ephemeral": false, "preauthorized": true,
                "tags": ["tag:core"]}}},
            "expirySeconds": 3600,
            "description": "nodeforge core",
        })
    );
    // The secret travels only in the token request's body.
    assert!(!format!("{client:?}{key:?}").contains("s3cr3t"));
    assert!(!format!("{key:?}").contains(&key.key));
}

#[test]
fn wrong_secret_is_a_credentials_error() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let client = OAuthClient::new(&api.url(), CLIENT_ID, "tskey-client-wrong").unwrap();
    let err = client.mint_key(&request(&["tag:core"])).unwrap_err();
    assert!(
        matches!(err, ApiError::BadCredentials { status: 401, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(CLIENT_ID) && msg.contains("secret"), "{msg}");
    assert!(!msg.contains("wrong"), "the secret leaked: {msg}");
    assert_eq!(
        api.requests().len(),
        1,
        "no key request after a refused token"
    );
}

#[test]
fn tag_not_permitted_names_the_tag_and_the_fix() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let client = OAuthClient::new(&api.url(), CLIENT_ID, CLIENT_SECRET).unwrap();
    let err = client.mint_key(&request(&["tag:data"])).unwrap_err();
    assert!(
        matches!(err, ApiError::KeyRefused { status: 400, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tag:data") && msg.contains("not permitted"),
        "{msg}"
    );
    assert!(msg.contains("tagOwners"), "{msg}");
    assert!(api.live_keys().is_empty());
}

#[test]
fn unreachable_api_names_the_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = OAuthClient::new(&url, CLIENT_ID, CLIENT_SECRET).unwrap();
    let err = client.mint_key(&request(&["tag:core"])).unwrap_err();
    assert!(matches!(err, ApiError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("--api"), "{msg}");
}

#[test]
fn revoke_deletes_the_key_and_unknown_ids_are_named() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let client = OAuthClient::new(&api.url(), CLIENT_ID, CLIENT_SECRET).unwrap();
    let key = client.mint_key(&request(&["tag:core"])).unwrap();
    client.revoke_key(&key.id).unwrap();
    assert!(api.live_keys().is_empty());
    let del = api.requests().pop().unwrap();
    assert_eq!(del.method, "DELETE");
    assert_eq!(del.path, format!("/api/v2/tailnet/-/keys/{}", key.id));
    assert!(del.headers["authorization"].starts_with("Bearer "));
    let err = client.revoke_key(&key.id).unwrap_err();
    assert!(matches!(err, ApiError::NoSuchKey(_)), "{err:?}");
    assert!(matches!(
        client.revoke_key("../../x"),
        Err(ApiError::Usage(_))
    ));
}

#[test]
fn expiry_is_bounded_before_any_request() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    let client = OAuthClient::new(&api.url(), CLIENT_ID, CLIENT_SECRET).unwrap();
    let mut req = request(&["tag:core"]);
    req.expiry = Duration::from_secs(91 * 86400);
    assert!(matches!(client.mint_key(&req), Err(ApiError::Usage(_))));
    assert!(api.requests().is_empty());
}

#[test]
fn form_values_are_escaped() {
    assert_eq!(form_encode("a b+c/=&"), "a+b%2Bc%2F%3D%26");
}

#[test]
fn replacing_a_host_removes_only_its_offline_devices() {
    let api = FakeApi::start(&["tag:core"]).unwrap();
    api.add_device("11111", "nxcore", "nxcore", false);
    api.add_device("22222", "nxcore", "nxcore-1", false);
    api.add_device("33333", "datacore", "datacore", true);
    let client = OAuthClient::new(&api.url(), CLIENT_ID, CLIENT_SECRET).unwrap();
    let removed = client.remove_stale_devices("nxcore").unwrap();
    assert_eq!(
        removed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["11111"]
    );
    assert_eq!(api.device_ids(), ["22222", "33333"]);
    let reqs = api.requests();
    let paths: Vec<(&str, &str)> = reqs
        .iter()
        .filter(|r| !r.path.ends_with("/oauth/token"))
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("GET", "/api/v2/tailnet/-/devices"),
            ("DELETE", "/api/v2/device/11111")
        ]
    );
    // Nothing of that name: nothing removed, no error.
    assert!(client.remove_stale_devices("ainode").unwrap().is_empty());
    // A running machine of that name is never removed.
    let err = client.remove_stale_devices("datacore").unwrap_err();
    assert!(
        matches!(&err, ApiError::DeviceOnline { id, .. } if id == "33333"),
        "{err}"
    );
    assert!(err.to_string().contains("datacore"), "{err}");
    assert_eq!(api.device_ids(), ["22222", "33333"]);
}
