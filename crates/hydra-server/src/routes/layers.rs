//! Two of the layers every request goes through (see `crate::app` for the order): forwarding
//! writes that reach a follower to the master, and read-your-writes. Write-id deduplication is
//! `crate::write_ids::dedup`, beside the store it reads.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_api::system::now_ms;
use hydra_store::Engine;

use crate::error::ApiError;
use crate::feed::MIN_REVISION_WAIT;
use crate::replica::FORWARDED_BY;
use crate::state::AppState;

/// The read-your-writes layer: waits for `min_revision=N` (then removes it from the query, so
/// routes never see it) and sets `X-Hydra-Revision` on every answer: the revision the views
/// reached or, after a write, this replica's last write's, whichever is higher.
pub async fn read_your_writes(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match take_min_revision(request.uri()) {
        Err(error) => return error.into_response(),
        Ok((None, _, _)) => {}
        Ok((Some(_), Some(feed_id), uri)) if feed_id != state.feed().feed_id() => {
            // A revision of another database (an independent server): it says nothing here.
            *request.uri_mut() = uri;
        }
        Ok((Some(wanted), _, uri)) => {
            *request.uri_mut() = uri;
            let feed = state.feed();
            if state.store().engine() == Engine::Sqlite {
                feed.advance(state.store().written_revision());
            }
            if let Err(at) = feed.wait_for(wanted, MIN_REVISION_WAIT).await {
                let lag_ms = feed.lag_ms(now_ms());
                return ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this replica's view is at revision {at}, behind the min_revision {wanted} asked for (lag {lag_ms} ms); try another replica"
                    ),
                )
                .into_response();
            }
        }
    }
    let writes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let mut response = next.run(request).await;
    let store = state.store();
    let feed = state.feed();
    if writes {
        if store.engine() == Engine::Sqlite {
            // The only writer patched its views before answering.
            feed.advance(store.written_revision());
        } else {
            feed.wake();
        }
    }
    let revision = feed.revision().max(store.written_revision());
    if let Ok(value) = HeaderValue::from_str(&revision.to_string()) {
        response
            .headers_mut()
            .insert(hydra_api::REVISION_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(feed.feed_id()) {
        response.headers_mut().insert(hydra_api::FEED_HEADER, value);
    }
    response
}

/// `min_revision` from the query (a 400 naming it when it is not a revision), the feed it
/// counts in (`min_revision_feed`) and the URI without either.
type MinRevision = (Option<i64>, Option<String>, Uri);

fn take_min_revision(uri: &Uri) -> Result<MinRevision, ApiError> {
    let Some(query) = uri.query() else {
        return Ok((None, None, uri.clone()));
    };
    let mut wanted = None;
    let mut feed_id = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((hydra_api::MIN_REVISION_PARAM, value)) => {
                let revision = value.parse::<i64>().ok().filter(|revision| *revision >= 0);
                wanted = Some(revision.ok_or_else(|| {
                    ApiError::invalid(format!(
                        "min_revision: expected a revision (a whole number >= 0), got {value:?}"
                    ))
                })?);
            }
            Some((hydra_api::MIN_REVISION_FEED_PARAM, value)) => feed_id = Some(value.to_owned()),
            _ => kept.push(pair),
        }
    }
    if wanted.is_none() && feed_id.is_none() {
        return Ok((None, None, uri.clone()));
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        rebuilt
            .parse()
            .map_err(|_| ApiError::invalid("min_revision: the query cannot be rebuilt"))?,
    );
    let uri = Uri::from_parts(parts).map_err(|_| ApiError::invalid("min_revision: bad URI"))?;
    Ok((wanted, feed_id, uri))
}

/// Whether `request` changes state: any method but GET/HEAD/OPTIONS under `/api/v1/`, and an
/// eligible-bodies query that carries latency samples (they are recorded).
fn is_write(request: &Request) -> bool {
    let path = request.uri().path();
    if !path.starts_with("/api/v1/") {
        return false;
    }
    match *request.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            path == "/api/v1/bodies/eligible"
                && request
                    .uri()
                    .query()
                    .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("measured=")))
        }
        _ => true,
    }
}

