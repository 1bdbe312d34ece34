//! Views that follow every write (issue 9, part B): several `hydra server` processes on one
//! PostgreSQL database, written through one and read through the others. A write's answer
//! carries `X-Hydra-Revision`; a read with `min_revision` waits until the replica's view reached
//! it; without it the write shows within a bounded poll; a follower whose `LISTEN` connection is
//! cut, or whose database goes away under load, catches up by itself.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, http};

/// `count` replicas on one fresh database (each its own data dir).
async fn replicas(
    label: &str,
    count: usize,
) -> (String, Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    let url = hydra_store::testing::fresh_postgres_database(label).await;
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = ServerSetup::sqlite(dir.path());
        setup.database_url = Some(url.clone());
        servers.push(ServerProcess::start(&setup));
        dirs.push(dir);
    }
    (url, servers, dirs)
}

/// Sends a write with the admin token; answers (status, body, the `X-Hydra-Revision` it carries).
async fn write(
    method: Method,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value, i64) {
    let response = http()
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("request to {url} failed: {error}"));
    let status = response.status().as_u16();
    let revision = response
        .headers()
        .get(hydra_api::REVISION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no {} header on the answer of {url}",
                hydra_api::REVISION_HEADER
            )
        });
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json, revision)
}

fn body(id: &str) -> serde_json::Value {
    json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme", "vram_mb": 8192})
}

async fn health(server: &ServerProcess) -> serde_json::Value {
    let (status, health) = call(Method::GET, &server.api("/health"), None).await;
    assert_eq!(status, 200, "{health}");
    health
}

