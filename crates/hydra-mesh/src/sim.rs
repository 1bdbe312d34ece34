//! The mesh simulated in memory: many `Mesh` members, a network of queued datagrams with
//! latency, loss and partitions, and time passed in (no sockets, no sleeps). Checks that every
//! kill is detected by every survivor and that no live member is declared down at 5 % loss.
//!
//! `HYDRA_MESH_SIM_MEMBERS` (200 by default) sets the size; the figures are printed to stderr:
//! `HYDRA_MESH_SIM_MEMBERS=1000 cargo nextest run --release -p hydra-agent --lib
//! -E 'test(/mesh_sim/)' --no-capture`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::member::{MemberId, MemberState};
use super::mesh::{Mesh, MeshEvent, MeshSettings};
use super::seal::OVERHEAD;

const START_MS: i64 = 1_700_000_000_000;

enum Delivery {
    Datagram { to: usize, data: Bytes },
    Wake(usize),
}

struct Network {
    members: Vec<Option<Mesh>>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(i64, u64, usize)>>,
    deliveries: HashMap<u64, Delivery>,
    seq: u64,
    wake_at: Vec<i64>,
    rng: StdRng,
    loss: f64,
    /// Members cut off from the others (both ways).
    island: HashSet<usize>,
    now: i64,
    /// Bytes on the wire, the seal's overhead included.
    bytes: u64,
    /// `(time, observer, event)`.
    log: Vec<(i64, usize, MeshEvent)>,
}

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from((
        [127, 0, 0, 1],
        20_000 + u16::try_from(index).expect("index"),
    ))
}

fn node_id(index: usize) -> String {
    format!("node-{index:04}")
}

impl Network {
    fn new(size: usize, seed: u64) -> Network {
        let mut network = Network {
            members: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            deliveries: HashMap::new(),
            seq: 0,
            wake_at: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            island: HashSet::new(),
            now: START_MS,
            bytes: 0,
            log: Vec::new(),
        };
        for index in 0..size {
            let id = MemberId {
                addr: addr(index),
                node_id: node_id(index),
                generation: 1,
            };
            let state = MemberState {
                node_id: id.node_id.clone(),
                generation: 1,
                version: 0,
                roles: vec!["worker".into()],
                api_url: format!("http://127.0.0.1:{}", 30_000 + index),
                pending: 0,
                capacity: 15,
                district: "d1".into(),
                venue: "v1".into(),
                tag: None,
            };
            let rng = <rand_foca::rngs::StdRng as rand_foca::SeedableRng>::seed_from_u64(
                seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let mesh = Mesh::new(id, state, MeshSettings::default(), rng, START_MS);
            network.by_addr.insert(addr(index), index);
            network.members.push(Some(mesh));
            network.wake_at.push(i64::MAX);
            network.flush(index);
        }
        network
    }

    fn push(&mut self, at: i64, delivery: Delivery) {
        self.seq += 1;
        self.deliveries.insert(self.seq, delivery);
        self.queue.push(Reverse((at, self.seq, 0)));
    }

    /// Sends what `index` has to send and schedules its next timer.
    fn flush(&mut self, index: usize) {
        let Some(mesh) = self.members[index].as_mut() else {
            return;
        };
        let mut outgoing = Vec::new();
        while let Some(datagram) = mesh.poll_transmit() {
            outgoing.push(datagram);
        }
        while let Some(event) = mesh.poll_event() {
            self.log.push((self.now, index, event));
        }
        let due = mesh.poll_timeout();
        for (to_addr, data) in outgoing {
            self.bytes += (data.len() + OVERHEAD) as u64;
            let Some(&to) = self.by_addr.get(&to_addr) else {
                continue;
            };
            let crosses = self.island.contains(&index) != self.island.contains(&to);
            if crosses || self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = self.rng.random_range(1..=5);
            self.push(self.now + latency, Delivery::Datagram { to, data });
        }
        if due < self.wake_at[index] || self.wake_at[index] < self.now {
            self.wake_at[index] = due;
            self.push(due.max(self.now), Delivery::Wake(index));
        }
    }

    fn run_until(&mut self, until: i64) {
        while let Some(Reverse((at, seq, _))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let index = match self.deliveries.remove(&seq).expect("a queued delivery") {
                Delivery::Datagram { to, data } => {
                    let Some(mesh) = self.members[to].as_mut() else {
                        continue;
                    };
                    mesh.handle_datagram(&data, at);
                    to
                }
                Delivery::Wake(index) => {
                    let Some(mesh) = self.members[index].as_mut() else {
                        continue;
                    };
                    if mesh.poll_timeout() > at {
                        continue;
                    }
                    self.wake_at[index] = i64::MAX;
                    mesh.handle_timeout(at);
                    index
                }
            };
            self.flush(index);
        }
        self.now = self.now.max(until);
    }

    fn join_all(&mut self) {
        for index in 1..self.members.len() {
            // A fleet boots over seconds, not all at once; each node knows a few peers
            // (`cluster.join_peers`).
            self.now += 20;
            let now = self.now;
            for _ in 0..3 {
                let seed = self.rng.random_range(0..index);
                self.members[index]
                    .as_mut()
                    .expect("alive")
                    .join(addr(seed), now);
            }
            self.flush(index);
            self.run_until(now);
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Mesh)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(index, mesh)| mesh.as_ref().map(|mesh| (index, mesh)))
    }

