//! One hop between workers through the peer mesh (issue 11): a request about a session that
//! another node owns (its id is `<node_id>:<uuid>`, `hydra_core::session_id`) is forwarded to
//! that node's API, found among the mesh's live members; and, while no control plane answers, a
//! local start goes to the best peer (`hydra_core::peer::best_peer`).
//!
//! Never twice: a forwarded request carries [`FORWARDED`], and a forwarded request about a
//! session that is not ours is answered 404. Who may call is checked where the session lives:
//! the viewer capability and the bearer token go on untouched (the capability is signed with the
//! owner's agent key, which only the owner and the control plane hold). Connections to a peer
//! are pooled per peer and dropped when the mesh says it is down or left.
//!
//! A peer is reached only at a gossiped `api_url` whose host is the address the mesh hears that
//! member from (`hydra_core::liveness::api_url_heard_from`): gossip is relayed, so a state
//! naming another host could otherwise send requests, and the tokens they carry, anywhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hydra_api::ErrorCode;
use hydra_core::liveness::api_url_heard_from;
use hydra_core::peer::{PeerChoice, PeerLoad, best_peer};
use hydra_core::placement::PlacementError;
use hydra_core::session_id::{SessionId, parse_session_id};
use hydra_proxy::api_error::ApiError;
use hydra_proxy::proxy::{Forward, Proxy};
use tokio_util::sync::CancellationToken;

use crate::cluster::driver::ClusterHandle;
use crate::cluster::mesh::MeshEvent;
use crate::http::AgentState;

/// The header that marks a request one worker forwarded to another (its value: the sender's
/// node id).
pub const FORWARDED: HeaderName = HeaderName::from_static("x-hydra-forwarded");

/// Longest wait for a peer to answer a forwarded start (its body check and
/// `sessions.ready_timeout` run before it answers).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a request about a session is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: an old `s-` id, an id naming this node, or this node's id not known yet.
    Here,
    /// On the node the id names.
    Owner(String),
}

/// Where a request about session `id` goes, for a node whose id is `own_node_id`.
pub fn route(id: &str, own_node_id: Option<&str>) -> Route {
    match (parse_session_id(id), own_node_id) {
        (Ok(SessionId::Owned { node_id, .. }), Some(own)) if node_id != own => {
            Route::Owner(node_id.to_owned())
        }
        _ => Route::Here,
    }
}

/// A live member of the mesh as a forward sees it: its published API address and load, and
/// whether that address may be used.
#[derive(Debug, Clone)]
struct LivePeer {
    node_id: String,
    api_url: String,
    /// The mesh address its datagrams come from and go to (its identity's).
    mesh_addr: String,
    roles: Vec<String>,
    pending: u32,
    capacity: u32,
    /// `api_url`'s host is `mesh_addr`'s address.
    trusted: bool,
}

/// The live members that published an API address, from one snapshot of the mesh, each marked
/// whether a forward may go to it.
fn live_peers(cluster: &ClusterHandle) -> Vec<LivePeer> {
    cluster
        .status(true)
        .members
        .unwrap_or_default()
        .into_iter()
        .filter(|member| member.state == "alive")
        .filter_map(|member| {
            let api_url = member.api_url.filter(|url| !url.is_empty())?;
            let trusted = member
                .addr
                .parse::<SocketAddr>()
                .is_ok_and(|addr| api_url_heard_from(&api_url, addr.ip()));
            Some(LivePeer {
                node_id: member.node_id,
                api_url,
                mesh_addr: member.addr,
                roles: member.roles,
                pending: member.pending.unwrap_or(0),
                capacity: member.capacity.unwrap_or(0),
                trusted,
            })
        })
        .collect()
}

/// Logs (once per request) a live peer left out because its gossiped API address is not the
/// address the mesh hears it from.
fn warn_untrusted(peer: &LivePeer) {
    tracing::warn!(
        peer = %peer.node_id,
        api_url = %peer.api_url,
        mesh_addr = %peer.mesh_addr,
        "[forward] peer's gossiped api_url is not at its mesh address; not forwarded"
    );
}

