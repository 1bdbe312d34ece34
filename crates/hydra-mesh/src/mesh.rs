//! The mesh as a sans-IO state machine around foca: datagrams and time in, datagrams, timers
//! and membership events out. The UDP driver (`driver.rs`) and the in-memory simulation drive the
//! very same code, so whole clusters are tested without sockets or sleeps.
//!
//! A payload starts with its kind: [`KIND_FOCA`] (foca's own messages, states piggybacked as
//! custom broadcasts), [`KIND_MEMBER`] (a member's identity and state sent straight to a
//! newcomer, so a joiner learns every member and its load at once without the whole mesh
//! re-broadcasting) or [`KIND_STATE`] (the same without the identity, from older members).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, State, Timer};
use rand_foca::rngs::StdRng;

use super::member::{MemberId, MemberState, SharedBook};

/// First byte of a payload carrying a foca message.
pub const KIND_FOCA: u8 = 0;
/// First byte of a payload carrying one member's state, sent to a newcomer (by older members;
/// still read).
pub const KIND_STATE: u8 = 1;
/// First byte of a payload carrying the sender's identity and state, sent to a newcomer when
/// the sender sees it come up. The newcomer takes the sender as alive: the members that joined
/// before it are otherwise learnt only from announce feeds (a few dozen each) and from their
/// probes, which took minutes at 1,000 members (the simulation did not converge in 300 s).
pub const KIND_MEMBER: u8 = 2;

/// Timing of the failure detector. Shorter than memberlist's LAN defaults (1 s probes, at least
/// 4 s of suspicion), so a dead node is out of selection within about 2.5 s at 8 members; foca's
/// indirect probes and the suspect's own refutation keep a lossy link from removing a live
/// member. Chosen with the in-memory simulation (`sim.rs`): 2,000 kills at 8 members and 5 %
/// loss, every survivor saw the kill at p99 2.3 s, and no live member was declared down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshSettings {
    /// Each member probes one other member per period.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// Suspicion lasts `suspicion_periods × max(1, log10 members) × probe_period`.
    pub suspicion_periods: f64,
    /// Each membership update and state publication is sent at least this many times by every
    /// member that holds it (foca's LAN rule alone gives 3 at 8 members, 12 at 1,000). A
    /// suspected member refutes only once it hears of the suspicion, and nobody repeats the news
    /// after their copies are spent: with 6 copies 2 simulated kill rounds in 1,000 declared a
    /// live member down at 5 % loss, with 12 none in 2,000.
    pub min_transmissions: u8,
    /// How often a member re-publishes its state even when unchanged, in a small mesh.
    pub rebroadcast: Duration,
    /// ... stretched by this much per member: each publication costs every member
    /// retransmissions, so a fixed period would make the per-member cost grow with the mesh.
    pub rebroadcast_per_member: Duration,
    /// Load changes are published at most this often (coalesced).
    pub min_publish_gap: Duration,
    /// Largest datagram foca may build (before sealing).
    pub max_payload: usize,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            // A kill is first probed within a few periods, then the probe's period runs out,
            // then the suspicion: 300 ms periods with 0.9 s of suspicion keep the sum under 3 s.
            probe_period: Duration::from_millis(300),
            // Loopback and LAN round trips are far below this; a late ack still counts through
            // the indirect probes, which get the rest of the period.
            probe_rtt: Duration::from_millis(100),
            suspicion_periods: 3.0,
            min_transmissions: 12,
            rebroadcast: Duration::from_secs(5),
            rebroadcast_per_member: Duration::from_millis(250),
            min_publish_gap: Duration::from_secs(1),
            // One byte goes to the payload's kind.
            max_payload: 1400 - super::seal::OVERHEAD - 1,
        }
    }
}

