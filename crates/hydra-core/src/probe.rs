//! The probe race: which reachability probe of which body to start when, and which body wins.
//!
//! A head walks the eligible list in order and, for each body, probes its LAN address, then its
//! WireGuard address (TCP connect to the streaming port, 1 s timeout); the first reachable
//! address wins. Done one probe at a time that costs up to 2 s per dead body. This state machine
//! runs the same walk as a race (as Happy Eyeballs does): probes start staggered in list order,
//! several may be in flight, and the race settles on the earliest probe *in list order* that
//! succeeds, once every probe before it has failed. It therefore chooses exactly what the
//! sequential walk would choose, in about one timeout whatever the number of dead bodies ahead.
//!
//! Sans-IO (Firezone style): the caller passes time in as milliseconds of any monotonic clock,
//! asks [`ProbeRace::poll_action`] what to start or cancel, reports what happened with
//! [`ProbeRace::handle_result`], and sleeps until [`ProbeRace::poll_timeout`]. No sockets, no
//! clock, no async here.
//!
//! With a preference delay (RFC 8305's idea; gRPC's pick_first waits 250 ms) the race stops
//! waiting on silence: once a later probe has answered and every earlier probe has failed or been
//! silent for `prefer_delay_ms` since it started, the later one wins. Without it (`--probe
//! exact`) the race waits for every earlier probe's answer or timeout, as the walk would.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use crate::node::Transport;

/// Milliseconds on the caller's monotonic clock; only differences matter.
pub type Millis = i64;

/// How the probes of a race are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// Staggered in list order, several in flight (the default).
    Concurrent,
    /// One probe at a time in list order: the field's original loop, kept as the baseline.
    Sequential,
}

impl ProbeMode {
    /// The word used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeMode::Concurrent => "concurrent",
            ProbeMode::Sequential => "sequential",
        }
    }
}

/// Knobs of the race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// A probe that has not answered after this long has failed (`TimedOut`).
    pub timeout_ms: u32,
    /// In concurrent mode, the next probe starts this long after the previous one started, or
    /// at once when the previous one has already failed. RFC 8305 allows down to 10 ms.
    pub stagger_ms: u32,
    /// In concurrent mode, at most this many probes are in flight at once (at least 1).
    pub max_in_flight: usize,
    /// Concurrent or sequential.
    pub mode: ProbeMode,
    /// In concurrent mode, a later probe that answered wins once every earlier probe has failed
    /// or been silent this long since it started; `None` waits for their answers or timeouts
    /// (the exact, sequential-equivalent choice).
    pub prefer_delay_ms: Option<u32>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            timeout_ms: 1_000,
            stagger_ms: 10,
            max_in_flight: 64,
            mode: ProbeMode::Concurrent,
            prefer_delay_ms: None,
        }
    }
}

impl ProbeSettings {
    /// The head's default race: a 250 ms preference delay, probes 2 ms apart (the delay gives
    /// earlier bodies their head start, so the stagger need not), 1 s timeout.
    pub fn preferring() -> ProbeSettings {
        ProbeSettings {
            stagger_ms: PREFER_STAGGER_MS,
            prefer_delay_ms: Some(DEFAULT_PREFER_DELAY_MS),
            ..ProbeSettings::default()
        }
    }
}

/// The default preference delay: gRPC pick_first's Happy Eyeballs delay.
pub const DEFAULT_PREFER_DELAY_MS: u32 = 250;

/// The stagger used with a preference delay: 16 dead bodies (32 probes) ahead of a live one then
/// cost 64 ms of starts plus the delay, instead of 320 ms plus it.
pub const PREFER_STAGGER_MS: u32 = 2;

/// The two addresses of one body of the eligible list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeBody {
    /// Venue LAN address, probed first.
    pub lan: Option<IpAddr>,
    /// WireGuard overlay address, probed second.
    pub wireguard: Option<IpAddr>,
}

/// One probe: a body (its index in the eligible list) and one of its two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// Index of the body in the eligible list.
    pub body: usize,
    /// Which of its addresses.
    pub transport: Transport,
}

impl ProbeKey {
    /// Position in the sequential walk: body by body, LAN before WireGuard.
    fn index(self) -> usize {
        self.body * 2
            + match self.transport {
                Transport::Lan => 0,
                Transport::Wireguard => 1,
            }
    }

    fn from_index(index: usize) -> ProbeKey {
        ProbeKey {
            body: index / 2,
            transport: if index.is_multiple_of(2) {
                Transport::Lan
            } else {
                Transport::Wireguard
            },
        }
    }
}

