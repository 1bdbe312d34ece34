//! The heartbeat's backoff on a paused tokio clock: a control plane on loopback that refuses
//! (503) and then answers; the waits between beats follow the full-jitter schedule (1 s doubling,
//! capped at the interval, never under 50 ms) and start again at 1 s after a success. The
//! randomness comes in through `heartbeat::run_with_units`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hydra_agent::heartbeat::{HeartbeatSettings, run_with_units};
use hydra_agent::http::{AgentState, HttpSettings};
use hydra_api::{CheckMaster, CostTierWire, NodeView};
use hydra_client::{Client, ClientConfig, RetryPolicy};
use hydra_proxy::proxy::Proxy;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the stand-in control plane answers to each heartbeat, in order (`true`: 200).
#[derive(Clone)]
struct Script {
    answers: Arc<Vec<bool>>,
    /// When each heartbeat arrived, on the (paused) tokio clock.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

async fn check_master() -> axum::Json<CheckMaster> {
    axum::Json(CheckMaster {
        is_master: true,
        master_url: None,
        master_id: None,
        term: None,
        cluster_id: None,
        replica_id: None,
    })
}

async fn heartbeat(State(script): State<Script>, Path(id): Path<String>) -> Response {
    let index = {
        let mut arrivals = script.arrivals.lock().unwrap();
        arrivals.push(Instant::now());
        arrivals.len() - 1
    };
    if !script.answers.get(index).copied().unwrap_or(true) {
        let body = serde_json::json!({"error": "unavailable", "message": "storage unavailable"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(NodeView {
        id: id.clone(),
        name: id,
        roles: Vec::new(),
        district: "bxl1".into(),
        venue: "v".into(),
        owner: "acme".into(),
        allowed_orgs: Vec::new(),
        lan_ip: None,
        wg_ip: None,
        vram_mb: None,
        cost_tier: CostTierWire::default(),
        drained: false,
        idle: true,
        active_sessions: 0,
        status: hydra_api::NodeStatusWire::Online,
        last_heartbeat: None,
        enrolled_at: "2026-01-01T00:00:00.000Z".into(),
    })
    .into_response()
}

/// Runs the heartbeat loop (interval 10 s, no jitter) against a control plane answering
/// `answers`, with `units` as its random draws, until every answer was used; the waits between
/// consecutive beats.
async fn waits(answers: Vec<bool>, units: Vec<f64>) -> Vec<Duration> {
    let count = answers.len();
    let script = Script {
        answers: Arc::new(answers),
        arrivals: Arc::new(Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/api/v1/check-master", get(check_master))
        .route("/api/v1/nodes/{id}/heartbeat", post(heartbeat))
        .with_state(script.clone());
    let stop = CancellationToken::new();
    let serving = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(serving.cancelled_owned())
            .await
    });
    let state = AgentState::new(
        HttpSettings {
            roles: vec!["head".into()],
            servers: Vec::new(),
            return_url: String::new(),
            report_url: String::new(),
            rating_url: None,
            api_token: None,
            wireguard_optional: true,
            viewer_ttl: Duration::from_secs(600),
            ice: Default::default(),
        },
        None,
        Proxy::new(stop.clone()),
    );
    // One attempt per beat: the client's own retries would hide the loop's schedule.
    let client = Client::new(ClientConfig::new([url]).with_retry(RetryPolicy::once())).unwrap();
    let settings = HeartbeatSettings {
        node_id: "h-beat".into(),
        interval: Duration::from_secs(10),
        jitter: 0.0,
        agent_url: String::new(),
    };
    let mut draws = units.into_iter().cycle();
    let beating = tokio::spawn(run_with_units(
        state,
        client,
        settings,
        stop.clone(),
        move || draws.next().unwrap_or(1.0),
    ));
    // Bounded: at most 1,000 polls of 1 s of (virtual) time.
    for _ in 0..1_000 {
        if script.arrivals.lock().unwrap().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.cancel();
    beating.await.unwrap();
    let arrivals = script.arrivals.lock().unwrap().clone();
    assert!(arrivals.len() >= count, "only {} beats", arrivals.len());
    arrivals[..count]
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .collect()
}

fn secs(values: &[f64]) -> Vec<Duration> {
    values.iter().map(|&s| Duration::from_secs_f64(s)).collect()
}

/// With every draw at its top, each wait is the schedule's ceiling: 1, 2, 4, 8 s, then the
/// interval (10 s) as the cap; after a success the interval; the next failure starts at 1 s again.
#[tokio::test(start_paused = true)]
async fn failed_beats_back_off_to_the_ceilings_and_reset_after_a_success() {
    let answers = vec![
        false, false, false, false, false, false, true, false, false, true, true,
    ];
    assert_eq!(
        waits(answers, vec![1.0]).await,
        secs(&[1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 1.0, 2.0, 10.0])
    );
}

/// Draws in between land in `[50 ms, ceiling]` (full jitter: anywhere from nothing to the
/// ceiling, with a 50 ms floor so a refusing server is not hammered).
#[tokio::test(start_paused = true)]
async fn failed_beats_wait_between_the_floor_and_the_ceiling() {
    let answers = vec![false, false, false, false, false, true, false, true];
    let units = vec![0.0, 0.5, 0.25, 0.9, 0.3, 0.0, 0.7, 0.0];
    let got = waits(answers, units).await;
    let ceilings = secs(&[1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 1.0]);
    assert_eq!(got.len(), ceilings.len());
    for (index, (wait, ceiling)) in got.iter().zip(&ceilings).enumerate() {
        assert!(
            Duration::from_millis(50) <= *wait && wait <= ceiling,
            "wait {index}: {wait:?} not in [50 ms, {ceiling:?}]"
        );
    }
    // The draws that are not 0 scale their ceilings (0.5 of 2 s, 0.25 of 4 s, ...); a 0 draw
    // is the floor.
    assert_eq!(got, secs(&[0.05, 1.0, 1.0, 7.2, 3.0, 10.0, 0.7]));
}