#[tokio::test]
async fn a_write_through_one_replica_is_read_on_every_other() {
    let (_url, servers, _dirs) = replicas("feed_read", 3).await;
    let (writer, readers) = servers.split_first().unwrap();
    let (status, answer, enrolled_at) =
        write(Method::POST, &writer.api("/nodes"), body("b-1")).await;
    assert_eq!(status, 201, "{answer}");
    assert!(enrolled_at > 0);
    // With min_revision, every other replica answers with the write at once (it waits for its
    // view, bounded).
    for reader in readers {
        let (status, node) = call(
            Method::GET,
            &reader.api(&format!("/nodes/b-1?min_revision={enrolled_at}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{} {node}", reader.url);
        assert_eq!(node["id"], "b-1");
    }
    // Heartbeat and drain through the writer: selection on the readers (from memory) follows.
    let (status, answer, _) = write(
        Method::POST,
        &writer.api("/nodes/b-1/heartbeat"),
        json!({"idle": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) = write(
        Method::POST,
        &writer.api("/nodes"),
        json!({"id": "h-1", "roles": ["head"], "district": "bxl1", "venue": "v1", "owner": "acme"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    for reader in readers {
        // Without min_revision: within a bounded poll.
        assert!(
            eventually(Duration::from_secs(10), async || {
                let (status, answer) = call(
                    Method::GET,
                    &reader.api("/bodies/eligible?head_id=h-1"),
                    None,
                )
                .await;
                status == 200 && crate::support::ids(&answer) == ["b-1"]
            })
            .await,
            "{} never offered b-1",
            reader.url
        );
    }
    let (status, answer, drained_at) = write(
        Method::POST,
        &writer.api("/nodes/b-1/drain"),
        json!({"drained": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(drained_at > enrolled_at);
    for reader in readers {
        let (status, answer) = call(
            Method::GET,
            &reader.api(&format!(
                "/bodies/eligible?head_id=h-1&min_revision={drained_at}"
            )),
            None,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            crate::support::ids(&answer).is_empty(),
            "{} still offers a drained body: {answer}",
            reader.url
        );
        let health = health(reader).await;
        assert!(
            health["revision"].as_i64().unwrap() >= drained_at,
            "{health}"
        );
        assert_eq!(health["lag_ms"], 0, "{health}");
    }
    // A revision no replica reached: 503 naming the lag, after the bounded wait.
    let (status, answer) = call(
        Method::GET,
        &readers[0].api("/nodes/b-1?min_revision=999999"),
        None,
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("min_revision 999999"),
        "{answer}"
    );
    let (status, answer) = call(
        Method::GET,
        &readers[0].api("/nodes/b-1?min_revision=soon"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("min_revision"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_follower_whose_listening_connection_is_cut_still_catches_up() {
    let (url, servers, _dirs) = replicas("feed_cut", 2).await;
    let (writer, reader) = (&servers[0], &servers[1]);
    // Both replicas listen; cut every listening connection.
    assert!(
        eventually(Duration::from_secs(10), async || {
            hydra_store::testing::terminate_change_listeners(&url).await >= 2
        })
        .await,
        "the replicas' listeners were never found"
    );
    let (status, answer, revision) =
        write(Method::POST, &writer.api("/nodes"), body("b-cut")).await;
    assert_eq!(status, 201, "{answer}");
    let (status, node) = call(
        Method::GET,
        &reader.api(&format!("/nodes/b-cut?min_revision={revision}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert!(
        eventually(Duration::from_secs(10), async || reader
            .log
            .lock()
            .unwrap()
            .contains("[controller] change feed: listening connection lost"))
        .await,
        "{}",
        reader.log.lock().unwrap()
    );
}

#[tokio::test]
async fn replicas_converge_after_their_database_went_away_under_load() {
    let (url, servers, _dirs) = replicas("feed_outage", 3).await;
    let writer = &servers[0];
    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = 0;
    let (status, answer) = call(Method::POST, &writer.api("/nodes"), Some(json!({"id": "h-1", "roles": ["head"], "district": "bxl1", "venue": "v1", "owner": "acme"}))).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = call(
        Method::POST,
        &writer.api("/nodes/b-000/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    for index in 0..60 {
        if index == 1 {
            let (status, answer) = call(
                Method::POST,
                &writer.api("/nodes/b-000/heartbeat"),
                Some(json!({"idle": true})),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
        }
        if index == 20 {
            // Every view caught up with the newest write first (the master's own revision is the
            // highest health reports), so what follows tests serving from the view alone.
            let mut newest = 0;
            for server in &servers {
                let (_, health) = call(Method::GET, &server.api("/health"), None).await;
                newest = newest.max(health["revision"].as_i64().unwrap_or(0));
            }
            for server in &servers {
                assert!(
                    eventually(Duration::from_secs(10), async || {
                        let (_, health) = call(Method::GET, &server.api("/health"), None).await;
                        health["revision"].as_i64().unwrap_or(0) >= newest
                    })
                    .await,
                    "{} never followed the feed to revision {newest}; its log:\n{}",
                    server.url,
                    server.log.lock().unwrap()
                );
            }
            hydra_store::testing::set_database_accepting(&url, false).await;
            // Selection never reads the database: every replica still answers from its view.
            for server in &servers {
                assert!(
                    eventually(Duration::from_secs(10), async || {
                        let (status, answer) = call(
                            Method::GET,
                            &server.api("/bodies/eligible?head_id=h-1"),
                            None,
                        )
                        .await;
                        status == 200 && crate::support::ids(&answer) == ["b-000"]
                    })
                    .await,
                    "{} did not offer b-000 from its view during the outage; its log:\n{}",
                    server.url,
                    server.log.lock().unwrap()
                );
            }
        }
        if index == 40 {
            hydra_store::testing::set_database_accepting(&url, true).await;
        }
        let id = format!("b-{index:03}");
        let (status, _) = call(Method::POST, &writer.api("/nodes"), Some(body(&id))).await;
        match status {
            201 => acknowledged.push(id),
            503 => refused += 1,
            other => panic!("enrolment of {id} answered {other}"),
        }
    }
    assert!(refused > 0, "the outage refused nothing");
    // Those before the outage at least; right after it the lease may still be vacant (the
    // master stepped down when it could not renew), so later ones may be refused too.
    assert!(acknowledged.len() >= 20, "{acknowledged:?}");
    // After the outage, writes land again (the pool reconnects by itself).
    assert!(
        eventually(Duration::from_secs(30), async || {
            call(Method::POST, &writer.api("/nodes"), Some(body("b-after")))
                .await
                .0
                == 201
        })
        .await,
        "writes never came back"
    );
    acknowledged.push("b-after".into());
    for server in &servers {
        assert!(
            eventually(Duration::from_secs(30), async || {
                let (status, nodes) = call(Method::GET, &server.api("/nodes"), None).await;
                let ids: Vec<&str> = nodes["nodes"]
                    .as_array()
                    .map(|nodes| {
                        nodes
                            .iter()
                            .filter_map(|node| node["id"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                status == 200 && acknowledged.iter().all(|id| ids.contains(&id.as_str()))
            })
            .await,
            "{} is missing acknowledged nodes; its log:\n{}",
            server.url,
            server.log.lock().unwrap()
        );
        assert!(
            eventually(
                Duration::from_secs(30),
                async || health(server).await["lag_ms"] == 0
            )
            .await,
            "{} never caught up",
            server.url
        );
    }
}

#[tokio::test]
async fn the_sdk_reads_its_own_writes_on_every_replica() {
    let (_url, servers, _dirs) = replicas("feed_sdk", 3).await;
    let mut config =
        hydra_client::ClientConfig::new(servers.iter().map(|server| server.url.clone()));
    config.token = Some(ADMIN_TOKEN.to_owned());
    let client = hydra_client::Client::new(config).expect("a client");
    assert_eq!(client.written_revision(), 0);
    let request: hydra_api::EnrolRequest = serde_json::from_value(body("b-sdk")).unwrap();
    client.enrol(&request).await.expect("enrolment");
    let written = client.written_revision();
    assert!(written > 0, "the SDK kept the write's revision");
    // Every replica's view reached it (the SDK's reads pass it as min_revision).
    for server in &servers {
        let health = health(server).await;
        assert!(
            eventually(Duration::from_secs(5), async || {
                call(
                    Method::GET,
                    &server.api(&format!("/nodes/b-sdk?min_revision={written}")),
                    None,
                )
                .await
                .0 == 200
            })
            .await,
            "{} never reached revision {written}: {health}",
            server.url
        );
    }
    let node = client
        .node("b-sdk")
        .await
        .expect("the SDK reads its own write");
    assert_eq!(node.id, "b-sdk");
}

/// Measures how long a write through one replica takes to show on another without
/// `min_revision` (printed for the README; the assertion is only that every write shows).
#[tokio::test]
async fn propagation_to_another_replica_is_measured() {
    let (_url, servers, _dirs) = replicas("feed_lag", 2).await;
    let (writer, reader) = (&servers[0], &servers[1]);
    let mut waits: Vec<Duration> = Vec::new();
    for index in 0..200 {
        let id = format!("b-{index:03}");
        let (status, answer) = call(Method::POST, &writer.api("/nodes"), Some(body(&id))).await;
        assert_eq!(status, 201, "{answer}");
        let acknowledged = std::time::Instant::now();
        let seen = eventually_fast(Duration::from_secs(10), async || {
            call(Method::GET, &reader.api(&format!("/nodes/{id}")), None)
                .await
                .0
                == 200
        })
        .await;
        assert!(seen, "{id} never showed on the other replica");
        waits.push(acknowledged.elapsed());
    }
    waits.sort();
    let at = |quantile: f64| waits[((waits.len() - 1) as f64 * quantile) as usize];
    eprintln!(
        "[measure] write-to-other-replica visibility over {} writes: p50 {:?}, p99 {:?}, max {:?}",
        waits.len(),
        at(0.5),
        at(0.99),
        waits[waits.len() - 1]
    );
}

/// [`eventually`] polling every millisecond, for measuring.
async fn eventually_fast(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Issue 13: `/api/v1/events` is fed by the change feed, so every replica's stream (a
/// follower's dashboard too) shows every write once, whichever replica took it.
#[tokio::test]
async fn every_replicas_event_stream_shows_every_write_once() {
    let (_url, servers, _dirs) = replicas("events_feed", 2).await;
    let mut streams = Vec::new();
    for server in &servers {
        let mut response = http()
            .get(server.api("/events"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(response.status(), 200);
        let (mut buffer, mut seen) = (String::new(), Vec::new());
        crate::events::until(&mut response, &mut buffer, &mut seen, |name, _| {
            name == "snapshot"
        })
        .await;
        streams.push((response, buffer));
    }
    // Written through the first replica (forwarded to the master if it is not).
    let (status, answer, _) = write(Method::POST, &servers[0].api("/nodes"), body("b-ev")).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer, _) = write(
        Method::POST,
        &servers[0].api("/nodes/b-ev/drain"),
        json!({"drained": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer, _) =
        write(Method::DELETE, &servers[0].api("/nodes/b-ev"), json!({})).await;
    assert_eq!(status, 204, "{answer}");
    for (index, (response, buffer)) in streams.iter_mut().enumerate() {
        let mut seen = Vec::new();
        crate::events::until(response, buffer, &mut seen, |name, data| {
            name == "node_removed" && data["id"] == "b-ev"
        })
        .await;
        let count = |wanted: &str, drained: Option<bool>| {
            seen.iter()
                .filter(|(name, data)| {
                    name == wanted
                        && data["id"] == "b-ev"
                        && drained.is_none_or(|drained| data["drained"] == drained)
                })
                .count()
        };
        assert_eq!(count("node_enrolled", None), 1, "replica {index}: {seen:?}");
        assert_eq!(
            count("node_changed", Some(true)),
            1,
            "replica {index}: {seen:?}"
        );
        assert_eq!(
            count("node_changed", Some(false)),
            0,
            "replica {index}: {seen:?}"
        );
    }
}
