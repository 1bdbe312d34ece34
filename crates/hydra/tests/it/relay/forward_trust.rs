//! The one-hop forward trusts a gossiped `api_url` only at the member's mesh address (issue 11):
//! a real agent (worker, mesh on loopback, SQLite server) and two mesh members in this process.
//! `w-2` publishes an API on the address it gossips from and is forwarded to; `w-3` gossips
//! from 127.0.0.1 but publishes an API on 127.0.0.2 (a state relayed or forged by another
//! member looks the same): a request about its session is refused and nothing reaches 127.0.0.2.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::Body;
use crate::support::{MeshMember, MeshMemberSpec, mesh_member, write_key_file};

const OPERATOR: &str = "hyo_forward_trust_operator_token";
const KEY_HEX: &str = "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b";
const UUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// A worker of the mesh in this process, publishing `api_url`; leaves when dropped.
async fn member(node_id: &str, api_url: &str, join: &str) -> MeshMember {
    mesh_member(MeshMemberSpec {
        node_id,
        role: "worker",
        capacity: 4,
        venue: "cloud-seven",
        api_url,
        join,
        key_hex: KEY_HEX,
    })
    .await
}

/// An HTTP peer on `ip` answering every request with `{"answered_by": name}`; counts the
/// requests it answered.
async fn peer_api(ip: &str, name: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { axum::Json(serde_json::json!({"answered_by": name})) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, accepted)
}

async fn get(url: String) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .get(url)
        .bearer_auth(OPERATOR)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossiped_api_url_away_from_the_members_mesh_address_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let key = temp.path().join("cluster.key");
    write_key_file(&key, KEY_HEX);
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(30)).await;
    let mesh_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = Agent::start_with(
        &server,
        "w-1",
        &state_dir(temp.path(), "w-1"),
        &body,
        1,
        |config| {
            config.cluster.enabled = true;
            config.cluster.bind_port = mesh_port;
            config.cluster.advertise_addr = Some([127, 0, 0, 1].into());
            config.cluster.discovery_mode = "list".into();
            config.cluster.key_file = Some(key.clone());
            config.api_token = Some(OPERATOR.into());
        },
    )
    .await;
    healthy_workers(&server, 1).await;
    let w1 = agent.address;

    let (honest_url, honest_hits) = peer_api("127.0.0.1", "w-2").await;
    let (elsewhere_url, elsewhere_hits) = peer_api("127.0.0.2", "elsewhere").await;
    let join = format!("127.0.0.1:{mesh_port}");
    let _w2 = member("w-2", &honest_url, &join).await;
    let _w3 = member("w-3", &elsewhere_url, &join).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, cluster) = get(format!("http://{w1}/api/v1/cluster")).await;
        let published = |id: &str| {
            cluster["members"].as_array().is_some_and(|members| {
                members.iter().any(|member| {
                    member["node_id"] == id
                        && member["state"] == "alive"
                        && member["api_url"].is_string()
                })
            })
        };
        if published("w-2") && published("w-3") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "w-1 sees w-2 and w-3 alive with their api_url: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // At its mesh address: forwarded one hop.
    let (status, answer) = get(format!("http://{w1}/api/v1/sessions/w-2:{UUID}")).await;
    assert_eq!(
        (status, &answer["answered_by"]),
        (200, &Value::from("w-2")),
        "{answer}"
    );
    assert_eq!(honest_hits.load(Ordering::SeqCst), 1);

    // Away from it: refused, naming both addresses; nothing went to 127.0.0.2.
    let (status, refused) = get(format!("http://{w1}/api/v1/sessions/w-3:{UUID}")).await;
    assert_eq!(status, 503, "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&elsewhere_url) && message.contains("not at the address"),
        "{refused}"
    );
    assert!(refused["error"].is_string(), "{refused}");
    let page = reqwest::get(format!("http://{w1}/session/w-3:{UUID}/"))
        .await
        .unwrap();
    assert_eq!(page.status(), 503);
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
}