impl MeshSettings {
    /// foca's configuration for a cluster of `members`.
    pub fn foca_config(&self, members: usize) -> foca::Config {
        let size = NonZeroU32::new(u32::try_from(members.max(1)).unwrap_or(u32::MAX))
            .expect("at least one member");
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspicion(members);
        // A down member is remembered a while, so a late datagram of its old life is refused.
        config.remove_down_after = Some(Duration::from_secs(15 * 60));
        config.max_packet_size = NonZeroUsize::new(self.max_payload).expect("a packet size");
        config.max_transmissions = config
            .max_transmissions
            .max(NonZeroU8::new(self.min_transmissions).unwrap_or(NonZeroU8::MIN));
        // Each announce brings back a feed of a few dozen random members: two members that both
        // missed each other's join (rare, but a pair or two in a fleet of 1,000 booting at once)
        // find each other through it. Every 10 s to one member left such a pair apart for over
        // 5 minutes in the 1,000-member simulation; every 5 s to two, it converged in 29 s.
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::new(2).expect("two"),
        });
        // A healed partition rejoins within seconds, not memberlist's minute.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).expect("two"),
        });
        config
    }

    fn rebroadcast_period(&self, members: usize) -> Duration {
        self.rebroadcast
            .max(self.rebroadcast_per_member * u32::try_from(members).unwrap_or(u32::MAX))
    }

    fn suspicion(&self, members: usize) -> Duration {
        let scale = (members.max(1) as f64).log10().max(1.0);
        self.probe_period
            .mul_f64(self.suspicion_periods * scale)
            .max(self.probe_period)
    }
}

/// A change of membership that the rest of the agent (or the server) acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// A member joined or came back.
    Up(MemberId),
    /// A member was declared down (or left).
    Down(MemberId),
    /// The mesh declared this node down; foca rejoins under a renewed identity.
    DeclaredDown,
    /// This node's identity was renewed (generation bumped) to rejoin.
    Rejoined(MemberId),
}

/// How the mesh sees one member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// Its identity.
    pub id: MemberId,
    /// `alive`, `suspect` or `down`.
    pub state: &'static str,
    /// Its SWIM incarnation (grows each time it refutes a suspicion).
    pub incarnation: u16,
    /// Unix ms of the last up/down seen, if any since this node started.
    pub last_change_ms: Option<i64>,
    /// The newest state it published, if heard.
    pub published: Option<MemberState>,
}

/// Counts for metrics and the cluster route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshCounters {
    /// Datagrams foca refused after they opened (stale identity, malformed, not for us).
    pub refused: u64,
    /// Members declared down, as seen here.
    pub downs: u64,
    /// Bytes of payload handed out to send.
    pub bytes_out: u64,
    /// Datagrams handed out to send.
    pub datagrams_out: u64,
    /// Probe rounds this node ran (one member probed directly per round).
    pub probes: u64,
    /// Direct probes that went unanswered in time, so others were asked to probe indirectly.
    pub indirect_probes: u64,
    /// Suspicions this node started or learnt of (each one ends in a refutation or a down).
    pub suspicions: u64,
}

/// One node's view of the mesh.
pub struct Mesh {
    foca: Foca<MemberId, PostcardCodec, StdRng, SharedBook>,
    book: SharedBook,
    runtime: AccumulatingRuntime<MemberId>,
    settings: MeshSettings,
    timers: BTreeMap<(i64, u64), Timer<MemberId>>,
    timer_seq: u64,
    now_ms: i64,
    local: MemberState,
    next_rebroadcast_ms: i64,
    last_publish_ms: i64,
    load_dirty: bool,
    tuned_for: usize,
    /// foca's retransmissions and suspicion as last set (see [`Mesh::tune`]).
    tuning: (NonZeroU8, Duration),
    last_change: HashMap<SocketAddr, i64>,
    outbox: VecDeque<(SocketAddr, Bytes)>,
    events: VecDeque<MeshEvent>,
    counters: MeshCounters,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish_non_exhaustive()
    }
}

fn ceil_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

impl Mesh {
    /// A mesh of one: `id` publishing `local` (its `generation` and `version` are set here).
    pub fn new(
        id: MemberId,
        mut local: MemberState,
        settings: MeshSettings,
        rng: StdRng,
        now_ms: i64,
    ) -> Mesh {
        local.node_id.clone_from(&id.node_id);
        local.generation = id.generation;
        local.version = 0;
        let book = SharedBook::default();
        let initial = settings.foca_config(1);
        let foca =
            Foca::with_custom_broadcast(id, initial.clone(), rng, PostcardCodec, book.clone());
        let mut mesh = Mesh {
            foca,
            book,
            runtime: AccumulatingRuntime::new(),
            settings,
            timers: BTreeMap::new(),
            timer_seq: 0,
            now_ms,
            local,
            next_rebroadcast_ms: now_ms,
            last_publish_ms: i64::MIN / 2,
            load_dirty: false,
            tuned_for: 1,
            tuning: (initial.max_transmissions, initial.suspect_to_down_after),
            last_change: HashMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            counters: MeshCounters::default(),
        };
        mesh.publish();
        mesh
    }

    /// This node's identity now (renewed after a false down).
    pub fn identity(&self) -> &MemberId {
        self.foca.identity()
    }

