//! The mesh simulated in memory: many `Mesh` members, a network of queued datagrams with
//! latency, loss and partitions, and time passed in (no sockets, no sleeps). Checks that every
//! kill is detected by every survivor, fast enough at 8 members (p99 under 3 s), and that no
//! live member is declared down at 5 % loss.
//!
//! `HYDRA_MESH_SIM_MEMBERS` (200 by default) sets the size of the large run and
//! `HYDRA_MESH_SIM_ROUNDS` (40) the kills of the 8-member run; the figures are printed to
//! stderr: `HYDRA_MESH_SIM_MEMBERS=1000 cargo test --release -p hydra-mesh --lib mesh_sim --
//! --nocapture`.

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
    /// `(time, observer, member)` for each member seen down. Ups are only counted: every member
    /// seeing every other one come up is a million entries at 1,000 members, and scanning them
    /// at each step of a kill was most of the large run's time.
    downs: Vec<(i64, usize, MemberId)>,
    /// `(time, member)` each time the mesh declared a live member down (it then rejoins).
    declared_down: Vec<(i64, usize)>,
    ups: u64,
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
            downs: Vec::new(),
            declared_down: Vec::new(),
            ups: 0,
        };
        for _ in 0..size {
            network.add_member(seed);
        }
        network
    }

    /// A new member, not joined yet; answers its index.
    fn add_member(&mut self, seed: u64) -> usize {
        let index = self.members.len();
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
        let mesh = Mesh::new(id, state, MeshSettings::default(), rng, self.now);
        self.by_addr.insert(addr(index), index);
        self.members.push(Some(mesh));
        self.wake_at.push(i64::MAX);
        self.flush(index);
        index
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
            match event {
                MeshEvent::Up(_) => self.ups += 1,
                MeshEvent::Down(id) => self.downs.push((self.now, index, id)),
                MeshEvent::DeclaredDown => self.declared_down.push((self.now, index)),
                MeshEvent::Rejoined(_) => {}
            }
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

    /// How far the members' views are from each other: the fewest, median and most live peers
    /// a member sees, and the longest backlogs of membership updates and of state broadcasts
    /// still to be sent.
    fn spread(&self) -> String {
        let mut counts: Vec<usize> = self.live().map(|(_, mesh)| mesh.num_members()).collect();
        counts.sort_unstable();
        let (updates, broadcasts) = self
            .live()
            .map(|(_, mesh)| mesh.backlogs())
            .fold((0, 0), |(u, b), (mu, mb)| (u.max(mu), b.max(mb)));
        format!(
            "t={}s num_members min={} p50={} max={} backlog max updates={updates} \
             broadcasts={broadcasts}",
            (self.now - START_MS) / 1_000,
            counts.first().copied().unwrap_or(0),
            counts.get(counts.len() / 2).copied().unwrap_or(0),
            counts.last().copied().unwrap_or(0),
        )
    }

    /// Runs until every live member sees `expected` live peers, or `deadline_ms` of simulated
    /// time passed; answers whether it converged. Logs the spread every 10 s of simulated time.
    fn converge(&mut self, expected: usize, deadline_ms: i64) -> bool {
        let started = self.now;
        let deadline = self.now + deadline_ms;
        let mut next_log = self.now;
        while self.now < deadline {
            let step = self.now + 100;
            self.run_until(step);
            if self.live().all(|(_, mesh)| mesh.num_members() == expected) {
                return true;
            }
            if self.now >= next_log && self.members.len() > 100 {
                eprintln!("[mesh-sim] converging: {}", self.spread());
                next_log = self.now + 10_000;
            }
        }
        eprintln!(
            "[mesh-sim] not converged after {} ms: {}",
            self.now - started,
            self.spread()
        );
        false
    }

    /// Live members seen down, and live members the mesh declared down, since `since`.
    fn false_downs(&self, since: i64) -> Vec<String> {
        let seen = self
            .downs
            .iter()
            .filter(|(at, _, id)| *at >= since && self.members[self.by_addr[&id.addr]].is_some())
            .map(|(_, observer, id)| format!("{} saw {} down", node_id(*observer), id.node_id));
        let declared = self
            .declared_down
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, member)| format!("{} declared down", node_id(*member)));
        seen.chain(declared).collect()
    }

    /// Kills `victims` (no leave) and runs until every survivor saw each of them down, or
    /// `deadline_ms` passed. Answers, per victim, how long after the kill each survivor that
    /// saw it down did so (ms, in the order they did).
    fn kill(&mut self, victims: &[usize], deadline_ms: i64) -> Vec<Vec<i64>> {
        let killed_at = self.now;
        let first_new = self.downs.len();
        for &victim in victims {
            self.members[victim] = None;
        }
        let survivors = self.live().count();
        let deadline = killed_at + deadline_ms;
        loop {
            let seen = self.seen_down(victims, killed_at, first_new);
            if self.now >= deadline || seen.iter().all(|times| times.len() >= survivors) {
                return seen;
            }
            self.run_until(self.now + 50);
        }
    }

    fn seen_down(&self, victims: &[usize], killed_at: i64, first_new: usize) -> Vec<Vec<i64>> {
        victims
            .iter()
            .map(|&victim| {
                let mut observers = HashSet::new();
                self.downs[first_new..]
                    .iter()
                    .filter(|(_, observer, id)| {
                        id.addr == addr(victim) && observers.insert(*observer)
                    })
                    .map(|(at, _, _)| at - killed_at)
                    .collect()
            })
            .collect()
    }
}

