//! The server's colocated `/session/{id}/...` route with a real server (SQLite) and a real agent
//! in this process, over loopback: the review's reproduction refused through the server, the
//! viewer capability (cookie, WebSocket, microphone offer, rating, quit; expired and foreign
//! ones refused), the raw
//! path and query forwarded byte for byte through both proxies, and malformed session ids
//! refused before the store.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hydra_api::SessionState;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::fleet::{Agent, Server, for_body, healthy_workers, state_dir};
use super::support::{Body, Logs, http_get, wait_for};

/// The capability query (`hydra_viewer=...`) of a stream URL.
fn capability_query(stream_url: &str) -> String {
    let (_, query) = stream_url
        .split_once('?')
        .expect("a capability in the stream URL");
    assert!(query.starts_with("hydra_viewer="), "{stream_url}");
    query.to_owned()
}

/// What the session process `id` of the agent in `state` logged (one line per request URI).
fn session_log(state: &Path, id: &str) -> String {
    std::fs::read_to_string(state.join("sessions").join(id).join("web-server.log"))
        .unwrap_or_default()
}

/// Issue 7 item 1 through the server: without the capability the colocated page, quit and
/// rating are refused as if the session did not exist; another session's capability or a forged
/// expiry opens nothing; with the capability the page sets the session cookie, and the WebSocket,
/// rating and quit work with the cookie alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_colocated_route_needs_the_sessions_capability() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let _agent = Agent::start(&server, "w-cap", &state_dir(temp.path(), "w-cap"), &body, 3).await;
    healthy_workers(&server, 1).await;
    let admin = server.admin();
    let session = admin.create_session(&for_body()).await.unwrap();
    let other = admin.create_session(&for_body()).await.unwrap();
    let id = &session.session_id;
    let capability = capability_query(session.stream_url.as_deref().unwrap());
    let other_capability = capability_query(other.stream_url.as_deref().unwrap());
    // The store keeps the URL without the capability; an admin reading the session gets a
    // freshly minted one that opens the page too.
    let stored = server.state.store().get_session(id).await.unwrap().unwrap();
    assert!(
        !stored.stream_url.unwrap().contains("hydra_viewer"),
        "the store keeps the capability"
    );
    let reminted = admin.session(id).await.unwrap().stream_url.unwrap();
    let reminted_page = format!(
        "{}/session/{id}/?{}",
        server.url,
        capability_query(&reminted)
    );
    assert_eq!(reqwest::get(&reminted_page).await.unwrap().status(), 200);
    let client = reqwest::Client::new();
    let page_url = |query: &str| format!("{}/session/{id}/?{query}", server.url);

    // The review's reproduction: the id alone.
    let page = client.get(page_url("")).send().await.unwrap();
    assert_eq!(page.status(), 404);
    let quit = client
        .post(format!("{}/session/{id}/quit", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 404);
    let (signed_expiry, signature) = capability
        .trim_start_matches("hydra_viewer=")
        .split_once('.')
        .unwrap();
    let forged = format!(
        "hydra_viewer={}.{signature}",
        signed_expiry.parse::<u64>().unwrap() + 3600
    );
    for refused in [
        other_capability.as_str(),
        forged.as_str(),
        "hydra_viewer=1.00",
    ] {
        let page = client.get(page_url(refused)).send().await.unwrap();
        assert_eq!(page.status(), 404, "{refused}");
        let quit = client
            .post(format!("{}/session/{id}/quit", server.url))
            .header("cookie", refused)
            .send()
            .await
            .unwrap();
        assert_eq!(quit.status(), 404, "{refused}");
    }
    assert_eq!(
        admin.session(id).await.unwrap().status,
        SessionState::Running
    );

    // With it: the page, then the cookie for everything the page does.
    let page = client.get(page_url(&capability)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with(&format!("{capability}; Path=/session/{id}/;"))
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(page.text().await.unwrap().contains("data-hydra-injected"));
    let mut request = format!(
        "ws://{}/session/{id}/ws",
        server.url.trim_start_matches("http://")
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("cookie", capability.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::text("ping")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("echo: ping"));
    drop(socket);
    // The microphone offer goes through too: refused without the capability, answered by the
    // agent's handler with it (a bad offer named by the agent).
    let mic_url = format!("{}/session/{id}/mic/offer", server.url);
    let mic = client
        .post(&mic_url)
        .json(&serde_json::json!({ "sdp": "not sdp" }))
        .send()
        .await
        .unwrap();
    assert_eq!(mic.status(), 404);
    let mic = client
        .post(&mic_url)
        .header("cookie", &capability)
        .json(&serde_json::json!({ "sdp": "not sdp" }))
        .send()
        .await
        .unwrap();
    assert_eq!(mic.status(), 400);
    let refusal: serde_json::Value = mic.json().await.unwrap();
    assert!(
        refusal["message"].as_str().unwrap().starts_with("sdp"),
        "{refusal}"
    );
    let rated = client
        .post(format!("{}/session/{id}/rating", server.url))
        .header("cookie", &capability)
        .json(&serde_json::json!({ "stars": 4 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);
    let quit = client
        .post(format!("{}/session/{id}/quit", server.url))
        .header("cookie", &capability)
        .send()
        .await
        .unwrap();
    assert_eq!(quit.status(), 200);
    let answer: serde_json::Value = quit.json().await.unwrap();
    assert_eq!(answer["status"], "stopped");
}

/// A capability past its expiry (`sessions.viewer_ttl`) is refused through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_capability_is_refused_through_the_server() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let dir = state_dir(temp.path(), "w-ttl");
    let _agent = Agent::start_with(&server, "w-ttl", &dir, &body, 2, |config| {
        config.sessions.viewer_ttl = 3.0;
    })
    .await;
    healthy_workers(&server, 1).await;
    let session = server.admin().create_session(&for_body()).await.unwrap();
    let capability = capability_query(session.stream_url.as_deref().unwrap());
    let expiry_s: u64 = capability
        .trim_start_matches("hydra_viewer=")
        .split_once('.')
        .unwrap()
        .0
        .parse()
        .unwrap();
    let page = format!(
        "{}/session/{}/?{capability}",
        server.url, session.session_id
    );
    // Wait (bounded) until the wall clock has passed the signed expiry, then ask.
    wait_for("the capability expires", Duration::from_secs(10), || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            >= expiry_s
    })
    .await;
    let answer = reqwest::get(&page).await.unwrap();
    assert_eq!(answer.status(), 404);
}

/// Issue 7 item 9 through both proxies: the path and query reach the session process as the
/// browser sent them, with only the capability taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_colocated_route_forwards_the_raw_path_and_query_byte_for_byte() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let dir = state_dir(temp.path(), "w-raw");
    let _agent = Agent::start(&server, "w-raw", &dir, &body, 2).await;
    healthy_workers(&server, 1).await;
    let session = server.admin().create_session(&for_body()).await.unwrap();
    let id = &session.session_id;
    let capability = capability_query(session.stream_url.as_deref().unwrap());
    let address = server.url.trim_start_matches("http://").parse().unwrap();
    for raw in [
        "/..%2F..%2Fapi%2Fv1%2Fsessions",
        "/a%2Fb/%2541?q=%25&r=%2F",
        "/%C3%A9t%C3%A9/caf%C3%A9?name=%C3%A9",
        "/%2e%2e/%2E/x",
    ] {
        let (path, query) = raw.split_once('?').unwrap_or((raw, ""));
        let sent = if query.is_empty() {
            format!("/session/{id}{path}?{capability}")
        } else {
            format!("/session/{id}{path}?{query}&{capability}")
        };
        let answer = http_get(address, &sent).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{sent}: {answer}");
        let expected = format!("GET {raw}\n");
        wait_for(
            &format!("the stand-in logs {raw}"),
            Duration::from_secs(5),
            || session_log(&dir, id).contains(&expected),
        )
        .await;
    }
    assert!(!session_log(&dir, id).contains("hydra_viewer"));
}

/// Issue 7 ("Also") and item 3: a CRLF or NUL in `/session/{id}` is a 400 naming the id (it was
/// an empty 200, and a 503 with a WARN line from the store); an id the server cannot have made
/// is refused the same way, and a well-formed id without a capability gets the unknown-session
/// answer, all without a store lookup or a warning.
#[tokio::test]
async fn a_malformed_session_id_is_refused_before_the_store() {
    let server = Server::start(Duration::from_secs(10)).await;
    let address = server.url.trim_start_matches("http://").parse().unwrap();
    let logs = Logs::capture();
    for path in [
        "/session/%0D%0A",
        "/session/a%0D%0ALocation:%20x/",
        "/session/%00/",
        "/session/%00/x",
        "/session/not-a-server-id/",
    ] {
        let answer = http_get(address, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains(r#""error":"invalid_request""#) && answer.contains("session id"),
            "{path}: {answer}"
        );
    }
    let unknown = http_get(address, "/session/s-0123456789abcdef/").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let text = logs.text();
    assert!(!text.contains("WARN"), "{text}");
}