impl fmt::Display for ProbeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}/{}", self.body, self.transport)
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The body has no address for this transport; nothing was sent.
    NoAddress,
    /// No answer within the timeout (a firewall drop looks like this).
    TimedOut {
        /// The timeout that expired.
        after_ms: u32,
    },
    /// Still silent after the preference delay when a later probe won: given up, not timed out.
    Silent {
        /// How long it had been silent.
        after_ms: u32,
    },
    /// The host answered with a reset: nothing listens on the port.
    Refused,
    /// Any other connect error, as the operating system worded it.
    Io(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::NoAddress => f.write_str("no address"),
            ProbeError::TimedOut { after_ms } => write!(f, "timed out after {after_ms} ms"),
            ProbeError::Silent { after_ms } => {
                write!(f, "no answer in {after_ms} ms (preference delay)")
            }
            ProbeError::Refused => f.write_str("connection refused"),
            ProbeError::Io(text) => f.write_str(text),
        }
    }
}

/// Where one probe stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStatus {
    /// Not started (yet, or ever: the race settled before it mattered).
    NotStarted,
    /// Started at the given time; no answer yet.
    InFlight {
        /// When it started.
        started_at: Millis,
    },
    /// The address answered; the connect took this long.
    Reached {
        /// Measured connect time.
        rtt_ms: u32,
    },
    /// The address did not answer.
    Failed(ProbeError),
    /// Stopped because it could no longer change the outcome.
    Cancelled,
}

/// What the caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAction {
    /// Start a TCP connect to `ip` and report it with `handle_result(probe, ..)`.
    Start {
        /// Which probe.
        probe: ProbeKey,
        /// The address to connect to.
        ip: IpAddr,
    },
    /// Abort this in-flight probe; any result it still reports is ignored.
    Cancel {
        /// Which probe.
        probe: ProbeKey,
    },
}

/// How a race ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaceOutcome {
    /// The earliest reachable probe in list order.
    Reached {
        /// The winning probe.
        probe: ProbeKey,
        /// Its measured connect time.
        rtt_ms: u32,
    },
    /// Every probe of every body failed (or the list was empty).
    AllFailed,
}

#[derive(Debug, Clone)]
struct Slot {
    ip: Option<IpAddr>,
    status: ProbeStatus,
}

/// The race over one eligible list. Guarantees: it settles on the same probe as the sequential
/// walk given the same per-probe answers; it never starts a probe twice, never starts one after a
/// probe earlier in list order has succeeded, and cancels every in-flight probe once settled.
#[derive(Debug, Clone)]
pub struct ProbeRace {
    slots: Vec<Slot>,
    settings: ProbeSettings,
    /// Index of the next slot to consider starting (all before it were started or skipped).
    next_to_start: usize,
    /// Index and start time of the most recently started probe.
    last_started: Option<(usize, Millis)>,
    outcome: Option<RaceOutcome>,
    pending: VecDeque<ProbeAction>,
}

impl ProbeRace {
    /// A race over `bodies`, in the order of the eligible list. A missing address counts as a
    /// probe that failed with [`ProbeError::NoAddress`] without being started.
    pub fn new(bodies: &[ProbeBody], settings: ProbeSettings) -> ProbeRace {
        let slots = bodies
            .iter()
            .flat_map(|body| [body.lan, body.wireguard])
            .map(|ip| Slot {
                ip,
                status: match ip {
                    Some(_) => ProbeStatus::NotStarted,
                    None => ProbeStatus::Failed(ProbeError::NoAddress),
                },
            })
            .collect();
        let settings = ProbeSettings {
            max_in_flight: match settings.mode {
                ProbeMode::Sequential => 1,
                ProbeMode::Concurrent => settings.max_in_flight.max(1),
            },
            // One probe at a time has no later answer to prefer.
            prefer_delay_ms: match settings.mode {
                ProbeMode::Sequential => None,
                ProbeMode::Concurrent => settings.prefer_delay_ms,
            },
            ..settings
        };
        let mut race = ProbeRace {
            slots,
            settings,
            next_to_start: 0,
            last_started: None,
            outcome: None,
            pending: VecDeque::new(),
        };
        race.settle(0);
        race
    }

    /// The settings in force (sequential mode forces one probe in flight).
    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    /// How many bodies the race is over.
    pub fn body_count(&self) -> usize {
        self.slots.len() / 2
    }

    /// The next thing to do at time `now`, or `None` until a result arrives or
    /// [`poll_timeout`](Self::poll_timeout) passes. Call until it answers `None`.
    pub fn poll_action(&mut self, now: Millis) -> Option<ProbeAction> {
        self.handle_timeout(now);
        if let Some(action) = self.pending.pop_front() {
            return Some(action);
        }
        let index = self.startable(now)?;
        let ip = self.slots[index].ip?;
        self.slots[index].status = ProbeStatus::InFlight { started_at: now };
        self.last_started = Some((index, now));
        self.next_to_start = index + 1;
        Some(ProbeAction::Start {
            probe: ProbeKey::from_index(index),
            ip,
        })
    }

