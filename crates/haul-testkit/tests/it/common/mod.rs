//! Helpers shared by the testkit's own tests.

use haul_testkit::http::send;
use haul_testkit::{Credentials, Registry};

/// GET `path` on the registry with an optional `Authorization` value;
/// returns the status and the `WWW-Authenticate` header.
pub(crate) fn get(registry: &Registry, path: &str, auth: Option<&str>) -> (u16, Option<String>) {
    let mut request = registry
        .http_agent()
        .get(&format!("{}{}", registry.url(), path));
    if let Some(auth) = auth {
        request = request.set("Authorization", auth);
    }
    let response = send(request).expect("transport");
    let challenge = response.header("WWW-Authenticate").map(str::to_string);
    (response.status(), challenge)
}

/// POST `path` (empty body) with an optional `Authorization` value.
pub(crate) fn post(registry: &Registry, path: &str, auth: Option<&str>) -> u16 {
    let mut request = registry
        .http_agent()
        .post(&format!("{}{}", registry.url(), path));
    if let Some(auth) = auth {
        request = request.set("Authorization", auth);
    }
    haul_testkit::http::send_bytes(request, b"")
        .expect("transport")
        .status()
}

/// Asks the registry's token server for `scopes`; returns the status and
/// the JSON body.
pub(crate) fn fetch_token(
    registry: &Registry,
    creds: Option<&Credentials>,
    scopes: &[&str],
) -> (u16, serde_json::Value) {
    let server = registry.token_server().expect("token registry");
    let agent = haul_testkit::http::http_agent(None).unwrap();
    let mut request = agent
        .get(&server.realm())
        .query("service", &server.config().service);
    for scope in scopes {
        request = request.query("scope", scope);
    }
    if let Some(creds) = creds {
        request = request.set("Authorization", &creds.basic_auth_header());
    }
    let response = send(request).expect("transport");
    let status = response.status();
    let body = response.into_string().unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// A bearer `Authorization` value from a successful token reply.
pub(crate) fn bearer(reply: &serde_json::Value) -> String {
    format!(
        "Bearer {}",
        reply["token"].as_str().expect("token in reply")
    )
}
