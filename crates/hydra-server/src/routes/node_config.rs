//! Config bundles: `GET /api/v1/nodes/{id}/config` (the node's own token or admin; `ETag` and
//! `304` on `If-None-Match`, so a poll that finds nothing new costs no body) and `PUT` (admin),
//! which validates the bundle, replaces it and bumps its version.

use axum::extract::State;
use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hydra_api::system::now_ms;
use hydra_api::{ConfigBundle, ErrorBody, NodeConfig};
use hydra_proxy::extract::{Json, Path};
use hydra_store::NodeConfigRecord;

use crate::auth::Caller;
use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// Most ICE servers in a bundle.
const MAX_ICE_SERVERS: usize = 32;
/// Most URLs of one ICE server.
const MAX_ICE_URLS: usize = 16;
/// Longest URL, user name or credential accepted.
const MAX_TEXT_LEN: usize = 2_048;
/// Live mesh members handed out in a bundle besides this replica (a joiner needs one).
const MESH_PEERS_OFFERED: usize = 3;

/// Checks what types alone do not; the message names the field (`sessions.max`,
/// `ice_servers[2].urls[0]`, ...).
pub fn check_bundle(bundle: &ConfigBundle) -> Result<(), ApiError> {
    let sessions = &bundle.sessions;
    if let Some(max) = sessions.max
        && !(1..=1_000).contains(&max)
    {
        return Err(ApiError::invalid(format!(
            "sessions.max must be between 1 and 1000, got {max}"
        )));
    }
    // Links shown to viewers: a path on the same site or a web URL, never `javascript:` and
    // the like; a report link may also be a `mailto:`.
    let web = ["http://", "https://"];
    if let Some(url) = &sessions.return_url {
        check_link("sessions.return_url", url, &web, true)?;
    }
    if let Some(url) = &sessions.report_url {
        check_link(
            "sessions.report_url",
            url,
            &["http://", "https://", "mailto:"],
            true,
        )?;
    }
    if let Some(url) = &sessions.rating_url {
        check_link("sessions.rating_url", url, &web, false)?;
    }
    if let Some(servers) = &bundle.ice_servers {
        if servers.len() > MAX_ICE_SERVERS {
            return Err(ApiError::invalid(format!(
                "ice_servers holds more than {MAX_ICE_SERVERS} servers"
            )));
        }
        for (index, server) in servers.iter().enumerate() {
            let urls = server.urls.as_slice();
            if urls.is_empty() || urls.len() > MAX_ICE_URLS {
                return Err(ApiError::invalid(format!(
                    "ice_servers[{index}].urls must hold 1 to {MAX_ICE_URLS} URLs"
                )));
            }
            for (url_index, url) in urls.iter().enumerate() {
                check_link(
                    &format!("ice_servers[{index}].urls[{url_index}]"),
                    url,
                    &["stun:", "stuns:", "turn:", "turns:"],
                    false,
                )?;
            }
            for (key, value) in [
                ("username", &server.username),
                ("credential", &server.credential),
            ] {
                if let Some(value) = value
                    && (value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control))
                {
                    // The value itself is not echoed: a credential is a secret.
                    return Err(ApiError::invalid(format!(
                        "ice_servers[{index}].{key} must be at most {MAX_TEXT_LEN} characters without control characters"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A link: at most [`MAX_TEXT_LEN`] characters, no whitespace or control characters, starting
/// with one of `schemes`, or with `/` (not `//`, which leaves the site) when `path_ok`.
fn check_link(field: &str, url: &str, schemes: &[&str], path_ok: bool) -> Result<(), ApiError> {
    if url.is_empty() || url.len() > MAX_TEXT_LEN {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {MAX_TEXT_LEN} characters"
        )));
    }
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '<' | '>'))
    {
        return Err(ApiError::invalid(format!(
            "{field} must not hold spaces, quotes, angle brackets or control characters"
        )));
    }
    let lower = url.to_ascii_lowercase();
    let scheme_ok = schemes
        .iter()
        .any(|scheme| lower.starts_with(scheme) && lower.len() > scheme.len());
    let path = path_ok && url.starts_with('/') && !url.starts_with("//");
    if !(scheme_ok || path) {
        let mut allowed: Vec<String> = schemes
            .iter()
            .map(|scheme| format!("{scheme}..."))
            .collect();
        if path_ok {
            allowed.push("/path".to_owned());
        }
        return Err(ApiError::invalid(format!(
            "{field} must be one of {}, got {url:?}",
            allowed.join(", ")
        )));
    }
    Ok(())
}

/// Whether an `If-None-Match` header value names `etag` (a list of tags, `*`, weak tags
/// compared weakly as RFC 9110 asks for `GET`).
pub fn if_none_match_hits(header: &str, etag: &str) -> bool {
    let strip_weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    header.trim() == "*"
        || header
            .split(',')
            .any(|candidate| strip_weak(candidate) == strip_weak(etag))
}

fn unknown_node(id: &str) -> ApiError {
    ApiError::not_found(format!("node {id:?} is not enrolled"))
}

fn answer(record: Option<NodeConfigRecord>, id: String) -> Result<NodeConfig, ApiError> {
    Ok(match record {
        None => NodeConfig::new(id, 0, None, ConfigBundle::default()),
        Some(record) => {
            let bundle: ConfigBundle = serde_json::from_str(&record.bundle).map_err(|error| {
                tracing::error!(node_id = %id, %error, "[controller] stored config bundle does not decode");
                ApiError::new(
                    hydra_api::ErrorCode::Internal,
                    "the stored config bundle is corrupt; see the server log",
                )
            })?;
            NodeConfig::new(id, record.version, Some(record.updated_at), bundle)
        }
    })
}

fn with_etag(config: NodeConfig) -> Response {
    let etag = HeaderValue::from_str(&config.etag).ok();
    let mut response = Json(config).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(ETAG, etag);
    }
    response
}

/// A node's config bundle (version 0 and an empty bundle when none was set): the node's own
/// token or the admin token. `304` when `If-None-Match` names the current `ETag`. When this
/// replica runs the mesh, `mesh` carries its keys and a few live members.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/config", tag = "nodes", security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id"),
        ("If-None-Match" = Option<String>, Header, description = "The `etag` of the bundle the caller has")),
    responses(
        (status = 200, description = "The bundle; `ETag` header set", body = NodeConfig),
        (status = 304, description = "Unchanged since the `ETag` sent"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.caller(&headers)? {
        Caller::Admin => {}
        Caller::Node(caller) if caller == id => {}
        Caller::Node(_) => {
            return Err(ApiError::forbidden(format!(
                "a node token may only read its own config, not {id:?}"
            )));
        }
    }
    let record = state
        .store()
        .get_node_config(&id)
        .await
        .map_err(store_error)?;
    if record.is_none()
        && state
            .store()
            .get_node(&id)
            .await
            .map_err(store_error)?
            .is_none()
    {
        return Err(unknown_node(&id));
    }
    // The mesh's keys and a few live members, from this replica's own mesh (issue 11).
    let offer = state.cluster().bundle_offer(&id, MESH_PEERS_OFFERED);
    let mut config = answer(record, id)?;
    if let Some(offer) = offer {
        let mesh = hydra_api::MeshBundle {
            keys: offer.keys,
            peers: offer.peers,
        };
        config = config.with_mesh(mesh, &offer.key_ids);
    }
    let hit = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| if_none_match_hits(value, &config.etag));
    if hit {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(etag) = HeaderValue::from_str(&config.etag) {
            response.headers_mut().insert(ETAG, etag);
        }
        return Ok(response);
    }
    Ok(with_etag(config))
}