/// One peer's pooled connections: the proxy (plain requests and WebSocket upgrades) and a
/// client for forwarded starts; dropped together when the peer leaves.
#[derive(Clone)]
struct PeerLink {
    api_url: String,
    target: SocketAddr,
    proxy: Proxy,
    http: reqwest::Client,
}

/// The pooled connections to peers, by node id.
#[derive(Clone, Default)]
pub struct Peers {
    links: Arc<Mutex<HashMap<String, PeerLink>>>,
    watching: Arc<std::sync::OnceLock<()>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Peers")
            .field("pooled", &self.pooled())
            .finish()
    }
}

impl Peers {
    /// Node ids of the peers with pooled connections now.
    pub fn pooled(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// The link to `node_id` at `api_url` (made, or remade when its URL changed); starts the
    /// watcher that drops links of peers the mesh declares down.
    async fn link(
        &self,
        node_id: &str,
        api_url: &str,
        cluster: &ClusterHandle,
        closed: &CancellationToken,
    ) -> Option<PeerLink> {
        if let Some(link) = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_id)
            .filter(|link| link.api_url == api_url)
        {
            return Some(link.clone());
        }
        let target = resolve(api_url).await?;
        let link = PeerLink {
            api_url: api_url.to_owned(),
            target,
            proxy: Proxy::new(closed.clone()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(START_TIMEOUT)
                .build()
                .ok()?,
        };
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node_id.to_owned(), link.clone());
        if self.watching.set(()).is_ok() {
            tokio::spawn(drop_departed(
                Arc::downgrade(&self.links),
                cluster.subscribe(),
                closed.clone(),
            ));
        }
        Some(link)
    }

    fn forget(&self, node_id: &str) {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }
}

/// Drops the pooled connections of each peer the mesh declares down (or that left), until the
/// agent stops or the pool is gone.
async fn drop_departed(
    links: Weak<Mutex<HashMap<String, PeerLink>>>,
    mut events: tokio::sync::broadcast::Receiver<MeshEvent>,
    closed: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = closed.cancelled() => return,
            event = events.recv() => event,
        };
        let Some(links) = links.upgrade() else { return };
        match event {
            Ok(MeshEvent::Down(id)) => {
                if links
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id.node_id)
                    .is_some()
                {
                    tracing::info!(peer = %id.node_id, "[forward] peer left the mesh; its connections dropped");
                }
            }
            Ok(_) => {}
            // Missed events: the next forward to a departed peer finds it gone from the live
            // members and drops it then.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The socket address of an `http://host:port` API URL (the first address, within 2 s).
async fn resolve(api_url: &str) -> Option<SocketAddr> {
    let parsed = reqwest::Url::parse(api_url).ok()?;
    let host = parsed.host_str()?.to_owned();
    let port = parsed.port_or_known_default()?;
    let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
    tokio::time::timeout(Duration::from_secs(2), lookup)
        .await
        .ok()?
        .ok()?
        .next()
}

/// The session id a path is about: `/api/v1/sessions/{id}` or `/session/{id}[/...]`.
fn session_in_path(path: &str) -> Option<&str> {
    let id = match path.strip_prefix("/api/v1/sessions/") {
        Some(rest) => rest,
        None => path.strip_prefix("/session/")?.split('/').next()?,
    };
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The live, trusted member that owns session `id`, or the 503 that says why a forward cannot go
/// to it (not a live member; its gossiped `api_url` is not at its mesh address).
fn trusted_owner(state: &AgentState, id: &str, owner: &str) -> Result<LivePeer, ApiError> {
    let Some(member) = live_peers(state.cluster())
        .into_iter()
        .find(|member| member.node_id == owner)
    else {
        state.peers().forget(owner);
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("session {id} runs on {owner}, which is not a live member of the mesh"),
        ));
    };
    if !member.trusted {
        state.peers().forget(owner);
        warn_untrusted(&member);
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "session {id} runs on {owner}, whose gossiped api_url {} is not at the address \
                 the mesh hears it from ({})",
                member.api_url, member.mesh_addr
            ),
        ));
    }
    Ok(member)
}

