//! The SDK against real server processes, not stand-in replicas: it finds a master through
//! `check-master`, and when that process dies (SIGKILL) the next write and read go to the
//! replica that is left. (Today every replica on its own storage is its own master; the issue
//! "Control-plane replicas" makes replicas share one state. This test is about the client.)

use hydra_api::{EnrolRequest, RoleWire};
use hydra_client::{Client, ClientConfig, ClientError};
use reqwest::Method;

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, free_loopback_port};

fn body(id: &str) -> EnrolRequest {
    serde_json::from_value(serde_json::json!({
        "id": id, "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"
    }))
    .expect("an enrolment request")
}

#[tokio::test]
async fn writes_and_reads_move_to_the_surviving_replica_when_the_master_dies() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<ServerProcess> = ["a", "b"]
        .iter()
        .map(|name| {
            let setup = ServerSetup::sqlite(&dir.path().join(name));
            ServerProcess::start_listening(&setup, &format!("127.0.0.1:{}", free_loopback_port()))
        })
        .collect();
    let mut config = ClientConfig::new(servers.iter().map(|server| server.url.clone()));
    config.token = Some(ADMIN_TOKEN.to_owned());
    let client = Client::new(config).expect("a client");

    let enrolled = client.enrol(&body("n-1")).await.expect("first enrolment");
    assert_eq!(enrolled.node.roles, [RoleWire::Body]);
    // The replica that took the write is the one the client treats as master.
    let mut holders = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let (status, _) = call(Method::GET, &server.api("/nodes/n-1"), None).await;
        if status == 200 {
            holders.push(index);
        }
    }
    assert_eq!(holders.len(), 1, "one replica took the write");
    let master = holders[0];
    assert_eq!(
        client.master_url().as_deref(),
        Some(servers[master].url.as_str())
    );

    let mut servers = servers;
    let survivor = servers.remove(1 - master);
    servers.pop().expect("the master").kill_9();

    // The first enrolment after the death may go out on the pooled keep-alive connection to the
    // dead master: then the SDK cannot know whether it landed and answers `Indeterminate`
    // without repeating it (an enrolment is not idempotent). Either way the master is forgotten.
    match client.enrol(&body("n-2")).await {
        Ok(_) | Err(ClientError::Indeterminate { .. }) => {}
        Err(other) => panic!("enrolment after the master died: {other}"),
    }
    // The next write finds the survivor as master; reads come from it.
    client.enrol(&body("n-3")).await.unwrap_or_else(|error| {
        panic!(
            "enrolment once the master is forgotten (survivor {}): {error}",
            survivor.url
        )
    });
    let (status, _) = call(Method::GET, &survivor.api("/nodes/n-3"), None).await;
    assert_eq!(status, 200);
    assert_eq!(client.master_url().as_deref(), Some(survivor.url.as_str()));
    let listed = client
        .list_nodes()
        .await
        .expect("a read after the master died");
    let ids: Vec<&str> = listed.nodes.iter().map(|node| node.id.as_str()).collect();
    assert!(
        ids.contains(&"n-3") && !ids.contains(&"n-1"),
        "reads come from the survivor: {ids:?}"
    );
}
