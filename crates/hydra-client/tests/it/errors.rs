//! What a caller sees: the server's messages in typed errors, the bearer token, the query of
//! the eligible list.

use hydra_client::{ClientError, EligibleQuery, Measurement, RetryPolicy};
use hydra_core::Transport;

use crate::support::{Behaviour, FakeReplica, client, dead_url};

fn failing_with(status: u16, body: &str) -> Behaviour {
    Behaviour {
        is_master: true,
        fail_with: Some((status, body.to_owned())),
        ..Behaviour::default()
    }
}

#[tokio::test]
async fn server_answers_become_typed_errors_with_the_server_message() {
    let cases = [
        (
            400,
            r#"{"error":"invalid_request","message":"unknown field `colour`"}"#,
            ClientError::Rejected {
                status: 400,
                code: "invalid_request".into(),
                message: "unknown field `colour`".into(),
            },
        ),
        (
            409,
            r#"{"error":"conflict","message":"node `body-1` exists already"}"#,
            ClientError::Rejected {
                status: 409,
                code: "conflict".into(),
                message: "node `body-1` exists already".into(),
            },
        ),
        (
            401,
            r#"{"error":"unauthorized","message":"wrong bearer token"}"#,
            ClientError::Unauthorized("wrong bearer token".into()),
        ),
        (
            403,
            r#"{"error":"forbidden","message":"a node token may only heartbeat itself"}"#,
            ClientError::Forbidden("a node token may only heartbeat itself".into()),
        ),
    ];
    for (status, body, expected) in cases {
        let replica = FakeReplica::start("a", failing_with(status, body)).await;
        let client = client(&[&replica.base_url], RetryPolicy::attempts(3));
        assert_eq!(
            client.list_nodes().await.unwrap_err(),
            expected,
            "read, {status}"
        );
        assert_eq!(
            client.set_drained("body-1", true).await.unwrap_err(),
            expected,
            "write, {status}"
        );
        assert_eq!(
            replica.api_calls().len(),
            2,
            "4xx is never retried ({status})"
        );
    }
}

#[tokio::test]
async fn not_found_carries_the_message_naming_the_node() {
    let replica = FakeReplica::start("a", Behaviour::default()).await;
    let client = client(&[&replica.base_url], RetryPolicy::attempts(3));
    assert_eq!(
        client.node("missing").await.unwrap_err(),
        ClientError::NotFound("no node `missing`".into())
    );
}

#[tokio::test]
async fn a_body_that_is_not_the_promised_json_is_a_decode_error() {
    let replica = FakeReplica::start("a", failing_with(200, r#"{"nodes": 3}"#)).await;
    let client = client(&[&replica.base_url], RetryPolicy::once());
    match client.list_nodes().await.unwrap_err() {
        ClientError::Decode { url, detail } => {
            assert_eq!(url, format!("{}/api/v1/nodes", replica.base_url));
            assert!(detail.contains("invalid type"), "{detail}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[tokio::test]
async fn every_request_carries_the_bearer_token() {
    let replica = FakeReplica::start(
        "a",
        Behaviour {
            is_master: true,
            ..Behaviour::default()
        },
    )
    .await;
    let admin = client(&[&replica.base_url], RetryPolicy::once());
    admin.health().await.unwrap();
    admin.remove_node("body-1").await.unwrap();
    let node = admin.with_token("node-token");
    node.heartbeat("body-1", &Default::default()).await.unwrap();

    let tokens: Vec<String> = replica
        .seen()
        .iter()
        .map(|seen| format!("{} {:?}", seen.path, seen.authorization))
        .collect();
    assert_eq!(
        tokens,
        [
            r#"/api/v1/health Some("Bearer admin-token")"#,
            r#"/api/v1/check-master Some("Bearer admin-token")"#,
            r#"/api/v1/nodes/body-1 Some("Bearer admin-token")"#,
            r#"/api/v1/nodes/body-1/heartbeat Some("Bearer node-token")"#,
        ]
    );
}

#[tokio::test]
async fn the_eligible_question_is_sent_as_the_server_reads_it() {
    let replica = FakeReplica::start("a", Behaviour::default()).await;
    let client = client(&[&replica.base_url], RetryPolicy::once());
    client
        .eligible(&EligibleQuery::Head {
            head_id: "head-1".into(),
            unreachable: vec!["body-a".into(), "body-b".into()],
            measured: vec![Measurement {
                body_id: "body-c".into(),
                transport: Transport::Wireguard,
                rtt_ms: 12,
            }],
        })
        .await
        .unwrap();
    client
        .eligible(&EligibleQuery::strict_venue("bxl1", "cloud seven"))
        .await
        .unwrap();
    let queries: Vec<Option<String>> = replica.seen().into_iter().map(|seen| seen.query).collect();
    assert_eq!(
        queries,
        [
            Some(
                "head_id=head-1&unreachable=body-a%2Cbody-b&measured=body-c%3Awireguard%3A12"
                    .to_owned()
            ),
            Some("district=bxl1&venue=cloud+seven".to_owned()),
        ]
    );
}

#[tokio::test]
async fn every_replica_down_names_them_all() {
    let first = dead_url().await;
    let second = dead_url().await;
    let client = client(&[&first, &second], RetryPolicy::attempts(2));
    match client.list_nodes().await.unwrap_err() {
        ClientError::Unreachable {
            replicas,
            last_error,
        } => {
            assert_eq!(replicas, [first.clone(), second.clone()]);
            assert!(last_error.contains("onnection refused"), "{last_error}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match client.enrol(&Default::default()).await.unwrap_err() {
        ClientError::Unreachable { replicas, .. } => {
            assert_eq!(replicas, [first, second]);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
