//! The peer mesh with real processes in the network lab (issue 11): the real `hydra server` and
//! 8 real `hydra agent` processes (bodies), each in a namespace of its own, the mesh on with
//! `discovery_mode: server`. kill -9 one agent: the server stops offering it in
//! `GET /api/v1/bodies/eligible` within seconds and no live agent is dropped; a real nftables
//! drop of one agent's UDP only: the survivors suspect it, the server's mesh declares it down,
//! and it is kept online and eligible while its heartbeats still arrive, because its agent's
//! API still answers the server (heartbeats and the HTTP path win over gossip; see
//! `hydra_core::liveness`). And 8 real workers with every replica down: a start on a full worker
//! runs on the least-loaded peer, is reachable through every worker, and the server shows it
//! once it is back. Times are printed, not asserted (the machine is shared).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hydra_lab::mesh::{MeshFleet, MeshSpec};
use hydra_lab::run_isolated_within;

const AGENTS: usize = 8;

fn hydra() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hydra"))
}

/// The ids `b0`..`b{AGENTS-1}` but `except`.
fn all_but(except: &[usize]) -> Vec<String> {
    let mut ids: Vec<String> = (0..AGENTS)
        .filter(|k| !except.contains(k))
        .map(|k| format!("b{k}"))
        .collect();
    ids.sort();
    ids
}

/// kill -9 agent `victim`: polls (every 50 ms, at most 60 s) until `watcher` sees it down and
/// the server stops offering it; then no other agent may be missing anywhere.
async fn kill_one(fleet: &mut MeshFleet, victim: usize, watcher: usize) -> anyhow::Result<()> {
    let id = format!("b{victim}");
    let killed = Instant::now();
    fleet.kill_agent(victim);
    let (mut seen_down, mut out_of_eligible) = (None, None);
    while seen_down.is_none() || out_of_eligible.is_none() {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "{id} killed 60 s ago: seen down by b{watcher}: {seen_down:?}, out of eligible: \
             {out_of_eligible:?}\n{}",
            fleet.server_log()
        );
        if seen_down.is_none() && fleet.member_state(watcher, &id).await?.as_deref() == Some("down")
        {
            seen_down = Some(killed.elapsed());
        }
        if out_of_eligible.is_none() && !fleet.eligible().await?.contains(&id) {
            out_of_eligible = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        fleet.eligible().await? == all_but(&[victim]),
        "no live agent leaves the eligible list: {:?}",
        fleet.eligible().await?
    );
    let node = fleet
        .control
        .get_json(&format!("/api/v1/nodes/{id}"))
        .await?;
    anyhow::ensure!(node["status"] == "unreachable", "{node}");
    for k in (0..AGENTS).filter(|k| *k != victim && *k != watcher) {
        let state = fleet.member_state(watcher, &format!("b{k}")).await?;
        anyhow::ensure!(
            state.as_deref() == Some("alive"),
            "b{watcher} sees b{k} {state:?}"
        );
    }
    eprintln!(
        "[lab] kill -9 {id}: seen down by b{watcher} after {} ms, out of bodies/eligible after {} ms",
        seen_down.unwrap_or_default().as_millis(),
        out_of_eligible.unwrap_or_default().as_millis()
    );
    Ok(())
}