/// Replaces a node's bundle and bumps its version (admin). The bundle is validated first;
/// nothing changes when a field is wrong.
#[utoipa::path(put, path = "/api/v1/nodes/{id}/config", tag = "nodes", request_body = ConfigBundle,
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "The stored bundle with its new version; `ETag` header set", body = NodeConfig),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(bundle): Json<ConfigBundle>,
) -> Result<Response, ApiError> {
    state.require_admin(&headers)?;
    check_bundle(&bundle)?;
    let text = serde_json::to_string(&bundle).map_err(|error| {
        ApiError::new(
            hydra_api::ErrorCode::Internal,
            format!("cannot encode the bundle: {error}"),
        )
    })?;
    let record = state
        .store()
        .put_node_config(&id, &text, now_ms())
        .await
        .map_err(store_error)?
        .ok_or_else(|| unknown_node(&id))?;
    // The bundle itself is not logged: it may hold TURN credentials.
    tracing::info!(node_id = %id, version = record.version, "[controller] node config replaced");
    Ok(with_etag(answer(Some(record), id)?))
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn verdict(json: &str) -> String {
        match serde_json::from_str::<ConfigBundle>(json) {
            Err(error) => format!("undecodable: {error}"),
            Ok(bundle) => match check_bundle(&bundle) {
                Ok(()) => "ok".to_owned(),
                Err(error) => error.message,
            },
        }
    }

    #[test]
    fn bundles_are_checked_field_by_field() {
        let table: Vec<String> = [
            r#"{}"#,
            r#"{"sessions":{"max":1000,"return_url":"/done","report_url":"mailto:ops@example.org","rating_url":"https://r.example.org/x"}}"#,
            r#"{"sessions":{"max":0}}"#,
            r#"{"sessions":{"max":1001}}"#,
            r#"{"sessions":{"return_url":"javascript:alert(1)"}}"#,
            r#"{"sessions":{"return_url":"//evil.example.org"}}"#,
            r#"{"sessions":{"report_url":"https://x.example.org/a b"}}"#,
            r#"{"sessions":{"rating_url":"/relative"}}"#,
            r#"{"sessions":{"rating_url":"https://"}}"#,
            r#"{"ice_servers":[{"urls":"stun:s.example.org"},{"urls":["turn:t.example.org","http://no"]}]}"#,
            r#"{"ice_servers":[{"urls":[]}]}"#,
            r#"{"ice_servers":[{"urls":"turn:t","credential":"a\nb"}]}"#,
        ]
        .into_iter()
        .map(|json| format!("{json}\n  -> {}", verdict(json)))
        .collect();
        expect![[r#"
            {}
              -> ok
            {"sessions":{"max":1000,"return_url":"/done","report_url":"mailto:ops@example.org","rating_url":"https://r.example.org/x"}}
              -> ok
            {"sessions":{"max":0}}
              -> sessions.max must be between 1 and 1000, got 0
            {"sessions":{"max":1001}}
              -> sessions.max must be between 1 and 1000, got 1001
            {"sessions":{"return_url":"javascript:alert(1)"}}
              -> sessions.return_url must be one of http://..., https://..., /path, got "javascript:alert(1)"
            {"sessions":{"return_url":"//evil.example.org"}}
              -> sessions.return_url must be one of http://..., https://..., /path, got "//evil.example.org"
            {"sessions":{"report_url":"https://x.example.org/a b"}}
              -> sessions.report_url must not hold spaces, quotes, angle brackets or control characters
            {"sessions":{"rating_url":"/relative"}}
              -> sessions.rating_url must be one of http://..., https://..., got "/relative"
            {"sessions":{"rating_url":"https://"}}
              -> sessions.rating_url must be one of http://..., https://..., got "https://"
            {"ice_servers":[{"urls":"stun:s.example.org"},{"urls":["turn:t.example.org","http://no"]}]}
              -> ice_servers[1].urls[1] must be one of stun:..., stuns:..., turn:..., turns:..., got "http://no"
            {"ice_servers":[{"urls":[]}]}
              -> ice_servers[0].urls must hold 1 to 16 URLs
            {"ice_servers":[{"urls":"turn:t","credential":"a\nb"}]}
              -> ice_servers[0].credential must be at most 2048 characters without control characters"#]].assert_eq(&table.join("\n"));
    }

    #[test]
    fn if_none_match_compares_lists_stars_and_weak_tags() {
        let etag = "\"v2-5\"";
        let table: Vec<String> = [
            "\"v2-5\"",
            "\"v1-5\", \"v2-5\"",
            "W/\"v2-5\"",
            "*",
            "\"v2-6\"",
            "",
        ]
        .into_iter()
        .map(|header| format!("{header:?} -> {}", if_none_match_hits(header, etag)))
        .collect();
        expect![[r#"
            "\"v2-5\"" -> true
            "\"v1-5\", \"v2-5\"" -> true
            "W/\"v2-5\"" -> true
            "*" -> true
            "\"v2-6\"" -> false
            "" -> false"#]]
        .assert_eq(&table.join("\n"));
    }
}
