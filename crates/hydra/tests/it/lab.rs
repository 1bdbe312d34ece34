//! The operators' acceptance tests of the head's failover loop, end to end in the network lab:
//! the real `hydra server`, the real `hydra head`, bodies running the stand-in streaming server
//! on 47990 in their own namespaces, venue LANs and a WireGuard-like overlay, and nftables drops.
//! Each test builds its own lab inside namespaces it created (see `hydra_lab::isolate`).
//!
//! The field ran the cross-venue stream for six minutes; here a stream holds for a few seconds
//! (the stand-in client would notice a drop within 1.5 s), which keeps the suite short.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hydra_lab::poll::wait_until;
use hydra_lab::standin::{EXIT_CONNECT, EXIT_PAIRING};
use hydra_lab::{BodySpec, Fleet, FleetSpec, HeadSpec, Lab, LabProcess, run_isolated};

const HEAD: &str = "h-rup";
const HERE: &str = "rupelmonde";
const THERE: &str = "cloud-seven";
const SPARE_DISTRICT: &str = "bxl1-test";

fn hydra() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hydra"))
}

/// One district, two venues, the head at rupelmonde.
fn spec(bodies: Vec<BodySpec>) -> FleetSpec {
    FleetSpec {
        district: "bxl1".into(),
        owner: "acme".into(),
        venues: vec![HERE.into(), THERE.into()],
        bodies,
        heads: vec![HeadSpec {
            id: HEAD.into(),
            venue: HERE.into(),
        }],
    }
}

/// The operators' fleet: one body at the head's venue, two at the other venue (b-c7-1 ranks
/// first there: more VRAM).
fn operators_fleet() -> FleetSpec {
    let mut first_there = BodySpec::new("b-c7-1", THERE);
    first_there.vram_mb = 16_384;
    spec(vec![
        BodySpec::new("b-rup", HERE),
        first_there,
        BodySpec::new("b-c7-2", THERE),
    ])
}

/// `hydra head run` on the head: `streams` streams, each holding `hold_ms`, 1 s launch window,
/// the stand-in client's connect and greeting failures counted as pairing failures.
fn head_run(
    fleet: &Fleet,
    name: &str,
    streams: u32,
    hold_ms: u64,
    gate: Option<&Path>,
) -> anyhow::Result<(LabProcess, PathBuf)> {
    let record = fleet.lab().dir().join(format!("{name}.record"));
    let mut args = vec!["head".to_owned(), "run".to_owned()];
    args.extend(fleet.head_options(HEAD));
    args.extend([
        "--state-dir".into(),
        fleet.head(HEAD).state_dir.display().to_string(),
        "--launch-window".into(),
        "1s".into(),
        "--max-attempts".into(),
        "3".into(),
        "--backoff-max".into(),
        "1s".into(),
        // The stand-in client's "cannot connect" and "no greeting" exits are pairing failures
        // whenever they happen, so a slow test machine cannot turn them into ended streams.
        "--pairing-exit-code".into(),
        EXIT_CONNECT.to_string(),
        "--pairing-exit-code".into(),
        EXIT_PAIRING.to_string(),
        "--streams".into(),
        streams.to_string(),
        "--".into(),
    ]);
    args.extend(fleet.stream_client_command(&record, hold_ms, gate));
    Ok((fleet.hydra_on_head(HEAD, name, &args)?, record))
}

fn head_discover(fleet: &Fleet, name: &str, extra: &[&str]) -> anyhow::Result<LabProcess> {
    let mut args = vec!["head".to_owned(), "discover".to_owned()];
    args.extend(fleet.head_options(HEAD));
    args.extend([
        "--state-dir".into(),
        fleet.head(HEAD).state_dir.display().to_string(),
    ]);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    fleet.hydra_on_head(HEAD, name, &args)
}