/// The HTTP client forwarding writes: bounded, no redirects followed.
fn forwarding_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the forwarding HTTP client builds")
    })
}

/// 503 with `Retry-After`, naming the replicas tried.
fn unavailable(message: String) -> Response {
    let mut response = ApiError::new(ErrorCode::Unavailable, message).into_response();
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    response
}

/// The layer in front of every route: a write reaching a replica that is not the master is
/// forwarded one hop to the master with the caller's headers (its token included), or
/// answered 503 with `Retry-After` when no master is known. A 503 of this replica (a write
/// fenced because it just lost the lease) gets `Retry-After` too.
pub async fn forward_writes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !is_write(&request) {
        return next.run(request).await;
    }
    let replica = state.replica();
    let view = replica.view();
    if view.is_master {
        let mut response = next.run(request).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .entry("retry-after")
                .or_insert(HeaderValue::from_static("1"));
        }
        return response;
    }
    if let Some(from) = request.headers().get(FORWARDED_BY) {
        let from = from.to_str().unwrap_or("another replica").to_owned();
        return unavailable(format!(
            "replica {} is not the master and does not forward a write forwarded by {from} (one hop); tried: {from}, {}",
            replica.id(),
            replica.advertise_url()
        ));
    }
    let master_url = view
        .master_url
        .filter(|url| url.as_str() != replica.advertise_url());
    let Some(master_url) = master_url else {
        return unavailable(format!(
            "no master is known right now (the lease is being taken over); tried: {}; retry",
            replica.advertise_url()
        ));
    };
    match forward(&state, request, &master_url).await {
        Ok(response) => {
            metrics::counter!("hydra_replica_forwarded_writes_total").increment(1);
            response
        }
        Err(error) => {
            tracing::warn!(%error, master_url, "[controller] forwarding a write to the master failed");
            unavailable(format!(
                "the master did not answer a forwarded write ({error}); tried: {}, {master_url}; retry",
                replica.advertise_url()
            ))
        }
    }
}

/// Sends `request` to `master_url` as it came (method, path, query, headers, body) and answers
/// the master's response.
async fn forward(state: &AppState, request: Request, master_url: &str) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let limit = state.settings().body_limit_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|error| format!("reading the request body: {error}"))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|error| error.to_string())?;
    let mut outgoing = forwarding_client().request(method, format!("{master_url}{path}"));
    for (name, value) in &parts.headers {
        if is_hop_header(name) {
            continue;
        }
        outgoing = outgoing.header(name.as_str(), value.as_bytes());
    }
    let answer = outgoing
        .header(FORWARDED_BY, state.replica().id())
        .body(body)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status =
        StatusCode::from_u16(answer.status().as_u16()).map_err(|error| error.to_string())?;
    let mut response = Response::builder().status(status);
    for (name, value) in answer.headers() {
        let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) else {
            continue;
        };
        if is_hop_header(&name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|error| error.to_string())?;
    response
        .body(Body::from(bytes))
        .map_err(|error| error.to_string())
}

/// Headers that belong to one connection, not to the request.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use axum::http::Uri;

    use super::take_min_revision;

    #[test]
    fn min_revision_is_taken_out_of_the_query_and_checked() {
        let cases = [
            ("/a", "None None /a"),
            ("/a?x=1", "None None /a?x=1"),
            ("/a?min_revision=7", "Some(7) None /a"),
            ("/a?x=1&min_revision=7&y=2", "Some(7) None /a?x=1&y=2"),
            (
                "/a?min_revision=7&min_revision_feed=f1&x=1",
                "Some(7) Some(\"f1\") /a?x=1",
            ),
            ("/a?min_revision=-1", "400"),
            ("/a?min_revision=seven", "400"),
        ];
        for (input, expected) in cases {
            let uri: Uri = input.parse().unwrap();
            let got = match take_min_revision(&uri) {
                Ok((wanted, feed_id, uri)) => format!("{wanted:?} {feed_id:?} {uri}"),
                Err(error) => {
                    assert!(error.message.contains("min_revision"), "{}", error.message);
                    "400".to_owned()
                }
            };
            assert_eq!(got, expected, "{input}");
        }
    }
}
