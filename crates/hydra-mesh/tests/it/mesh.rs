//! The mesh on real UDP sockets on 127.0.0.1: members find each other from a peer list and
//! publish their load; a member whose task is killed (no leave) is declared down by the others
//! within seconds and, restarted on its address with a newer generation, is alive again at once;
//! one that shuts down leaves at once; a node with another cluster key is never
//! let in and its datagrams are counted as dropped.

use std::time::{Duration, Instant};

use hydra_mesh::driver::{self, ClusterHandle, ClusterSettings, Discovery};
use hydra_mesh::member::{MemberId, MemberState};
use hydra_mesh::mesh::{MeshEvent, MeshSettings};
use hydra_mesh::seal::Keyring;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const KEY: [u8; 32] = [7; 32];
const OTHER_KEY: [u8; 32] = [8; 32];

struct Member {
    handle: ClusterHandle,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn member(name: &str, key: [u8; 32], peers: Vec<String>, pending: u32) -> Member {
    member_at("127.0.0.1:0", 1, name, key, peers, pending).await
}

async fn member_at(
    bind: &str,
    generation: u64,
    name: &str,
    key: [u8; 32],
    peers: Vec<String>,
    pending: u32,
) -> Member {
    let socket = UdpSocket::bind(bind).await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let id = MemberId {
        addr,
        node_id: name.to_owned(),
        generation,
    };
    let state = MemberState {
        node_id: name.to_owned(),
        generation: 1,
        version: 0,
        roles: vec!["worker".into()],
        api_url: format!("http://127.0.0.1/{name}"),
        pending: 0,
        capacity: 0,
        district: "d1".into(),
        venue: "v1".into(),
        tag: None,
    };
    let settings = ClusterSettings {
        id,
        state,
        discovery: Discovery::List(peers),
        port: 0,
        keyring: Keyring::new(&[key]).expect("keyring"),
        mesh: MeshSettings::default(),
    };
    let handle = ClusterHandle::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(driver::run(
        socket,
        settings,
        handle.clone(),
        move || (pending, 10),
        stop.clone(),
    ));
    Member {
        handle,
        addr,
        stop,
        task,
    }
}

fn state_of(member: &Member, node_id: &str) -> Option<String> {
    member
        .handle
        .status(true)
        .members
        .unwrap_or_default()
        .into_iter()
        .find(|seen| seen.node_id == node_id)
        .map(|seen| seen.state)
}

async fn wait_for(what: &str, deadline: Duration, check: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_killed_member_is_down_within_seconds_and_its_restart_rejoins() {
    let first = member("m1", KEY, vec![], 1).await;
    let seed = vec![first.addr.to_string()];
    let second = member("m2", KEY, seed.clone(), 2).await;
    let third = member("m3", KEY, seed.clone(), 3).await;
    let stranger = member("intruder", OTHER_KEY, seed.clone(), 0).await;
    let everyone = [&first, &second, &third];
    wait_for(
        "every member sees the two others alive with their load",
        Duration::from_secs(20),
        || {
            everyone.iter().all(|member| {
                let alive: Vec<_> = member
                    .handle
                    .status(true)
                    .members
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|seen| seen.state == "alive" && seen.capacity == Some(10))
                    .collect();
                alive.len() == 2
            })
        },
    )
    .await;
    let seen_by_first = first.handle.status(true);
    let m3 = seen_by_first
        .members
        .as_ref()
        .and_then(|members| members.iter().find(|seen| seen.node_id == "m3"))
        .expect("m3 seen");
    assert_eq!(
        (m3.pending, m3.api_url.as_deref()),
        (Some(3), Some("http://127.0.0.1/m3"))
    );
    assert_eq!(seen_by_first.key_ids.len(), 1);
    // Without a token: counts, no members.
    assert_eq!(first.handle.status(false).members, None);
    assert_eq!(
        first.handle.status(false).members_by_state.get("alive"),
        Some(&2)
    );

    // The intruder's datagrams never open: counted, and it is no member.
    wait_for(
        "the intruder's datagrams are counted as dropped",
        Duration::from_secs(20),
        || {
            first
                .handle
                .status(false)
                .dropped
                .get("unknown_key")
                .copied()
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    assert!(
        everyone
            .iter()
            .all(|member| state_of(member, "intruder").is_none())
    );
    assert_eq!(
        stranger.handle.status(false).members_by_state.get("alive"),
        Some(&0)
    );

    // Killed: the task is aborted, so no leave is sent; the failure detector finds it.
    let mut changes = first.handle.subscribe();
    third.task.abort();
    let detected = wait_for(
        "both survivors see m3 down",
        Duration::from_secs(15),
        || {
            [&first, &second]
                .iter()
                .all(|member| state_of(member, "m3").as_deref() == Some("down"))
        },
    )
    .await;
    eprintln!("[mesh-udp] killed member seen down by every survivor after {detected:?}");
    // The counters a metrics exporter renders: probes ran, the kill was suspected before it
    // was declared down, and the intruder's datagrams count as a bad seal.
    let metrics = first.handle.metrics();
    assert!(metrics.enabled && metrics.probes > 0, "{metrics:?}");
    assert!(metrics.suspicions >= 1 && metrics.downs >= 1, "{metrics:?}");
    assert!(metrics.dropped_bad_seal > 0, "{metrics:?}");
    assert_eq!(first.handle.status(false).detector.downs, metrics.downs);
    // The same change reached a subscriber (the seam the server will act on).
    let handed_on = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(event) = changes.recv().await {
            if matches!(&event, MeshEvent::Down(id) if id.node_id == "m3") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        handed_on,
        Ok(true),
        "m3's down was handed to the subscriber"
    );

    // Restarted on the same address with a newer generation: it rejoins at once, the old life
    // replaced rather than waited out.
    let _ = third.task.await;
    let restarted = member_at(&third.addr.to_string(), 2, "m3", KEY, seed.clone(), 0).await;
    wait_for(
        "both survivors see m3's new life alive",
        Duration::from_secs(10),
        || {
            [&first, &second].iter().all(|member| {
                member
                    .handle
                    .status(true)
                    .members
                    .unwrap_or_default()
                    .iter()
                    .any(|seen| {
                        seen.node_id == "m3" && seen.state == "alive" && seen.generation == 2
                    })
            })
        },
    )
    .await;
    restarted.stop.cancel();
    let _ = restarted.task.await;

    // A graceful leave is seen (usually at once, well under the failure detector's time; the
    // bound is a hang guard with room for a loaded host, not a measurement: a full CI run on
    // 2 busy cores once missed 2 s).
    second.stop.cancel();
    tokio::time::timeout(Duration::from_secs(6), second.task)
        .await
        .expect("the leave is bounded")
        .expect("the driver ends");
    wait_for("m1 sees m2 leave", Duration::from_secs(15), || {
        state_of(&first, "m2").as_deref() == Some("down")
    })
    .await;
    first.stop.cancel();
    stranger.stop.cancel();
    let _ = first.task.await;
    let _ = stranger.task.await;
}