fn percentile(sorted: &[i64], fraction: f64) -> i64 {
    let rank = ((sorted.len() as f64) * fraction).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50`, `p99` and max of `samples`, as the figures print them.
fn figures(samples: &mut [i64]) -> String {
    samples.sort_unstable();
    format!(
        "p50={} p99={} max={}",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        percentile(samples, 1.0)
    )
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mesh_sim_detects_every_kill_and_no_live_member_at_five_percent_loss() {
    let booted = env_number("HYDRA_MESH_SIM_MEMBERS", 200);
    let mut network = boot(booted);
    newcomer_learns_every_member(&mut network);
    let size = booted + 1;
    let killed = kills_seen_by_every_survivor_at_five_percent_loss(&mut network, size);
    partition_heals(&mut network, size, &killed);
}

/// A mesh of `size` booted and converged: every member sees every other one alive, with its
/// published state.
fn boot(size: usize) -> Network {
    let mut network = Network::new(size, 11);
    network.join_all();
    let converged = network.converge(size - 1, 300_000);
    eprintln!(
        "[mesh-sim] members={size} converged={converged} after {} ms ({} ups seen)",
        network.now - START_MS,
        network.ups
    );
    if !converged {
        for (index, mesh) in network.live().take(3) {
            let known: HashSet<String> = mesh
                .members()
                .iter()
                .filter(|m| m.state == "alive")
                .map(|m| m.id.node_id.clone())
                .collect();
            let missing: Vec<String> = (0..size)
                .map(node_id)
                .filter(|n| !known.contains(n) && *n != node_id(index))
                .take(10)
                .collect();
            eprintln!("{} misses {missing:?}", node_id(index));
        }
    }
    assert!(
        converged,
        "the mesh of {size} did not converge: {} {:?}",
        network.spread(),
        network.members[0].as_ref().expect("alive").counters()
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
    network
}

/// A newcomer joining the converged mesh through one peer learns every member within
/// seconds: each member that sees it come up tells it who it is (`KIND_MEMBER`), where
/// announce feeds (a few dozen members each) and probes took minutes at 1,000.
fn newcomer_learns_every_member(network: &mut Network) {
    let newcomer = network.add_member(11);
    let joined_at = network.now;
    network.members[newcomer]
        .as_mut()
        .expect("alive")
        .join(addr(0), joined_at);
    network.flush(newcomer);
    let knows_all = network.converge(network.members.len() - 1, 5_000);
    eprintln!(
        "[mesh-sim] a newcomer knew every member after {} ms (converged={knows_all})",
        network.now - joined_at
    );
    assert!(
        knows_all,
        "the newcomer did not learn every member within 5 s: {}",
        network.spread()
    );
}

/// 5 % loss for 20 s (nobody live declared down), then 5 members killed, still at 5 % loss:
/// every survivor sees each of them down and still nobody live is. Answers the killed.
fn kills_seen_by_every_survivor_at_five_percent_loss(
    network: &mut Network,
    size: usize,
) -> Vec<usize> {
    network.loss = 0.05;
    let lossy_since = network.now;
    let bytes_before = network.bytes;
    network.run_until(network.now + 20_000);
    let per_member_per_second = (network.bytes - bytes_before) as f64 / size as f64 / 20.0;
    let false_downs = network.false_downs(lossy_since);
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");

    let killed: Vec<usize> = (0..5).map(|k| (k * 37 + 3) % size).collect();
    let survivors = size - killed.len();
    let seen = network.kill(&killed, 60_000);
    let unseen: Vec<usize> = killed
        .iter()
        .zip(&seen)
        .filter(|(_, times)| times.len() < survivors)
        .map(|(victim, _)| *victim)
        .collect();
    assert!(
        unseen.is_empty(),
        "kills not seen by every survivor within 60 s: {unseen:?}"
    );
    let false_downs = network.false_downs(lossy_since);
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");
    let mut first: Vec<i64> = seen.iter().map(|times| times[0]).collect();
    let mut every: Vec<i64> = seen.iter().map(|times| times[times.len() - 1]).collect();
    let mut each: Vec<i64> = seen.iter().flatten().copied().collect();
    eprintln!(
        "[mesh-sim] members={size} loss=5% kills={} first_survivor_ms({}) \
         each_survivor_ms({}) every_survivor_ms({}) bytes_per_member_per_s={per_member_per_second:.0}",
        killed.len(),
        figures(&mut first),
        figures(&mut each),
        figures(&mut every),
    );
    killed
}

/// A partition: 10 % of the members cut off for 20 s. Each side declares the other down
/// (that is what it sees); once healed, the mesh joins up again.
fn partition_heals(network: &mut Network, size: usize, killed: &[usize]) {
    network.loss = 0.0;
    let island: HashSet<usize> = (0..size)
        .filter(|index| index % 10 == 1 && !killed.contains(index))
        .collect();
    network.island = island.clone();
    let cut_at = network.now;
    network.run_until(network.now + 20_000);
    let cut_off = network.downs.iter().any(|(at, observer, id)| {
        *at >= cut_at && !island.contains(observer) && island.contains(&network.by_addr[&id.addr])
    });
    assert!(cut_off, "the majority saw the island go down");
    network.island.clear();
    let survivors = size - killed.len();
    assert!(
        network.converge(survivors - 1, 180_000),
        "the mesh did not heal after the partition"
    );
}

/// The kill benchmark's size (8 agents): one kill per round, each round a fresh mesh under
/// another seed, at 5 % loss. The server is one more survivor, so what it takes every survivor
/// to see a kill is what it takes the server to stop offering the node.
#[test]
fn mesh_sim_eight_members_see_a_kill_within_three_seconds_at_p99_and_no_false_down() {
    const SIZE: usize = 8;
    let rounds = env_number("HYDRA_MESH_SIM_ROUNDS", 40);
    let mut each = Vec::new();
    let mut every = Vec::new();
    let mut false_downs = Vec::new();
    let mut bytes = 0;
    let mut lossy_ms = 0;
    for round in 0..rounds {
        let mut network = Network::new(SIZE, 1_000 + round as u64);
        network.join_all();
        assert!(
            network.converge(SIZE - 1, 60_000),
            "round {round}: not converged"
        );
        network.loss = 0.05;
        let lossy_since = network.now;
        let bytes_before = network.bytes;
        network.run_until(network.now + 30_000);
        bytes += network.bytes - bytes_before;
        lossy_ms += 30_000;
        let victim = round % SIZE;
        let seen = network.kill(&[victim], 30_000);
        assert_eq!(
            seen[0].len(),
            SIZE - 1,
            "round {round}: node-{victim:04} not seen down by every survivor within 30 s"
        );
        each.extend(seen[0].iter().copied());
        every.push(seen[0][SIZE - 2]);
        false_downs.extend(network.false_downs(lossy_since));
    }
    let per_member_per_second = bytes as f64 / SIZE as f64 / (lossy_ms as f64 / 1_000.0);
    let p99_each = {
        each.sort_unstable();
        percentile(&each, 0.99)
    };
    let p99_every = {
        every.sort_unstable();
        percentile(&every, 0.99)
    };
    eprintln!(
        "[mesh-sim] members={SIZE} loss=5% kills={rounds} each_survivor_ms({}) \
         every_survivor_ms({}) false_downs={} bytes_per_member_per_s={per_member_per_second:.0}",
        figures(&mut each),
        figures(&mut every),
        false_downs.len()
    );
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");
    assert!(
        p99_each < 3_000 && p99_every < 3_000,
        "a kill seen by a survivor at p99 {p99_each} ms, by every survivor at p99 {p99_every} ms"
    );
}
