//! Table tests and property tests of the best-peer rule, with a naive oracle written from the
//! field's words (float ratios, a sort) rather than from `best_peer`'s helpers.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

/// Parses `id pending/capacity` plus the modifier `down` (not alive in the mesh).
fn member(spec: &str) -> PeerLoad<'_> {
    let mut words = spec.split_whitespace();
    let id = words.next().expect("id");
    let (pending, capacity) = words
        .next()
        .and_then(|load| load.split_once('/'))
        .expect("pending/capacity");
    let mut load = PeerLoad {
        id,
        alive: true,
        pending: pending.parse().expect("pending"),
        capacity: capacity.parse().expect("capacity"),
    };
    for modifier in words {
        match modifier {
            "down" => load.alive = false,
            other => panic!("unknown modifier {other}"),
        }
    }
    load
}

fn answer(local: &PeerLoad<'_>, peers: &[PeerLoad<'_>]) -> String {
    match best_peer(local, peers) {
        Ok(PeerChoice::Local) => "local".to_owned(),
        Ok(PeerChoice::Peer(id)) => id.to_owned(),
        Err(error) => format!("error: {error}"),
    }
}

fn check(local: &str, peers: &[&str], expected: Expect) {
    let local = member(local);
    let peers: Vec<PeerLoad<'_>> = peers.iter().map(|spec| member(spec)).collect();
    expected.assert_eq(&answer(&local, &peers));
}

#[test]
fn the_least_loaded_peer_wins_when_less_loaded_than_local() {
    check("me 5/10", &["a 3/10", "b 1/10", "c 2/10"], expect!["b"]);
    // Ratio, not count: 2/4 = 50 % is more loaded than 5/15 = 33 %.
    check("me 9/10", &["small 2/4", "big 5/15"], expect!["big"]);
}

#[test]
fn the_work_stays_local_when_no_peer_is_less_loaded() {
    check("me 1/10", &["a 1/10", "b 5/10"], expect!["local"]);
    check("me 0/10", &["a 0/10"], expect!["local"]);
    check("me 3/10", &[], expect!["local"]);
    // Equal ratios keep it local, even when the peer has more free slots.
    check("me 1/2", &["big 5/10"], expect!["local"]);
}

#[test]
fn full_down_and_capacityless_peers_are_skipped() {
    check(
        "me 8/10",
        &[
            "full 10/10",
            "over 11/10",
            "down 0/10 down",
            "none 0/0",
            "ok 7/10",
        ],
        expect!["ok"],
    );
    check("me 8/10", &["down 0/10 down"], expect!["local"]);
    // A peer that claims the local id is the local worker's own echo.
    check("me 8/10", &["me 0/10"], expect!["local"]);
}

#[test]
fn a_full_local_worker_sends_work_to_any_peer_with_room() {
    check("me 10/10", &["a 9/10"], expect!["a"]);
    check("me 0/0", &["a 9/10"], expect!["a"]);
}

#[test]
fn all_full_is_back_pressure() {
    check(
        "me 10/10",
        &["a 10/10", "b 3/10 down", "c 0/0"],
        expect!["error: no healthy workers available"],
    );
    check(
        "me 0/0",
        &[],
        expect!["error: no healthy workers available"],
    );
}

#[test]
fn peer_ties_go_to_free_slots_then_id() {
    check("me 10/10", &["p-b 0/10", "p-a 0/10"], expect!["p-a"]);
    check("me 10/10", &["p-a 0/5", "p-b 0/15"], expect!["p-b"]);
    check("me 10/10", &["p-a 1/5", "p-b 3/15"], expect!["p-b"]);
}

/// The naive reading of the field's rule: float ratios, the live peers below 1 sorted by ratio
/// (then more free slots, then id), the first one if it beats the local ratio.
fn naive_best(local: &PeerLoad<'_>, peers: &[PeerLoad<'_>]) -> String {
    let ratio = |pending: u32, capacity: u32| {
        if capacity == 0 {
            f64::INFINITY
        } else {
            f64::from(pending) / f64::from(capacity)
        }
    };
    let local_ratio = ratio(local.pending, local.capacity);
    let mut candidates: Vec<(f64, i64, &str)> = peers
        .iter()
        .filter(|peer| peer.alive && peer.id != local.id)
        .map(|peer| {
            (
                ratio(peer.pending, peer.capacity),
                i64::from(peer.pending) - i64::from(peer.capacity),
                peer.id,
            )
        })
        .filter(|(peer_ratio, _, _)| *peer_ratio < 1.0)
        .collect();
    candidates.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .expect("finite")
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(b.2))
    });
    match candidates.first() {
        Some((peer_ratio, _, id)) if *peer_ratio < local_ratio || local_ratio >= 1.0 => {
            (*id).to_owned()
        }
        _ if local_ratio < 1.0 => "local".to_owned(),
        _ => "error: no healthy workers available".to_owned(),
    }
}

type Spec = (String, bool, u32, u32);

fn arb_members() -> impl Strategy<Value = (Spec, Vec<Spec>)> {
    let one = |index: usize| {
        (prop::bool::weighted(0.85), 0u32..12, 0u32..12).prop_map(
            move |(alive, pending, capacity)| (format!("n-{index:02}"), alive, pending, capacity),
        )
    };
    (
        (0u32..12, 0u32..12),
        (0usize..20).prop_flat_map(move |count| (0..count).map(one).collect::<Vec<_>>()),
    )
        .prop_map(|((pending, capacity), peers)| {
            (("local".to_owned(), true, pending, capacity), peers)
        })
}

fn loads(specs: &[Spec]) -> Vec<PeerLoad<'_>> {
    specs
        .iter()
        .map(|(id, alive, pending, capacity)| PeerLoad {
            id,
            alive: *alive,
            pending: *pending,
            capacity: *capacity,
        })
        .collect()
}

proptest! {
    #[test]
    fn the_choice_agrees_with_the_naive_oracle((local, peers) in arb_members()) {
        let local = loads(std::slice::from_ref(&local))[0];
        let peers = loads(&peers);
        prop_assert_eq!(answer(&local, &peers), naive_best(&local, &peers));
    }

    #[test]
    fn a_chosen_peer_is_alive_has_room_and_beats_local((local, peers) in arb_members()) {
        let local = loads(std::slice::from_ref(&local))[0];
        let peers = loads(&peers);
        match best_peer(&local, &peers) {
            Ok(PeerChoice::Peer(id)) => {
                let chosen = peers.iter().find(|peer| peer.id == id).expect("chosen exists");
                prop_assert!(chosen.alive && chosen.has_room());
                prop_assert!(!local.has_room() || chosen.pending * local.capacity < local.pending * chosen.capacity);
            }
            Ok(PeerChoice::Local) => prop_assert!(local.has_room()),
            Err(_) => {
                prop_assert!(!local.has_room());
                prop_assert!(peers.iter().all(|peer| !peer.alive || !peer.has_room()));
            }
        }
    }

    #[test]
    fn the_choice_does_not_depend_on_peer_order((local, peers) in arb_members()) {
        let local = loads(std::slice::from_ref(&local))[0];
        let peers = loads(&peers);
        let mut reversed = peers.clone();
        reversed.reverse();
        prop_assert_eq!(best_peer(&local, &peers), best_peer(&local, &reversed));
    }
}
