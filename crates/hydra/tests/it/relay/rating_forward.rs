//! Rating forwarding (issue 15): a viewer's rating is forwarded to `sessions.rating_url` as a JSON
//! POST naming the session, the worker and the stars. A real agent (the daemon, from its config)
//! behind a real server, and a loopback listener as the rating endpoint.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use tokio::sync::mpsc;

use super::fleet::{Agent, Server, for_body, healthy_workers, state_dir};
use super::support::Body;
use super::support::capability_of;

/// A rating endpoint on loopback: each POST body it receives goes to the channel.
async fn rating_endpoint() -> (String, mpsc::Receiver<serde_json::Value>) {
    async fn receive(
        State(sender): State<mpsc::Sender<serde_json::Value>>,
        axum::Json(body): axum::Json<serde_json::Value>,
    ) {
        let _ = sender.send(body).await;
    }
    let (sender, receiver) = mpsc::channel(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ratings", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/ratings", post(receive))
        .with_state(sender);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rating_is_posted_to_the_rating_url_with_the_session_and_its_stars() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(10)).await;
    let (url, mut received) = rating_endpoint().await;
    let agent = Agent::start_with(
        &server,
        "w-rate",
        &state_dir(temp.path(), "w-rate"),
        &body,
        1,
        |config| config.sessions.rating_url = Some(url),
    )
    .await;
    healthy_workers(&server, 1).await;
    let session = server.admin().create_session(&for_body()).await.unwrap();
    let viewer = capability_of(session.stream_url.as_deref().unwrap());

    let rated = reqwest::Client::new()
        .post(format!(
            "http://{}/session/{}/rating",
            agent.address, session.session_id
        ))
        .header("cookie", format!("hydra_viewer={viewer}"))
        .json(&serde_json::json!({ "stars": 3, "comment": "a bit of lag" }))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);

    let forwarded = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("the rating reaches the endpoint within 10 s")
        .unwrap();
    assert_eq!(forwarded["session_id"], session.session_id.as_str());
    assert_eq!(forwarded["worker_id"], "w-rate");
    assert_eq!(forwarded["stars"], 3);
    assert_eq!(forwarded["comment"], "a bit of lag");
    assert_eq!(forwarded["body_ip"], "127.0.0.1");
}