    /// Records what a started probe answered: its connect time, or why it failed. An answer for a
    /// probe that is not in flight (cancelled, timed out) is ignored; a success that arrives at or
    /// after its timeout counts as timed out, as it would in the sequential walk.
    pub fn handle_result(&mut self, probe: ProbeKey, result: Result<u32, ProbeError>, now: Millis) {
        let Some(slot) = self.slots.get_mut(probe.index()) else {
            return;
        };
        let ProbeStatus::InFlight { started_at } = slot.status else {
            return;
        };
        let timeout_ms = self.settings.timeout_ms;
        slot.status = match result {
            Ok(_) if now.saturating_sub(started_at) >= Millis::from(timeout_ms) => {
                ProbeStatus::Failed(ProbeError::TimedOut {
                    after_ms: timeout_ms,
                })
            }
            Ok(rtt_ms) => ProbeStatus::Reached { rtt_ms },
            Err(error) => ProbeStatus::Failed(error),
        };
        self.settle(now);
    }

    /// Fails every in-flight probe whose timeout has passed at `now` and asks for its cancel.
    pub fn handle_timeout(&mut self, now: Millis) {
        let timeout_ms = self.settings.timeout_ms;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let ProbeStatus::InFlight { started_at } = slot.status
                && now.saturating_sub(started_at) >= Millis::from(timeout_ms)
            {
                slot.status = ProbeStatus::Failed(ProbeError::TimedOut {
                    after_ms: timeout_ms,
                });
                self.pending.push_back(ProbeAction::Cancel {
                    probe: ProbeKey::from_index(index),
                });
            }
        }
        // Settled on every call: the preference delay can pass without any probe answering or
        // expiring.
        self.settle(now);
    }

    /// When the caller must call back even if no result arrives: the earliest probe timeout or
    /// the next staggered start. `None` once settled, or while only results can move the race.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.outcome.is_some() {
            return None;
        }
        let timeout_ms = Millis::from(self.settings.timeout_ms);
        let earliest_timeout = self
            .slots
            .iter()
            .filter_map(|slot| match slot.status {
                ProbeStatus::InFlight { started_at } => Some(started_at + timeout_ms),
                _ => None,
            })
            .min();
        let next_start = match (self.settings.mode, self.last_started) {
            (ProbeMode::Concurrent, Some((_, started_at)))
                if self.next_startable_index().is_some()
                    && self.in_flight() < self.settings.max_in_flight =>
            {
                Some(started_at + Millis::from(self.settings.stagger_ms))
            }
            _ => None,
        };
        [earliest_timeout, next_start, self.prefer_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// With a preference delay and a later probe answered: when the last earlier probe still in
    /// flight will have been silent long enough for the answered one to win.
    fn prefer_deadline(&self) -> Option<Millis> {
        let delay = Millis::from(self.settings.prefer_delay_ms?);
        let first_reached = self
            .slots
            .iter()
            .position(|slot| matches!(slot.status, ProbeStatus::Reached { .. }))?;
        let mut deadline = None;
        for slot in &self.slots[..first_reached] {
            match slot.status {
                ProbeStatus::Failed(_) => {}
                ProbeStatus::InFlight { started_at } => {
                    deadline = deadline.max(Some(started_at + delay));
                }
                // An earlier probe not yet started (the in-flight cap) has not been silent at all.
                ProbeStatus::NotStarted | ProbeStatus::Cancelled | ProbeStatus::Reached { .. } => {
                    return None;
                }
            }
        }
        deadline
    }

    /// How the race ended, once it has.
    pub fn outcome(&self) -> Option<RaceOutcome> {
        self.outcome
    }

    /// The address and status of one probe.
    pub fn probe(&self, probe: ProbeKey) -> (Option<IpAddr>, &ProbeStatus) {
        let slot = &self.slots[probe.index()];
        (slot.ip, &slot.status)
    }

    /// Every probe that answered `Reached`, in list order, with its connect time: what the head
    /// reports to the server as measured latency.
    pub fn measurements(&self) -> Vec<(ProbeKey, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot.status {
                ProbeStatus::Reached { rtt_ms } => Some((ProbeKey::from_index(index), rtt_ms)),
                _ => None,
            })
            .collect()
    }

    /// The bodies the winner was chosen past: every body before it in list order, each of
    /// whose probes failed (refused, timed out, no address, or silent past the preference delay).
    /// Empty until the race settled on a body. The head reports them as `unreachable=` with its
    /// next request, so the next discovery does not probe them again.
    pub fn passed_over(&self) -> Vec<usize> {
        let Some(RaceOutcome::Reached { probe, .. }) = self.outcome else {
            return Vec::new();
        };
        (0..probe.body)
            .filter(|&body| {
                self.slots[body * 2..body * 2 + 2]
                    .iter()
                    .all(|slot| matches!(slot.status, ProbeStatus::Failed(_)))
            })
            .collect()
    }

    fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot.status, ProbeStatus::InFlight { .. }))
            .count()
    }

    fn any_reached(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot.status, ProbeStatus::Reached { .. }))
    }

    fn next_startable_index(&self) -> Option<usize> {
        if self.outcome.is_some() || self.any_reached() {
            // A later probe can never beat one that already succeeded earlier in the list.
            return None;
        }
        (self.next_to_start..self.slots.len())
            .find(|&index| matches!(self.slots[index].status, ProbeStatus::NotStarted))
    }

    /// The slot to start now, if the schedule allows one.
    fn startable(&self, now: Millis) -> Option<usize> {
        let index = self.next_startable_index()?;
        let in_flight = self.in_flight();
        if in_flight >= self.settings.max_in_flight {
            return None;
        }
        let previous_done = match self.last_started {
            None => true,
            Some((previous, _)) => {
                !matches!(self.slots[previous].status, ProbeStatus::InFlight { .. })
            }
        };
        let stagger_passed = match (self.settings.mode, self.last_started) {
            (ProbeMode::Concurrent, Some((_, started_at))) => {
                now >= started_at + Millis::from(self.settings.stagger_ms)
            }
            _ => false,
        };
        (in_flight == 0 || previous_done || stagger_passed).then_some(index)
    }

    /// Decides the outcome when the walk in list order reaches a success or the end (or, with a
    /// preference delay, a success after only failed or long-silent probes), and cancels
    /// in-flight probes that can no longer win.
    fn settle(&mut self, now: Millis) {
        if self.outcome.is_some() {
            return;
        }
        let prefer_delay = self.settings.prefer_delay_ms.map(Millis::from);
        let mut winner: Option<(usize, u32)> = None;
        let mut undecided = false;
        let mut passed_over_silent = false;
        for (index, slot) in self.slots.iter().enumerate() {
            match slot.status {
                ProbeStatus::Failed(_) => continue,
                ProbeStatus::Reached { rtt_ms } => {
                    winner = Some((index, rtt_ms));
                    break;
                }
                // Silent past the preference delay: passed over, like a failure, while a later
                // answer is waiting; an earlier answer arriving in time still wins.
                ProbeStatus::InFlight { started_at }
                    if prefer_delay
                        .is_some_and(|delay| now.saturating_sub(started_at) >= delay) =>
                {
                    passed_over_silent = true;
                    continue;
                }
                ProbeStatus::NotStarted | ProbeStatus::InFlight { .. } | ProbeStatus::Cancelled => {
                    undecided = true;
                    break;
                }
            }
        }
        if let Some((index, rtt_ms)) = winner {
            self.outcome = Some(RaceOutcome::Reached {
                probe: ProbeKey::from_index(index),
                rtt_ms,
            });
            // The earlier probes passed over for their silence failed for this race: the head
            // logs and reports them like any failure.
            for (earlier, slot) in self.slots[..index].iter_mut().enumerate() {
                if let ProbeStatus::InFlight { started_at } = slot.status {
                    slot.status = ProbeStatus::Failed(ProbeError::Silent {
                        after_ms: u32::try_from(now.saturating_sub(started_at)).unwrap_or(u32::MAX),
                    });
                    self.pending.push_back(ProbeAction::Cancel {
                        probe: ProbeKey::from_index(earlier),
                    });
                }
            }
            self.cancel_in_flight_after(index + 1);
            return;
        }
        // A silent probe may still answer: nothing is decided until it does or times out.
        if !undecided && !passed_over_silent {
            self.outcome = Some(RaceOutcome::AllFailed);
            return;
        }
        // Not decided yet; probes after the earliest success cannot win any more.
        if let Some(first_reached) = self
            .slots
            .iter()
            .position(|slot| matches!(slot.status, ProbeStatus::Reached { .. }))
        {
            self.cancel_in_flight_after(first_reached + 1);
        }
    }

    fn cancel_in_flight_after(&mut self, from: usize) {
        for index in from..self.slots.len() {
            if matches!(self.slots[index].status, ProbeStatus::InFlight { .. }) {
                self.slots[index].status = ProbeStatus::Cancelled;
                self.pending.push_back(ProbeAction::Cancel {
                    probe: ProbeKey::from_index(index),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
