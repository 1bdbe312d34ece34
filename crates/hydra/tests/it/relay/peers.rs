//! Placement through peers while the control plane is away, and one-hop forwarding (issue 11):
//! three agents with the mesh on loopback and a real server (SQLite). The server goes away; a
//! session asked of a full worker lands on the least-loaded peer (then the next, then none: `no
//! healthy workers available`); it is reachable through any worker (page and session API, one
//! hop, never two); the server comes back and shows each session, owned by the node that runs
//! it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hydra_agent::config::AgentConfig;
use serde_json::{Value, json};

use super::fleet::{Agent, Server, healthy_workers, state_dir};
use super::support::Body;

/// The operator's token, the same on every worker (a start forwarded to a peer carries it).
const OPERATOR: &str = "hyo_peer_test_operator_token";

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cluster.key");
    std::fs::write(&path, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_mesh(config: &mut AgentConfig, port: u16, peers: &[u16], key: &Path) {
    config.cluster.enabled = true;
    config.cluster.bind_port = port;
    config.cluster.advertise_addr = Some([127, 0, 0, 1].into());
    config.cluster.discovery_mode = "list".into();
    config.cluster.join_peers = peers
        .iter()
        .filter(|peer| **peer != port)
        .map(|peer| format!("127.0.0.1:{peer}"))
        .collect();
    config.cluster.key_file = Some(key.to_path_buf());
    config.api_token = Some(OPERATOR.into());
    config.health.interval = 1.0;
}

async fn get(url: String) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .get(url)
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn start_on(agent: SocketAddr, body_ip: &str) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .post(format!("http://{agent}/api/v1/sessions"))
        .bearer_auth(OPERATOR)
        .json(&json!({"body_ip": body_ip}))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// `node_id`'s published pending sessions as `seen_from` sees them.
async fn pending_of(seen_from: SocketAddr, node_id: &str) -> Option<u64> {
    let (_, cluster) = get(format!("http://{seen_from}/api/v1/cluster")).await;
    cluster["members"]
        .as_array()?
        .iter()
        .find(|member| member["node_id"] == node_id && member["state"] == "alive")?["pending"]
        .as_u64()
}

async fn poll(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn owner(session: &Value) -> &str {
    let id = session["session_id"].as_str().unwrap();
    id.split_once(':').map(|(node, _)| node).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_is_away_a_session_lands_on_the_least_loaded_peer_and_is_reachable_everywhere()
 {
    let temp = tempfile::tempdir().unwrap();
    let key = key_file(temp.path());
    let body = Body::start().await;
    let server = Server::start(Duration::from_secs(30)).await;
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let mut agents = Vec::new();
    for (index, (id, max)) in [("w-1", 1), ("w-2", 2), ("w-3", 2)].into_iter().enumerate() {
        let port = ports[index];
        let key = key.clone();
        agents.push(
            Agent::start_with(
                &server,
                id,
                &state_dir(temp.path(), id),
                &body,
                max,
                |config| with_mesh(config, port, &ports, &key),
            )
            .await,
        );
    }
    let address: Vec<SocketAddr> = agents.iter().map(|agent| agent.address).collect();
    let [w1, w2, w3] = [address[0], address[1], address[2]];
    healthy_workers(&server, 3).await;
    poll(
        "every worker sees the two others",
        Duration::from_secs(30),
        async || {
            for seen_from in address.iter() {
                for id in ["w-1", "w-2", "w-3"] {
                    let own =
                        get(format!("http://{seen_from}/api/v1/status")).await.1["node_id"] == id;
                    if !own && pending_of(*seen_from, id).await.is_none() {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;

    // While the server answers, a local start stays local and its id names its node.
    let (status, first) = start_on(w1, "127.0.0.1").await;
    assert_eq!((status, owner(&first)), (201, "w-1"), "{first}");
    let (status, on_w3) = start_on(w3, "127.0.0.1").await;
    assert_eq!((status, owner(&on_w3)), (201, "w-3"), "{on_w3}");
    poll("w-1 sees w-3 busy", Duration::from_secs(20), async || {
        pending_of(w1, "w-3").await == Some(1) && pending_of(w1, "w-2").await == Some(0)
    })
    .await;

    let away = server.go_away().await;
    poll("w-1 is degraded", Duration::from_secs(20), async || {
        get(format!("http://{w1}/api/v1/status")).await.1["control_plane"]["state"] == "degraded"
    })
    .await;

    // w-1 is full (1/1): the least-loaded peer is w-2 (0/2, w-3 is 1/2).
    let (status, placed) = start_on(w1, "127.0.0.1").await;
    assert_eq!((status, owner(&placed)), (201, "w-2"), "{placed}");
    let id = placed["session_id"].as_str().unwrap().to_owned();
    let stream_url = placed["stream_url"].as_str().unwrap().to_owned();
    assert!(
        stream_url.starts_with(&format!("http://{w2}/session/{id}/?")),
        "{stream_url}"
    );
    let capability = stream_url.split_once('?').unwrap().1.to_owned();

    // Reachable through any worker: the page (the owner checks the capability) and the API.
    for through in [w1, w2, w3] {
        let page = reqwest::get(format!("http://{through}/session/{id}/?{capability}"))
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "page through {through}");
        let text = page.text().await.unwrap();
        assert!(text.contains("stand-in stream") && text.contains("data-hydra-injected"));
        let (status, shown) = get(format!("http://{through}/api/v1/sessions/{id}")).await;
        assert_eq!(
            (status, &shown["status"]),
            (200, &json!("running")),
            "{shown}"
        );
        let refused = reqwest::get(format!("http://{through}/session/{id}/"))
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            404,
            "no capability, no page through {through}"
        );
    }
    // Never two hops: a forwarded request about a session that is not ours is 404.
    let twice = reqwest::Client::new()
        .get(format!("http://{w3}/api/v1/sessions/{id}"))
        .bearer_auth(OPERATOR)
        .header("x-hydra-forwarded", "w-1")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 404);

    // Next: w-2 1/2 and w-3 1/2 tie, w-2 by id; then w-3; then every worker is full.
    poll("w-1 sees w-2 busy", Duration::from_secs(20), async || {
        pending_of(w1, "w-2").await == Some(1)
    })
    .await;
    let (status, second) = start_on(w1, "127.0.0.1").await;
    assert_eq!((status, owner(&second)), (201, "w-2"), "{second}");
    poll("w-1 sees w-2 full", Duration::from_secs(20), async || {
        pending_of(w1, "w-2").await == Some(2)
    })
    .await;
    let (status, third) = start_on(w1, "127.0.0.1").await;
    assert_eq!((status, owner(&third)), (201, "w-3"), "{third}");
    poll("w-1 sees w-3 full", Duration::from_secs(20), async || {
        pending_of(w1, "w-3").await == Some(2)
    })
    .await;
    let (status, full) = start_on(w1, "127.0.0.1").await;
    assert_eq!(
        (status, &full["message"]),
        (503, &json!("no healthy workers available")),
        "{full}"
    );

    // The server is back: each session appears, owned by the node that runs it.
    let server = Server::come_back(away).await;
    let admin = server.admin();
    for (session, worker) in [
        (&placed, "w-2"),
        (&second, "w-2"),
        (&third, "w-3"),
        (&first, "w-1"),
        (&on_w3, "w-3"),
    ] {
        let session_id = session["session_id"].as_str().unwrap().to_owned();
        poll(
            &format!("the server shows {session_id}"),
            Duration::from_secs(60),
            async || {
                admin.session(&session_id).await.is_ok_and(|view| {
                    view.worker_id == worker && view.status == hydra_api::SessionState::Running
                })
            },
        )
        .await;
    }
    for agent in agents {
        agent.stop().await;
    }
}