/// The pairing record, when written.
fn pairing(fleet: &Fleet) -> Option<serde_json::Value> {
    let path = fleet.head(HEAD).state_dir.join("pairing.json");
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until the pairing record says `state` for `body_id` on `ip`.
async fn wait_for_pairing(
    fleet: &Fleet,
    state: &str,
    body_id: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<serde_json::Value> {
    wait_until(
        &format!("pairing record {state} on {body_id} {ip}"),
        Duration::from_secs(20),
        || {
            Ok(pairing(fleet).filter(|record| {
                record["state"] == state
                    && record["body_id"] == body_id
                    && record["ip"] == ip.to_string()
            }))
        },
    )
    .await
}

/// The stand-in client's record, each line cut to its event, address and body (times vary).
fn events(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            line.split(' ')
                .take(3)
                .filter(|word| !word.starts_with("at_ms=") && !word.starts_with("reason="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The client's events for one held stream on each route in turn.
fn two_streams(first: (Ipv4Addr, &str), second: (Ipv4Addr, &str)) -> Vec<String> {
    [first, second]
        .iter()
        .flat_map(|(ip, body_id)| {
            [
                format!("launched {ip}:47990"),
                format!("connected {ip}:47990 body={body_id}"),
                format!("ended {ip}:47990 body={body_id}"),
            ]
        })
        .collect()
}

/// Waits (bounded) for a head process to exit and asserts it succeeded.
async fn wait_success(process: &mut LabProcess, limit: Duration) -> anyhow::Result<()> {
    match process.wait_for_exit(limit).await? {
        Some(status) if status.success() => Ok(()),
        Some(status) => anyhow::bail!(
            "{} exited with {status}:\n{}",
            process.name(),
            process.stderr_text()
        ),
        None => anyhow::bail!(
            "{} still running after {limit:?}:\n{}",
            process.name(),
            process.stderr_text()
        ),
    }
}

fn assert_logged(process: &LabProcess, line: &str) {
    let log = process.stderr_text();
    assert!(
        log.contains(line),
        "{} did not log {line:?}:\n{log}",
        process.name()
    );
}

fn position(process: &LabProcess, line: &str) -> usize {
    let log = process.stderr_text();
    log.find(line)
        .unwrap_or_else(|| panic!("{} did not log {line:?}:\n{log}", process.name()))
}

#[test]
fn cross_venue_parked_body_streams_over_wireguard_then_back_on_lan() {
    run_isolated(|lab: Lab| async move {
        let fleet = Fleet::start(lab, &hydra(), &operators_fleet()).await?;
        let here = fleet.body("b-rup");
        let there = fleet.body("b-c7-1");
        let (here_lan, there_lan, there_wg) = (here.lan_ip, there.lan_ip, there.wg_ip);

        // Park the head's own body in the spare district: only the other venue is eligible.
        fleet.park("b-rup", SPARE_DISTRICT).await?;
        let eligible = fleet.control.eligible(HEAD).await?;
        let ids: Vec<&str> = eligible.bodies.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            (eligible.policy.as_str(), ids),
            ("cross_venue", vec!["b-c7-1", "b-c7-2"])
        );

        // Two streams of 4 s each; the body comes back while the first one runs.
        let (mut head, record) = head_run(&fleet, "head-run", 2, 4_000, None)?;
        let paired = wait_for_pairing(&fleet, "streaming", "b-c7-1", there_wg).await?;
        assert_eq!(paired["transport"], "wireguard");
        assert_eq!(paired["port"], 47990);
        fleet.unpark("b-rup").await?;
        wait_success(&mut head, Duration::from_secs(40)).await?;

        // The first stream held on the WireGuard route to the other venue, without a change of
        // target or a restart (the stand-in client writes `ended` only once it held the stream
        // for its whole `--hold-ms`; a drop would be `dropped`); the next one is on the returned
        // body's LAN address.
        assert_eq!(
            events(&record),
            two_streams((there_wg, "b-c7-1"), (here_lan, "b-rup"))
        );
        assert_logged(
            &head,
            &format!("LAN host {there_lan} not reachable, falling back to WireGuard"),
        );
        assert_logged(&head, &format!("routing via WireGuard: {there_wg}"));
        assert!(
            position(&head, &format!("routing via WireGuard: {there_wg}"))
                < position(&head, &format!("routing via LAN: {here_lan}"))
        );
        let last = pairing(&fleet).expect("pairing record");
        assert_eq!(
            (
                &last["body_id"],
                &last["ip"],
                &last["transport"],
                &last["state"]
            ),
            (
                &serde_json::json!("b-rup"),
                &serde_json::json!(here_lan.to_string()),
                &serde_json::json!("lan"),
                &serde_json::json!("ended")
            )
        );

        // The WireGuard connect time went to the server with the next request: parked again,
        // the cross-venue answer carries it.
        fleet.park("b-rup", SPARE_DISTRICT).await?;
        let eligible = fleet.control.eligible(HEAD).await?;
        assert!(
            eligible.bodies[0].id == "b-c7-1" && eligible.bodies[0].rtt_ms.is_some(),
            "{eligible:?}"
        );
        Ok(())
    });
}

#[test]
fn failover_loop_walks_past_a_blocked_body_and_returns_to_lan_once_unblocked() {
    run_isolated(|lab: Lab| async move {
        let fleet = Fleet::start(lab, &hydra(), &operators_fleet()).await?;
        let (here_lan, here_wg) = (fleet.body("b-rup").lan_ip, fleet.body("b-rup").wg_ip);
        let (there_lan, there_wg) = (fleet.body("b-c7-1").lan_ip, fleet.body("b-c7-1").wg_ip);

        // The same-venue body stays online (quickroute holds only it) but TCP to 47990 on both
        // of its addresses is dropped for this head.
        fleet.block("b-rup", HEAD)?;
        let (mut head, record) = head_run(&fleet, "head-run", 2, 3_000, None)?;
        wait_for_pairing(&fleet, "streaming", "b-c7-1", there_wg).await?;
        fleet.unblock("b-rup")?;
        wait_success(&mut head, Duration::from_secs(40)).await?;

        assert_logged(
            &head,
            &format!("LAN host {here_lan} not reachable, falling back to WireGuard"),
        );
        assert_logged(
            &head,
            &format!(
                "skipping body b-rup (LAN {here_lan}: timed out after 1000 ms; \
                 WireGuard {here_wg}: timed out after 1000 ms)"
            ),
        );
        assert_logged(&head, "asking again without them");
        assert_logged(&head, "unreachable=b-rup");
        assert_logged(
            &head,
            &format!("LAN host {there_lan} not reachable, falling back to WireGuard"),
        );
        assert_logged(&head, &format!("routing via WireGuard: {there_wg}"));
        assert_logged(&head, &format!("routing via LAN: {here_lan}"));
        assert_eq!(
            events(&record),
            two_streams((there_wg, "b-c7-1"), (here_lan, "b-rup"))
        );
        let last = pairing(&fleet).expect("pairing record");
        assert_eq!(
            (&last["body_id"], &last["transport"]),
            (&serde_json::json!("b-rup"), &serde_json::json!("lan"))
        );
        Ok(())
    });
}

#[test]
fn every_body_dead_is_a_clear_error_naming_each_body() {
    run_isolated(|lab: Lab| async move {
        let mut fleet = Fleet::start(lab, &hydra(), &operators_fleet()).await?;
        // One body behind a drop (timeouts), the other two crashed (refusals).
        fleet.block("b-rup", HEAD)?;
        fleet.kill_stream_server("b-c7-1");
        fleet.kill_stream_server("b-c7-2");
        let (here, c1, c2) = (
            fleet.body("b-rup"),
            fleet.body("b-c7-1"),
            fleet.body("b-c7-2"),
        );
        let expected = format!(
            "no body is reachable for head {HEAD}: tried \
             b-rup (LAN {}: timed out after 1000 ms; WireGuard {}: timed out after 1000 ms), \
             b-c7-1 (LAN {}: Network is unreachable (os error 101); WireGuard {}: connection refused), \
             b-c7-2 (LAN {}: Network is unreachable (os error 101); WireGuard {}: connection refused)",
            here.lan_ip, here.wg_ip, c1.lan_ip, c1.wg_ip, c2.lan_ip, c2.wg_ip
        );
        let mut discover = head_discover(&fleet, "discover", &[])?;
        // The limits below only keep a hung process from hanging the test; how long a walk
        // over dead bodies takes is the lab benchmark's business.
        let status = discover
            .wait_for_exit(Duration::from_secs(120))
            .await?
            .ok_or_else(|| anyhow::anyhow!("hydra head discover still running after 120 s"))?;
        assert!(!status.success());
        assert_logged(&discover, &format!("error: {expected}"));
        assert!(
            discover.stdout_text().is_empty(),
            "{}",
            discover.stdout_text()
        );

        // `hydra head run` retries with backoff, then gives up after its bound of attempts
        // without ever launching the client.
        let (mut head, record) = head_run(&fleet, "head-run", 1, 1_000, None)?;
        let status = head
            .wait_for_exit(Duration::from_secs(120))
            .await?
            .ok_or_else(|| anyhow::anyhow!("hydra head run still running after 120 s"))?;
        assert!(!status.success());
        assert_logged(
            &head,
            "error: giving up after 3 failed attempts in a row for head h-rup",
        );
        assert_logged(&head, "retrying after backoff");
        assert!(events(&record).is_empty(), "{:?}", events(&record));
        Ok(())
    });
}

#[test]
fn lan_refused_but_wireguard_fine_routes_via_wireguard() {
    run_isolated(|lab: Lab| async move {
        let mut here = BodySpec::new("b-rup", HERE);
        here.serve_lan = false;
        let fleet = Fleet::start(lab, &hydra(), &spec(vec![here])).await?;
        let (lan, wg) = (fleet.body("b-rup").lan_ip, fleet.body("b-rup").wg_ip);
        let mut discover = head_discover(&fleet, "discover", &["--json", "--probe", "sequential"])?;
        wait_success(&mut discover, Duration::from_secs(15)).await?;
        let found: serde_json::Value = serde_json::from_str(&discover.stdout_text())?;
        assert_eq!(
            (
                &found["body_id"],
                &found["transport"],
                &found["ip"],
                &found["policy"]
            ),
            (
                &serde_json::json!("b-rup"),
                &serde_json::json!("wireguard"),
                &serde_json::json!(wg.to_string()),
                &serde_json::json!("quickroute")
            )
        );
        assert_eq!(found["tried"][0]["lan"], "connection refused");
        assert_logged(
            &discover,
            &format!("LAN host {lan} not reachable, falling back to WireGuard"),
        );
        assert_logged(&discover, &format!("routing via WireGuard: {wg}"));
        Ok(())
    });
}

#[test]
fn a_body_dying_between_discovery_and_launch_is_dropped_and_the_next_one_streams() {
    run_isolated(|lab: Lab| async move {
        let mut first = BodySpec::new("b-rup-1", HERE);
        first.vram_mb = 16_384;
        let fleet_spec = spec(vec![first, BodySpec::new("b-rup-2", HERE)]);
        let mut fleet = Fleet::start(lab, &hydra(), &fleet_spec).await?;
        let (first_lan, first_wg) = (fleet.body("b-rup-1").lan_ip, fleet.body("b-rup-1").wg_ip);
        let second_lan = fleet.body("b-rup-2").lan_ip;
        let gate = fleet.lab().dir().join("gate");

        // The client waits for the gate before connecting; the body dies in between.
        let (mut head, record) = head_run(&fleet, "head-run", 1, 2_000, Some(&gate))?;
        wait_until(
            "the client launched on b-rup-1",
            Duration::from_secs(15),
            || {
                Ok(events(&record)
                    .contains(&format!("launched {first_lan}:47990"))
                    .then_some(()))
            },
        )
        .await?;
        fleet.kill_stream_server("b-rup-1");
        std::fs::write(&gate, "go")?;
        wait_success(&mut head, Duration::from_secs(30)).await?;

        assert_eq!(
            events(&record),
            [
                format!("launched {first_lan}:47990"),
                format!("failed {first_lan}:47990"),
                format!("launched {second_lan}:47990"),
                format!("connected {second_lan}:47990 body=b-rup-2"),
                format!("ended {second_lan}:47990 body=b-rup-2"),
            ]
        );
        assert_logged(&head, "failed to launch");
        assert_logged(&head, "dropping the route to b-rup-1");
        assert_logged(
            &head,
            &format!(
                "skipping body b-rup-1 (LAN {first_lan}: connection refused; \
                 WireGuard {first_wg}: connection refused)"
            ),
        );
        assert_logged(&head, &format!("routing via LAN: {second_lan}"));
        let last = pairing(&fleet).expect("pairing record");
        assert_eq!(
            (&last["body_id"], &last["state"]),
            (&serde_json::json!("b-rup-2"), &serde_json::json!("ended"))
        );
        Ok(())
    });
}