/// Middleware on the agent's routes: a request about a session another node owns goes one hop
/// to that node; everything else goes to the handlers here.
pub async fn one_hop(State(state): State<AgentState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let Some(raw_id) = session_in_path(&path) else {
        return next.run(request).await;
    };
    // A client may send the id's `:` percent-encoded.
    let id = raw_id.replace("%3A", ":").replace("%3a", ":");
    let own = state.heartbeat().node_id;
    let Route::Owner(owner) = route(&id, own.as_deref()) else {
        return next.run(request).await;
    };
    if request.headers().contains_key(&FORWARDED) {
        // Never a second hop: the sender thought it ours, and it is not.
        return ApiError::new(
            ErrorCode::NotFound,
            format!("session {id} is not known here"),
        )
        .into_response();
    }
    if path.starts_with("/api/v1/") && !state.token_accepted(request.headers()) {
        // The handler refuses it (401); nothing goes out for a caller without a token.
        return next.run(request).await;
    }
    let member = match trusted_owner(&state, &id, &owner) {
        Ok(member) => member,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(link) = state
        .peers()
        .link(
            &owner,
            &member.api_url,
            state.cluster(),
            state.monitor_closed(),
        )
        .await
    else {
        return ApiError::new(
            ErrorCode::BadGateway,
            format!("cannot resolve {owner}'s address {}", member.api_url),
        )
        .into_response();
    };
    let mut request = request;
    if let Some(own) = own
        .as_deref()
        .and_then(|own| HeaderValue::from_str(own).ok())
    {
        request.headers_mut().insert(FORWARDED, own);
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |raw| raw.as_str().to_owned());
    tracing::debug!(session_id = %id, %owner, "[forward] request forwarded to the session's node");
    let forward = Forward {
        target: link.target,
        path_and_query,
        prefix: String::new(),
        inject: None,
        connections: None,
        session_id: id,
    };
    link.proxy.forward(request, forward).await
}

/// A local start (`POST /api/v1/sessions` without `session_id`) while the health checker says
/// degraded: the best peer by the field's rule starts it. `None`: start it here. A start sent to
/// a peer that refused the connection (nothing reached it) is sent to the next-best peer once;
/// one that may have reached it is never sent again.
pub async fn place_while_degraded(
    state: &AgentState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    if headers.contains_key(&FORWARDED) || !state.ride_out().degraded() {
        return None;
    }
    let worker = state.worker()?;
    let own = state.heartbeat().node_id?;
    let members = trusted_workers(state.cluster());
    let local = PeerLoad {
        id: &own,
        alive: true,
        pending: worker.active_sessions(),
        capacity: worker.max_sessions(),
    };
    let mut refused: Vec<String> = Vec::new();
    for _attempt in 0..2 {
        let chosen = match choose_peer(&local, &members, &refused) {
            Ok(PeerChoice::Local) => return None,
            Ok(PeerChoice::Peer(id)) => id.to_owned(),
            Err(full) => {
                tracing::warn!(node_id = %own, "[forward] every worker of the mesh is full; start refused");
                return Some(
                    ApiError::new(ErrorCode::Unavailable, full.to_string()).into_response(),
                );
            }
        };
        let member = members.iter().find(|member| member.node_id == chosen)?;
        match send_start(state, member, &own, headers, body).await {
            StartSent::Answered(answer) => return Some(answer),
            StartSent::Refused => refused.push(chosen),
        }
    }
    Some(
        ApiError::new(
            ErrorCode::BadGateway,
            "the peers chosen for the session start could not be reached",
        )
        .into_response(),
    )
}

/// The live workers of the mesh a start may be sent to (an untrusted one is warned about and
/// left out).
fn trusted_workers(cluster: &ClusterHandle) -> Vec<LivePeer> {
    live_peers(cluster)
        .into_iter()
        .filter(|member| member.roles.iter().any(|role| role == "worker"))
        .filter(|member| {
            if !member.trusted {
                warn_untrusted(member);
            }
            member.trusted
        })
        .collect()
}

/// The field's best-peer rule over the members not `refused` yet.
fn choose_peer<'a>(
    local: &PeerLoad<'a>,
    members: &'a [LivePeer],
    refused: &[String],
) -> Result<PeerChoice<'a>, PlacementError> {
    let peers: Vec<PeerLoad<'a>> = members
        .iter()
        .filter(|member| !refused.contains(&member.node_id))
        .map(|member| PeerLoad {
            id: &member.node_id,
            alive: true,
            pending: member.pending,
            capacity: member.capacity,
        })
        .collect();
    best_peer(local, &peers)
}