    /// Runs until every live member sees `expected` live peers, or `deadline_ms` of simulated
    /// time passed; answers whether it converged.
    fn converge(&mut self, expected: usize, deadline_ms: i64) -> bool {
        let deadline = self.now + deadline_ms;
        while self.now < deadline {
            let step = self.now + 100;
            self.run_until(step);
            if self.live().all(|(_, mesh)| mesh.num_members() == expected) {
                return true;
            }
        }
        false
    }

    fn downs_of_live_members(&self, since: i64) -> Vec<String> {
        self.log
            .iter()
            .filter(|(at, _, _)| *at >= since)
            .filter_map(|(_, observer, event)| match event {
                MeshEvent::Down(id) => {
                    let index = self.by_addr[&id.addr];
                    self.members[index]
                        .is_some()
                        .then(|| format!("{} saw {} down", node_id(*observer), id.node_id))
                }
                MeshEvent::DeclaredDown => Some(format!("{} declared down", node_id(*observer))),
                _ => None,
            })
            .collect()
    }
}

fn percentile(sorted: &[i64], fraction: f64) -> i64 {
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[test]
fn mesh_sim_detects_every_kill_and_no_live_member_at_five_percent_loss() {
    let size: usize = std::env::var("HYDRA_MESH_SIM_MEMBERS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200);
    let mut network = Network::new(size, 11);
    network.join_all();
    let converged = network.converge(size - 1, 300_000);
    eprintln!("[mesh-sim] converged after {} ms", network.now - START_MS);
    let mut counts: Vec<usize> = network.live().map(|(_, mesh)| mesh.num_members()).collect();
    counts.sort_unstable();
    if !converged {
        for (index, mesh) in network.live() {
            if mesh.num_members() < size - 1 {
                let views: Vec<String> = mesh
                    .members()
                    .iter()
                    .filter(|m| m.state != "alive")
                    .map(|m| format!("{:?} {}", m.id, m.state))
                    .collect();
                let known: HashSet<String> = mesh
                    .members()
                    .iter()
                    .map(|m| m.id.node_id.clone())
                    .collect();
                let missing: Vec<String> = (0..size)
                    .map(node_id)
                    .filter(|n| !known.contains(n) && *n != node_id(index))
                    .collect();
                eprintln!(
                    "{} sees {} not alive: {views:?} missing {missing:?}",
                    node_id(index),
                    mesh.num_members()
                );
            }
        }
    }
    assert!(
        converged,
        "the mesh of {size} did not converge: {:?} {:?}",
        &counts[..5],
        network.members[0].as_ref().unwrap().counters()
    );
    let published = network.live().all(|(_, mesh)| {
        mesh.members().iter().all(|member| {
            member
                .published
                .as_ref()
                .is_some_and(|state| state.capacity == 15)
        })
    });
    assert!(published, "every member's state reached every member");

    // 5 % loss for 20 s: nobody live is declared down.
    network.loss = 0.05;
    let lossy_since = network.now;
    let bytes_before = network.bytes;
    network.run_until(network.now + 20_000);
    let per_member_per_second = (network.bytes - bytes_before) as f64 / size as f64 / 20.0;
    let false_downs = network.downs_of_live_members(lossy_since);
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");

    // Kill 5 members, still at 5 % loss: every survivor sees each of them down.
    let killed: Vec<usize> = (0..5).map(|k| (k * 37 + 3) % size).collect();
    let killed_at = network.now;
    for &index in &killed {
        network.members[index] = None;
    }
    let survivors = size - killed.len();
    let deadline = killed_at + 60_000;
    let mut all_saw: HashMap<usize, i64> = HashMap::new();
    while network.now < deadline && all_saw.len() < killed.len() {
        network.run_until(network.now + 50);
        for &dead in &killed {
            if all_saw.contains_key(&dead) {
                continue;
            }
            let seen_by: HashSet<usize> = network
                .log
                .iter()
                .filter(|(at, _, event)| {
                    *at >= killed_at
                        && matches!(event, MeshEvent::Down(id) if id.addr == addr(dead))
                })
                .map(|(_, observer, _)| *observer)
                .collect();
            if seen_by.len() >= survivors {
                all_saw.insert(dead, network.now - killed_at);
            }
        }
    }
    assert_eq!(
        all_saw.len(),
        killed.len(),
        "kills not seen by every survivor within 60 s: {:?}",
        killed
            .iter()
            .filter(|dead| !all_saw.contains_key(dead))
            .collect::<Vec<_>>()
    );
    let false_downs = network.downs_of_live_members(lossy_since);
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");
    let mut first_seen: Vec<i64> = killed
        .iter()
        .map(|&dead| {
            network
                .log
                .iter()
                .find(|(at, _, event)| {
                    *at >= killed_at
                        && matches!(event, MeshEvent::Down(id) if id.addr == addr(dead))
                })
                .map(|(at, _, _)| at - killed_at)
                .expect("seen")
        })
        .collect();
    first_seen.sort_unstable();
    let mut everyone: Vec<i64> = all_saw.values().copied().collect();
    everyone.sort_unstable();
    eprintln!(
        "[mesh-sim] members={size} loss=5% kills={} first_detection_ms(p50={} max={}) \
         all_survivors_ms(p50={} max={}) bytes_per_member_per_s={per_member_per_second:.0}",
        killed.len(),
        percentile(&first_seen, 0.5),
        percentile(&first_seen, 1.0),
        percentile(&everyone, 0.5),
        percentile(&everyone, 1.0),
    );

    // A partition: 10 % of the members cut off for 20 s. Each side declares the other down
    // (that is what it sees); once healed, the mesh joins up again.
    network.loss = 0.0;
    let island: HashSet<usize> = (0..size)
        .filter(|index| index % 10 == 1 && !killed.contains(index))
        .collect();
    network.island = island.clone();
    network.run_until(network.now + 20_000);
    let cut_off = network.log.iter().any(|(at, observer, event)| {
        *at >= killed_at
            && !island.contains(observer)
            && matches!(event, MeshEvent::Down(id) if island.contains(&network.by_addr[&id.addr]))
    });
    assert!(cut_off, "the majority saw the island go down");
    network.island.clear();
    assert!(
        network.converge(survivors - 1, 180_000),
        "the mesh did not heal after the partition"
    );
}