/// Drops agent `victim`'s UDP (nftables): polls until `watcher` sees it suspect or down (and some
/// member counted a suspicion) and the server has seen it down and kept it because its agent
/// answers, then until two more heartbeats of it
/// arrived; at every poll it must still be online and offered.
async fn drop_udp_of_one(fleet: &MeshFleet, victim: usize, watcher: usize) -> anyhow::Result<()> {
    let id = format!("b{victim}");
    // Suspicions raised anywhere in the mesh: the member whose probe of the victim fails first
    // suspects it, and the others (the watcher too) may learn of it from that member's gossip.
    let suspicions = async |fleet: &MeshFleet| -> anyhow::Result<u64> {
        let mut total = 0;
        for k in (0..fleet.agent_count()).filter(|k| *k != victim) {
            // A killed agent does not answer; it raises nothing either.
            if let Ok(cluster) = fleet.agent_get(k, "/api/v1/cluster").await {
                total += cluster["detector"]["suspicions"].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    };
    let suspicions_before = suspicions(fleet).await?;
    let node_path = format!("/api/v1/nodes/{id}");
    let dropped = Instant::now();
    fleet.drop_udp(victim)?;
    let (mut suspected, mut kept) = (None, None);
    let mut heartbeats_after_kept = 0;
    let mut last_heartbeat = None;
    while heartbeats_after_kept < 2 {
        anyhow::ensure!(
            dropped.elapsed() < Duration::from_secs(90),
            "{id}'s UDP dropped 90 s ago: suspected {suspected:?}, kept {kept:?}, \
             {heartbeats_after_kept} heartbeats after\n{}",
            fleet.server_log()
        );
        let eligible = fleet.eligible().await?;
        anyhow::ensure!(
            eligible.contains(&id),
            "{id} left the eligible list while its heartbeats still arrive: {eligible:?}\n{}",
            fleet.server_log()
        );
        let node = fleet.control.get_json(&node_path).await?;
        anyhow::ensure!(node["status"] == "online", "{node}");
        if suspected.is_none() {
            let state = fleet.member_state(watcher, &id).await?;
            if matches!(state.as_deref(), Some("suspect" | "down")) {
                suspected = Some((state.unwrap_or_default(), dropped.elapsed()));
            }
        }
        if kept.is_none()
            && fleet.server_log().lines().any(|line| {
                line.contains("node kept as it is")
                    && line.contains(&format!("node_id={id}"))
                    && line.contains("agent_answers")
            })
        {
            kept = Some(dropped.elapsed());
        }
        if kept.is_some() && suspected.is_some() {
            let heartbeat = node["last_heartbeat"].as_str().map(str::to_owned);
            if last_heartbeat.is_some() && heartbeat != last_heartbeat {
                heartbeats_after_kept += 1;
            }
            last_heartbeat = heartbeat;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let suspicions_after = suspicions(fleet).await?;
    anyhow::ensure!(
        suspicions_after > suspicions_before,
        "no member counted a suspicion of {id} ({suspicions_before} then {suspicions_after} in all)"
    );
    let (state, suspected_after) = suspected.unwrap_or_default();
    eprintln!(
        "[lab] {id}'s UDP dropped: b{watcher} saw it {state} after {} ms; the server saw it down \
         and kept it (agent_answers) after {} ms; online and eligible throughout, 2 heartbeats since",
        suspected_after.as_millis(),
        kept.unwrap_or_default().as_millis()
    );
    fleet.clear_udp_drop(victim)?;
    Ok(())
}

#[test]
fn eight_agents_a_killed_one_leaves_selection_and_one_without_udp_is_kept() {
    run_isolated_within(Duration::from_secs(600), |lab| async move {
        let spec = MeshSpec {
            agents: AGENTS,
            roles: vec!["body".into()],
            extra_yaml: String::new(),
            per_agent_yaml: Vec::new(),
        };
        let mut fleet = MeshFleet::start(lab, &hydra(), &spec).await?;
        let started = Instant::now();
        fleet.wait_joined(Duration::from_secs(240), true).await?;
        eprintln!(
            "[lab] {AGENTS} agents joined the mesh and eligible after {} ms",
            started.elapsed().as_millis()
        );
        kill_one(&mut fleet, 5, 1).await?;
        drop_udp_of_one(&fleet, 2, 1).await?;
        Ok(())
    })
}

/// A session start on worker `k` (the operator's token), answered status and JSON.
async fn start_on(fleet: &MeshFleet, k: usize) -> anyhow::Result<(u16, serde_json::Value)> {
    let answer = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?
        .post(format!("{}/api/v1/sessions", fleet.agent(k).url()))
        .bearer_auth(hydra_lab::mesh::ADMIN_TOKEN)
        .json(&serde_json::json!({"body_ip": BODY_ADDRESS}))
        .send()
        .await?;
    let status = answer.status().as_u16();
    Ok((status, answer.json().await.unwrap_or_default()))
}

/// The node a session id names (`<node_id>:<uuid>`).
fn owner(session: &serde_json::Value) -> String {
    session["session_id"]
        .as_str()
        .and_then(|id| id.split_once(':'))
        .map(|(node, _)| node.to_owned())
        .unwrap_or_default()
}

/// The lab's own address on the LAN, where the test answers as the body (the worker checks
/// the body's port before it starts a session).
const BODY_ADDRESS: &str = "198.18.1.1";
const BODY_PORT: u16 = 47990;
const WORKERS: usize = 8;

/// Polls `check` every 250 ms for at most `limit`.
async fn poll(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last = Some(error),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {limit:?} ({last:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `node_id`'s published pending sessions as worker `k` sees it.
async fn pending_seen(fleet: &MeshFleet, k: usize, node_id: &str) -> anyhow::Result<Option<u64>> {
    let cluster = fleet.agent_get(k, "/api/v1/cluster").await?;
    Ok(cluster["members"].as_array().and_then(|members| {
        members
            .iter()
            .find(|member| member["node_id"] == node_id && member["state"] == "alive")
            .and_then(|member| member["pending"].as_u64())
    }))
}

#[test]
fn with_every_replica_down_a_session_lands_on_the_least_loaded_peer_and_reaches_the_server_later() {
    run_isolated_within(Duration::from_secs(600), |lab| async move {
        let standin = hydra_lab::isolate::bin_dir()?.join("standin-web-stream");
        anyhow::ensure!(
            standin.is_file(),
            "{} is missing: cargo build -p hydra-agent --bin standin-web-stream",
            standin.display()
        );
        // b0 holds 1 session at most, b2 4, every other worker 2.
        let per_agent_yaml = [1, 2, 4, 2, 2, 2, 2, 2]
            .map(|max| {
                format!(
                    "sessions: {{max: {max}, body_port: {BODY_PORT}, ready_timeout: 30, command: [\"{}\", \"--bind\", \"{{bind}}\", \"--port\", \"{{port}}\", \"--data-dir\", \"{{data_dir}}\"]}}\n",
                    standin.display()
                )
            })
            .to_vec();
        let spec = MeshSpec {
            agents: WORKERS,
            roles: vec!["worker".into()],
            extra_yaml: "health: {interval: 1}\n".into(),
            per_agent_yaml,
        };
        let mut fleet = MeshFleet::start(lab, &hydra(), &spec).await?;
        // The body: the lab's own namespace accepts on 47990 (the worker only checks the port).
        let body = tokio::net::TcpListener::bind((BODY_ADDRESS, BODY_PORT)).await?;
        let _body = tokio::spawn(async move {
            while let Ok((stream, _)) = body.accept().await {
                drop(stream);
            }
        });
        fleet.wait_joined(Duration::from_secs(180), false).await?;

        // While the server answers: b0 fills itself (1/1), b1 takes one of 2.
        let (status, first) = start_on(&fleet, 0).await?;
        anyhow::ensure!(status == 201 && owner(&first) == "b0", "{status} {first}");
        let (status, second) = start_on(&fleet, 1).await?;
        anyhow::ensure!(status == 201 && owner(&second) == "b1", "{status} {second}");
        poll(
            "b0 sees b1 at 1 and the others at 0",
            Duration::from_secs(30),
            async || {
                let mut seen = pending_seen(&fleet, 0, "b1").await? == Some(1);
                for k in 2..WORKERS {
                    seen &= pending_seen(&fleet, 0, &format!("b{k}")).await? == Some(0);
                }
                Ok(seen)
            },
        )
        .await?;

        // Every replica down (the lab runs one): b0 says degraded.
        fleet.stop_server();
        poll("b0 is degraded", Duration::from_secs(60), async || {
            Ok(fleet.agent_get(0, "/api/v1/status").await?["control_plane"]["state"] == "degraded")
        })
        .await?;

        // b0 is full: the least-loaded peer is b2 (0/4; b3..b7 at 0/2 tie and lose by id; b1 1/2).
        let (status, placed) = start_on(&fleet, 0).await?;
        anyhow::ensure!(status == 201 && owner(&placed) == "b2", "{status} {placed}");
        let id = placed["session_id"].as_str().unwrap_or_default().to_owned();
        let stream_url = placed["stream_url"].as_str().unwrap_or_default();
        let capability = stream_url
            .split_once('?')
            .map(|(_, query)| query)
            .unwrap_or_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        for k in 0..WORKERS {
            let shown = fleet
                .agent_get(k, &format!("/api/v1/sessions/{id}"))
                .await?;
            anyhow::ensure!(shown["status"] == "running", "through b{k}: {shown}");
            let page = http
                .get(format!(
                    "{}/session/{id}/?{capability}",
                    fleet.agent(k).url()
                ))
                .send()
                .await?;
            anyhow::ensure!(page.status() == 200, "page through b{k}: {}", page.status());
        }
        eprintln!(
            "[lab] replicas down: a start on full b0 ran on b2 ({id}), reachable through all {WORKERS} workers"
        );

        // The server is back: it shows the session, owned by b2.
        fleet.start_server().await?;
        let path = format!("/api/v1/sessions/{id}");
        poll(
            "the server shows the session on b2",
            Duration::from_secs(90),
            async || {
                let session = fleet.control.get_json(&path).await?;
                Ok(session["worker_id"] == "b2" && session["status"] == "running")
            },
        )
        .await?;
        Ok(())
    })
}