/// How a start sent to a peer went.
enum StartSent {
    /// The answer to give the caller: the peer's, or a 502 when it may have started it.
    Answered(Response),
    /// Nothing reached the peer: the next-best one may be tried.
    Refused,
}

/// Sends the start to `member` (pooled link, the caller's token, marked forwarded).
async fn send_start(
    state: &AgentState,
    member: &LivePeer,
    own: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> StartSent {
    let chosen = &member.node_id;
    let Some(link) = state
        .peers()
        .link(
            chosen,
            &member.api_url,
            state.cluster(),
            state.monitor_closed(),
        )
        .await
    else {
        return StartSent::Refused;
    };
    let url = format!("{}/api/v1/sessions", member.api_url.trim_end_matches('/'));
    let mut outgoing = link
        .http
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(FORWARDED, own)
        .body(body.clone());
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        outgoing = outgoing.header(header::AUTHORIZATION, authorization.clone());
    }
    tracing::info!(peer = %chosen, pending = member.pending, capacity = member.capacity, "[forward] control plane away; session start sent to the least-loaded peer");
    match outgoing.send().await {
        Ok(answer) => StartSent::Answered(relay_answer(answer).await),
        Err(error) if error.is_connect() => {
            // Nothing reached it: safe to try the next-best peer, once.
            tracing::warn!(peer = %chosen, %error, "[forward] peer refused the connection; trying the next-best peer");
            state.peers().forget(chosen);
            StartSent::Refused
        }
        Err(error) => {
            // It may have started the session: never sent again.
            tracing::warn!(peer = %chosen, %error, "[forward] peer did not answer a session start");
            StartSent::Answered(
                ApiError::new(
                    ErrorCode::BadGateway,
                    format!(
                        "worker {chosen} did not answer the session start; it may have started it"
                    ),
                )
                .into_response(),
            )
        }
    }
}

/// A peer's answer, passed on with its status, content type and body.
async fn relay_answer(answer: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, Body::from(bytes)).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(error) => ApiError::new(
            ErrorCode::BadGateway,
            format!("the peer's answer to the session start broke off: {error}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_about_another_nodes_session_go_to_it() {
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let cases = [
            (
                format!("w-2:{uuid}"),
                Some("w-1"),
                Route::Owner("w-2".into()),
            ),
            (format!("w-1:{uuid}"), Some("w-1"), Route::Here),
            ("s-0123456789abcdef".to_owned(), Some("w-1"), Route::Here),
            (format!("w-2:{uuid}"), None, Route::Here),
            ("w-2:nope".to_owned(), Some("w-1"), Route::Here),
        ];
        for (id, own, expected) in cases {
            assert_eq!(route(&id, own), expected, "{id} at {own:?}");
        }
        for (path, id) in [
            ("/api/v1/sessions/w-2:x", Some("w-2:x")),
            ("/session/w-2:x", Some("w-2:x")),
            ("/session/w-2:x/", Some("w-2:x")),
            ("/session/w-2:x/ws/a", Some("w-2:x")),
            ("/session/w-2:x/quit", Some("w-2:x")),
            ("/api/v1/sessions", None),
            ("/api/v1/sessions/", None),
            ("/api/v1/sessions/a/b", None),
            ("/api/v1/status", None),
        ] {
            assert_eq!(session_in_path(path), id, "{path}");
        }
    }
}
