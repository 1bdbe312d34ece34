//! Which calls are retried, and how many times: counted on real sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hydra_api::HeartbeatRequest;
use hydra_client::{Client, ClientConfig, ClientError, RetryPolicy};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::{Behaviour, FakeReplica, client};

fn unavailable() -> Behaviour {
    Behaviour {
        is_master: true,
        fail_with: Some((
            503,
            r#"{"error":"storage_unavailable","message":"database is locked"}"#.to_owned(),
        )),
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn idempotent_calls_are_retried_up_to_the_bound_and_enrolment_is_not() {
    let replica = FakeReplica::start("a", unavailable()).await;
    let client = client(&[&replica.base_url], RetryPolicy::attempts(3));

    let heartbeat = client
        .heartbeat("body-1", &HeartbeatRequest::default())
        .await;
    let enrol = client.enrol(&Default::default()).await;
    let list = client.list_nodes().await;

    let expected = |path: &str| ClientError::Server {
        url: format!("{}{path}", replica.base_url),
        status: 503,
        code: "storage_unavailable".into(),
        message: "database is locked".into(),
    };
    assert_eq!(
        heartbeat.unwrap_err(),
        expected("/api/v1/nodes/body-1/heartbeat")
    );
    assert_eq!(enrol.unwrap_err(), expected("/api/v1/nodes"));
    assert_eq!(list.unwrap_err(), expected("/api/v1/nodes"));
    assert_eq!(replica.count("POST", "/api/v1/nodes/body-1/heartbeat"), 3);
    assert_eq!(
        replica.count("POST", "/api/v1/nodes"),
        1,
        "enrolment is not retried"
    );
    assert_eq!(replica.count("GET", "/api/v1/nodes"), 3);
}

#[tokio::test]
async fn a_read_tries_every_replica_on_each_attempt() {
    let first = FakeReplica::start("a", unavailable()).await;
    let second = FakeReplica::start("b", unavailable()).await;
    let client = client(
        &[&first.base_url, &second.base_url],
        RetryPolicy::attempts(2),
    );

    assert!(client.list_nodes().await.is_err());

    assert_eq!(first.count("GET", "/api/v1/nodes"), 2);
    assert_eq!(second.count("GET", "/api/v1/nodes"), 2);
}

/// A listener that accepts connections, reads what comes and never answers; counts accepts.
async fn silent_server() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        for _ in 0..32 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = socket.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                }
            });
        }
    });
    (url, accepted, task)
}

fn impatient_client(url: &str) -> Client {
    let mut config = ClientConfig::new([url])
        .with_token("admin-token")
        .with_retry(
            RetryPolicy::attempts(3)
                .with_delays(Duration::from_millis(5), Duration::from_millis(20)),
        );
    config.request_timeout = Duration::from_millis(300);
    let client = Client::new(config).unwrap();
    client.set_master_url(url).unwrap();
    client
}

#[tokio::test]
async fn an_enrolment_that_timed_out_is_indeterminate_and_not_retried() {
    let (url, accepted, task) = silent_server().await;
    let client = impatient_client(&url);

    let failed = client.enrol(&Default::default()).await.unwrap_err();

    match failed {
        ClientError::Indeterminate {
            url: failed_url,
            detail,
        } => {
            assert_eq!(failed_url, format!("{url}/api/v1/nodes"));
            assert!(detail.contains("timed out"), "{detail}");
        }
        other => panic!("expected Indeterminate, got {other:?}"),
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn a_heartbeat_that_timed_out_is_retried_within_the_bound() {
    let (url, accepted, task) = silent_server().await;
    let client = impatient_client(&url);

    let failed = client
        .heartbeat("body-1", &HeartbeatRequest::default())
        .await
        .unwrap_err();

    assert!(
        matches!(failed, ClientError::Unreachable { .. }),
        "{failed:?}"
    );
    // the timed-out master is forgotten, so each retry asks check-master first (and times out)
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    task.abort();
}