    /// Live members besides this node.
    pub fn num_members(&self) -> usize {
        self.foca.num_members()
    }

    /// foca's dissemination backlogs: membership updates and state broadcasts still to be
    /// sent (long ones mean the mesh gossips slower than it changes).
    pub fn backlogs(&self) -> (usize, usize) {
        (
            self.foca.updates_backlog(),
            self.foca.custom_broadcast_backlog(),
        )
    }

    /// Counters so far.
    pub fn counters(&self) -> MeshCounters {
        self.counters
    }

    /// Asks the member at `addr` to let this node in.
    pub fn join(&mut self, addr: SocketAddr, now_ms: i64) {
        self.advance(now_ms);
        if self.foca.identity().addr == addr {
            return;
        }
        if self
            .foca
            .announce(MemberId::placeholder(addr), &mut self.runtime)
            .is_err()
        {
            self.counters.refused += 1;
        }
        self.drain();
    }

    /// Feeds a payload that opened under the cluster key.
    pub fn handle_datagram(&mut self, payload: &[u8], now_ms: i64) {
        self.advance(now_ms);
        let refused = match payload.split_first() {
            Some((&KIND_FOCA, message)) => {
                self.foca.handle_data(message, &mut self.runtime).is_err()
            }
            Some((&KIND_STATE, state)) => self.book.lock().receive_direct(state).is_err(),
            Some((&KIND_MEMBER, member)) => !self.receive_member(member),
            _ => true,
        };
        if refused {
            self.counters.refused += 1;
        }
        self.drain();
    }

