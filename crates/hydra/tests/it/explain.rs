//! "Why this body" and "what if" as an operator asks them: the real server over HTTP and the real
//! `hydra bodies` CLI.

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::hydra;
use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, call_as};

async fn enrol(server: &ServerProcess, body: Value, online: bool) {
    let id = body["id"].as_str().expect("id").to_owned();
    let (status, answer) = call(Method::POST, &server.api("/nodes"), Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    if online {
        let (status, answer) = call(
            Method::POST,
            &server.api(&format!("/nodes/{id}/heartbeat")),
            Some(json!({"idle": true})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// A district with one node for every reason, plus a head in `rupelmonde`.
async fn district(server: &ServerProcess) {
    let node = |id: &str, role: &str, venue: &str, owner: &str| json!({"id": id, "roles": [role], "district": "bxl1", "venue": venue, "owner": owner});
    enrol(server, node("b-venue", "body", "rupelmonde", "acme"), true).await;
    enrol(
        server,
        node("b-drained", "body", "rupelmonde", "acme"),
        true,
    )
    .await;
    enrol(
        server,
        node("b-silent", "body", "rupelmonde", "acme"),
        false,
    )
    .await;
    enrol(server, node("b-c7", "body", "cloud-seven", "acme"), true).await;
    enrol(
        server,
        node("b-globex", "body", "cloud-seven", "globex"),
        true,
    )
    .await;
    enrol(server, node("h", "head", "rupelmonde", "acme"), true).await;
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes/b-drained/drain"),
        Some(json!({"drained": true})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

fn reasons(answer: &Value) -> Vec<String> {
    answer["explain"]
        .as_array()
        .expect("explain list")
        .iter()
        .map(|entry| match entry["rank"].as_u64() {
            Some(rank) => format!("{} kept #{rank}", entry["id"].as_str().unwrap()),
            None => format!(
                "{} {}",
                entry["id"].as_str().unwrap(),
                entry["reason"].as_str().unwrap()
            ),
        })
        .collect()
}

/// Issue 13, "selection that learns from its heads": a body the head reported unreachable on
/// both paths is left out of its answers (`learned_unreachable` in the trace) for
/// `--unreachable-for`, then comes back; a body reached over WireGuard only is `wg_only` in the
/// answer and the trace.
#[tokio::test]
async fn a_body_reported_unreachable_is_left_out_for_the_window_and_wg_only_is_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.extra = vec!["--unreachable-for".into(), "2s".into()];
    let server = ServerProcess::start(&setup);
    district(&server).await;
    let eligible = |query: &'static str| {
        let url = server.api(&format!("/bodies/eligible?{query}"));
        async move {
            let (status, answer) = call(Method::GET, &url, None).await;
            assert_eq!(status, 200, "{answer}");
            answer
        }
    };
    let answer = eligible("head_id=h").await;
    assert_eq!(answer["policy"], "quickroute", "{answer}");

    // Round 2 of a discovery: the venue body failed on both paths, b-c7 answered on WireGuard.
    let answer = eligible("head_id=h&unreachable=b-venue&measured=b-c7:wireguard:12").await;
    assert_eq!(answer["policy"], "cross_venue", "{answer}");
    assert_eq!(answer["bodies"][0]["id"], "b-c7");
    assert_eq!(answer["bodies"][0]["wg_only"], true, "{answer}");

    // The next discovery names nothing, and still gets only what can work.
    let answer = eligible("head_id=h&explain=true").await;
    assert_eq!(answer["policy"], "cross_venue", "{answer}");
    assert!(
        reasons(&answer).contains(&"b-venue learned_unreachable".to_owned()),
        "{answer}"
    );
    assert_eq!(answer["explain"][0]["id"], "b-c7");
    assert_eq!(answer["explain"][0]["wg_only"], true, "{answer}");

    // After the window the venue body is back (polled with a deadline, not timed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = eligible("head_id=h").await;
        if answer["policy"] == "quickroute" {
            assert_eq!(answer["bodies"][0]["id"], "b-venue");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b-venue still left out 20 s after a 2 s window: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Issue 13, the second discovery: a head that found its body past a dead one reports the dead one
/// (`unreachable=`) with its next request, from its state dir, so the next `hydra head discover`
/// process probes only the live body; the trace shows the dead one `learned_unreachable`.
#[tokio::test]
async fn a_second_discovery_skips_the_dead_body_the_first_one_walked_past() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    // The live body listens on loopback; the dead one's two addresses refuse on the same port.
    let live = std::net::TcpListener::bind("127.0.0.63:0").expect("bind the live body");
    let port = live.local_addr().expect("port").port().to_string();
    let body = |id: &str, lan: &str, wg: &str, vram_mb: u32| {
        json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "rupelmonde",
               "owner": "acme", "lan_ip": lan, "wg_ip": wg, "vram_mb": vram_mb})
    };
    // More VRAM: b-dead ranks ahead of b-live.
    enrol(
        &server,
        body("b-dead", "127.0.0.61", "127.0.0.62", 24_576),
        true,
    )
    .await;
    enrol(
        &server,
        body("b-live", "127.0.0.63", "127.0.0.64", 8_192),
        true,
    )
    .await;
    enrol(
        &server,
        json!({"id": "h", "roles": ["head"], "district": "bxl1", "venue": "rupelmonde", "owner": "acme"}),
        true,
    )
    .await;
    let state_dir = dir.path().join("head-state");
    let state = state_dir.display().to_string();
    let args = [
        "head",
        "discover",
        "--head-id",
        "h",
        "--server",
        &server.url,
        "--port",
        &port,
        "--state-dir",
        &state,
        "--json",
    ];
    let discover = || hydra(&[("HYDRA_TOKEN", ADMIN_TOKEN)], &args);
    let tried = |stdout: &str| -> Vec<String> {
        let found: Value = serde_json::from_str(stdout).expect("discover --json");
        assert_eq!(found["body_id"], "b-live", "{found}");
        found["tried"]
            .as_array()
            .expect("tried")
            .iter()
            .map(|probes| probes["body_id"].as_str().expect("body_id").to_owned())
            .collect()
    };
    let first = discover().await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(tried(&first.stdout), ["b-dead", "b-live"]);
    let second = discover().await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        tried(&second.stdout),
        ["b-live"],
        "the second discovery probes only the live body"
    );
    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&explain=true"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        reasons(&answer).contains(&"b-dead learned_unreachable".to_owned()),
        "{answer}"
    );
    drop(live);
}

#[tokio::test]
async fn explain_says_why_each_node_of_the_district_was_kept_or_left_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    district(&server).await;

    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&explain=true"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["policy"], "quickroute");
    assert_eq!(answer["bodies"][0]["id"], "b-venue");
    assert_eq!(
        reasons(&answer),
        [
            "b-venue kept #1",
            "b-c7 quickroute_open",
            "b-drained drained",
            "b-globex other_owner",
            "b-silent offline",
            "h not_a_body"
        ]
    );
    assert_eq!(
        answer["explain"][0]["keys"],
        json!([{"key": "idle", "idle": true}, {"key": "vram_mb", "vram_mb": 0}])
    );
    // Naming the venue body unreachable opens the gate: the trace shows the new ranking.
    let (_, answer) = call(
        Method::GET,
        &server.api("/bodies/eligible?head_id=h&unreachable=b-venue&explain=true"),
        None,
    )
    .await;
    assert_eq!(answer["policy"], "cross_venue");
    assert!(
        reasons(&answer).contains(&"b-venue named_unreachable".to_owned()),
        "{answer}"
    );
    assert_eq!(
        answer["explain"][0]["keys"][0],
        json!({"key": "unmeasured"})
    );
    // Without explain the answer is what it always was.
    let (_, plain) = call(Method::GET, &server.api("/bodies/eligible?head_id=h"), None).await;
    assert!(plain.get("explain").is_none(), "{plain}");

    // Bad input names the field.
    for (query, field) in [
        ("head_id=h&explain=maybe", "explain"),
        ("district=bxl1&venue=rupelmonde&explain=true", "explain"),
    ] {
        let (status, answer) = call(
            Method::GET,
            &server.api(&format!("/bodies/eligible?{query}")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(answer["error"], "invalid_request");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{query}: {answer}"
        );
    }

    let env = [
        ("HYDRA_SERVER", server.url.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];
    let run = hydra(&env, &["bodies", "eligible", "--head-id", "h", "--explain"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let drained_row = run
        .stdout
        .lines()
        .find(|line| line.starts_with("b-drained"))
        .unwrap_or_else(|| panic!("no b-drained row in {}", run.stdout));
    assert!(
        drained_row.contains("left out") && drained_row.contains("drained"),
        "{drained_row}"
    );
    assert!(run.stdout.contains("kept #1"), "{}", run.stdout);
}

#[tokio::test]
async fn what_if_gives_each_heads_body_now_and_without_and_the_shortfall() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    district(&server).await;
    let node = |id: &str, role: &str, venue: &str| json!({"id": id, "roles": [role], "district": "bxl1", "venue": venue, "owner": "acme"});
    enrol(&server, node("h-c7", "head", "cloud-seven"), true).await;

    let (status, answer) = call(
        Method::GET,
        &server.api("/bodies/what-if?without=venue:cloud-seven"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let heads: Vec<String> = answer["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|head| {
            format!(
                "{} {} -> {} removed={} shortfall={}",
                head["head_id"].as_str().unwrap(),
                head["body_now"].as_str().unwrap_or("-"),
                head["body_without"].as_str().unwrap_or("-"),
                head["head_removed"],
                head["shortfall"]
            )
        })
        .collect();
    assert_eq!(
        heads,
        [
            "h b-venue -> b-venue removed=false shortfall=false",
            "h-c7 b-c7 -> - removed=true shortfall=false"
        ]
    );
    let (_, answer) = call(
        Method::GET,
        &server.api("/bodies/what-if?without=node:b-venue"),
        None,
    )
    .await;
    assert_eq!(answer["shortfall"], json!([]), "h falls back to b-c7");
    assert_eq!(answer["heads"][0]["body_without"], "b-c7");
    let (_, answer) = call(
        Method::GET,
        &server.api("/bodies/what-if?without=district:bxl1"),
        None,
    )
    .await;
    assert_eq!(answer["heads"].as_array().unwrap().len(), 2, "{answer}");

    for query in ["", "?without=shelf:b-1", "?without=venue:"] {
        let (status, answer) = call(
            Method::GET,
            &server.api(&format!("/bodies/what-if{query}")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("without"),
            "{answer}"
        );
    }
    let (status, _) = call_as(
        "not-the-admin",
        Method::GET,
        &server.api("/bodies/what-if?without=venue:x"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    let env = [
        ("HYDRA_SERVER", server.url.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];
    let run = hydra(&env, &["bodies", "what-if", "--without", "node:b-venue"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("b-c7 (cross_venue)"), "{}", run.stdout);
    assert!(run.stdout.contains("shortfall: none"), "{}", run.stdout);
}