    /// Fires the timers due at `now_ms`, in order, and re-publishes the state when due.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        self.advance(now_ms);
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let timer = entry.remove();
            match &timer {
                Timer::ProbeRandomMember(_) if self.foca.num_members() > 0 => {
                    self.counters.probes += 1;
                }
                Timer::SendIndirectProbe { .. } => self.counters.indirect_probes += 1,
                _ => {}
            }
            // An error here is a timer of an identity that changed meanwhile: nothing to do.
            let _stale_timer = self.foca.handle_timer(timer, &mut self.runtime);
            self.drain();
        }
        let load_due = self.load_dirty
            && now_ms >= self.last_publish_ms + ceil_ms(self.settings.min_publish_gap);
        if load_due || now_ms >= self.next_rebroadcast_ms {
            self.publish();
        }
    }

    /// When [`Mesh::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> i64 {
        let next_timer = self.timers.keys().next().map_or(i64::MAX, |key| key.0);
        let next_load = if self.load_dirty {
            self.last_publish_ms + ceil_ms(self.settings.min_publish_gap)
        } else {
            i64::MAX
        };
        next_timer.min(self.next_rebroadcast_ms).min(next_load)
    }

    /// The next datagram to seal and send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.outbox.pop_front()
    }

    /// The next membership change.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// Updates this node's published load; a change is published at once, or when
    /// [`MeshSettings::min_publish_gap`] has passed since the last publication.
    pub fn set_load(&mut self, pending: u32, capacity: u32, now_ms: i64) {
        if (self.local.pending, self.local.capacity) == (pending, capacity) {
            return;
        }
        self.advance(now_ms);
        self.local.pending = pending;
        self.local.capacity = capacity;
        self.load_dirty = true;
        if now_ms >= self.last_publish_ms + ceil_ms(self.settings.min_publish_gap) {
            self.publish();
        }
    }

    /// The state this node publishes.
    pub fn local_state(&self) -> &MemberState {
        &self.local
    }

    /// Tells the others this node leaves; the datagrams to send are in the outbox.
    pub fn leave(&mut self, now_ms: i64) {
        self.advance(now_ms);
        let _already_left = self.foca.leave_cluster(&mut self.runtime);
        self.drain();
    }

    /// Every member this node knows of (itself excluded), alive, suspect or down, sorted by
    /// node id.
    pub fn members(&self) -> Vec<MemberView> {
        let book = self.book.lock();
        let mut members: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            .map(|member| MemberView {
                id: member.id().clone(),
                state: match member.state() {
                    State::Alive => "alive",
                    State::Suspect => "suspect",
                    State::Down => "down",
                },
                incarnation: member.incarnation(),
                last_change_ms: self.last_change.get(&member.id().addr).copied(),
                published: book
                    .get(&member.id().node_id)
                    .filter(|state| state.generation == member.id().generation)
                    .cloned(),
            })
            .collect();
        members.sort_by(|a, b| {
            a.id.node_id
                .cmp(&b.id.node_id)
                .then(a.id.addr.cmp(&b.id.addr))
        });
        members
    }

    fn advance(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn publish(&mut self) {
        self.local.version += 1;
        self.local.generation = self.foca.identity().generation;
        let bytes = postcard::to_allocvec(&self.local).expect("a member state encodes");
        // Our own broadcast is always newer than what the book holds, so this cannot fail.
        let _own_broadcast = self.foca.add_broadcast(&bytes);
        self.load_dirty = false;
        self.last_publish_ms = self.now_ms;
        let period = self
            .settings
            .rebroadcast_period(self.foca.num_members() + 1);
        self.next_rebroadcast_ms = self.now_ms + ceil_ms(period);
    }

    /// Sends this node's identity and state straight to a newcomer.
    fn send_state_to(&mut self, addr: SocketAddr) {
        let mut payload = vec![KIND_MEMBER];
        payload.extend(
            postcard::to_allocvec(&(self.foca.identity(), &self.local)).expect("a member encodes"),
        );
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += payload.len() as u64;
        self.outbox.push_back((addr, Bytes::from(payload)));
    }

    /// Takes a member's identity and state sent straight to this node: foca learns the member
    /// as alive (not re-broadcast: the others know it) unless it knows better (a newer life, a
    /// refuted suspicion, a down), and the book its state. Answers whether it was well formed.
    fn receive_member(&mut self, payload: &[u8]) -> bool {
        let Ok((id, state)) = postcard::from_bytes::<(MemberId, MemberState)>(payload) else {
            return false;
        };
        if id.node_id != state.node_id || id.generation != state.generation {
            return false;
        }
        self.book.lock().receive_state(state);
        self.foca
            .apply_many(
                std::iter::once(foca::Member::alive(id)),
                false,
                &mut self.runtime,
            )
            .is_ok()
    }

    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let mut payload = Vec::with_capacity(data.len() + 1);
            payload.push(KIND_FOCA);
            payload.extend_from_slice(&data);
            self.counters.datagrams_out += 1;
            self.counters.bytes_out += payload.len() as u64;
            self.outbox.push_back((to.addr, Bytes::from(payload)));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            if matches!(timer, Timer::ChangeSuspectToDown { .. }) {
                self.counters.suspicions += 1;
            }
            self.timer_seq += 1;
            self.timers
                .insert((self.now_ms + ceil_ms(after), self.timer_seq), timer);
        }
        let mut membership_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    self.last_change.insert(id.addr, self.now_ms);
                    self.send_state_to(id.addr);
                    self.events.push_back(MeshEvent::Up(id));
                    membership_changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    self.last_change.insert(id.addr, self.now_ms);
                    self.counters.downs += 1;
                    self.events.push_back(MeshEvent::Down(id));
                    membership_changed = true;
                }
                OwnedNotification::Defunct => self.events.push_back(MeshEvent::DeclaredDown),
                OwnedNotification::Rename(_, new) | OwnedNotification::Rejoin(new)
                    if new.addr == self.foca.identity().addr =>
                {
                    self.events.push_back(MeshEvent::Rejoined(new));
                    self.publish();
                }
                _ => {}
            }
        }
        if membership_changed {
            self.tune();
        }
    }

    /// Suspicion and retransmissions grow with the log of the cluster's size (foca's LAN
    /// rule): foca is re-tuned whenever the size changes what they come to. (Tuning only when
    /// the size crossed a power of ten left a mesh of 2 to 9 members on the values of a mesh of
    /// one: every update sent once, so a down reached most survivors only through their own
    /// probes, seconds later.) The book of states is trimmed when the size crosses a power of
    /// ten (often enough to bound it, rarely enough to cost nothing).
    fn tune(&mut self) {
        let members = self.foca.num_members() + 1;
        let config = self.settings.foca_config(members);
        let tuning = (config.max_transmissions, config.suspect_to_down_after);
        if tuning != self.tuning && self.foca.set_config(config).is_ok() {
            self.tuning = tuning;
        }
        let magnitude = |count: usize| (count.max(1) as f64).log10().floor() as i32;
        if magnitude(members) == magnitude(self.tuned_for) {
            return;
        }
        self.tuned_for = members;
        let alive: std::collections::HashSet<String> = self
            .foca
            .iter_membership_state()
            .map(|member| member.id().node_id.clone())
            .collect();
        let own = self.local.node_id.clone();
        self.book
            .lock()
            .retain(|node_id| node_id == own || alive.contains(node_id));
    }
}
