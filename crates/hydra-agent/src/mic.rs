//! The browser microphone relay: a receive-only WebRTC peer per session (str0m, sans-IO, driven
//! here on tokio UDP sockets bound inside the session's WebRTC range), whose incoming RTP packets
//! go, as they are, over UDP to `body_ip:mic.body_port` (47995).
//!
//! Invariants: at most one peer per session (a new offer replaces the old peer, which is ended
//! first so its ports are free); a peer ends when the browser closes it (DTLS close), when ICE
//! disconnects (the browser went away), when it does not connect within `connect_timeout`, or
//! when its session stops running; the relay's lock is never held across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::worker::Worker;

/// How often a peer checks that its session still runs (the worker's table is the truth).
const SESSION_CHECK: Duration = Duration::from_millis(250);
/// Datagrams waiting for the peer's loop, at most (beyond it they are dropped, as a full socket
/// buffer would).
const QUEUE: usize = 256;
/// Largest datagram read.
const DATAGRAM: usize = 2_048;

/// The relay's settings (`mic:` in the agent's config).
#[derive(Debug, Clone)]
pub struct MicSettings {
    /// The body's UDP port the RTP goes to (47995).
    pub body_port: u16,
    /// Addresses offered as host candidates, one socket each.
    pub candidate_ips: Vec<IpAddr>,
    /// Longest a new peer may take to connect.
    pub connect_timeout: Duration,
}

impl Default for MicSettings {
    fn default() -> Self {
        MicSettings {
            body_port: 47995,
            candidate_ips: vec![IpAddr::from([127, 0, 0, 1])],
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an offer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum MicError {
    /// No running session with that id.
    #[error("session {0} is not running here")]
    UnknownSession(String),
    /// The SDP could not be used.
    #[error("sdp: {0}")]
    InvalidOffer(String),
    /// No UDP port of the session's WebRTC range was free on a candidate address.
    #[error("no port of the session's WebRTC range {first}-{last} is free on {ip}")]
    NoPorts {
        /// The address.
        ip: IpAddr,
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
}

impl MicError {
    /// The API error code of this refusal.
    pub fn code(&self) -> hydra_api::ErrorCode {
        match self {
            MicError::UnknownSession(_) => hydra_api::ErrorCode::NotFound,
            MicError::InvalidOffer(_) => hydra_api::ErrorCode::InvalidRequest,
            MicError::NoPorts { .. } => hydra_api::ErrorCode::Unavailable,
        }
    }
}

/// A running peer: how to stop it and what it did.
struct Peer {
    number: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    packets: Arc<AtomicU64>,
}

/// The microphone peers of one agent, one per session at most; share it in an `Arc`.
#[derive(Default)]
pub struct MicRelay {
    peers: Mutex<HashMap<String, Peer>>,
    next_number: AtomicU64,
    /// Offers are handled one at a time, so two offers for one session cannot both bind.
    offers: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for MicRelay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MicRelay")
            .field("peers", &self.peers().len())
            .finish_non_exhaustive()
    }
}

impl MicRelay {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().expect("mic peers poisoned")
    }

    /// Whether session `id` has a microphone peer now.
    pub fn is_active(&self, id: &str) -> bool {
        self.peers()
            .get(id)
            .is_some_and(|peer| !peer.task.is_finished())
    }

    /// RTP packets the current peer of session `id` forwarded to the body, if it has one.
    pub fn forwarded(&self, id: &str) -> Option<u64> {
        self.peers()
            .get(id)
            .map(|peer| peer.packets.load(Ordering::Relaxed))
    }

    /// Answers the browser's offer for session `id` with a receive-only peer that forwards the
    /// audio's RTP to the session's body; an earlier peer of the session is ended first.
    pub async fn offer(
        self: &Arc<Self>,
        worker: &Arc<Worker>,
        id: &str,
        offer_sdp: &str,
    ) -> Result<String, MicError> {
        let _one_at_a_time = self.offers.lock().await;
        let (body_ip, (first, last)) = worker
            .mic_target(id)
            .ok_or_else(|| MicError::UnknownSession(id.to_owned()))?;
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|error| MicError::InvalidOffer(error.to_string()))?;
        self.stop(id, "replaced by a new offer").await;
        let settings = &worker.settings().mic;
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .clear_codecs()
            .enable_opus(true, false)
            .set_rtp_mode(true)
            .build(Instant::now());
        let sockets = bind_candidates(&mut rtc, &settings.candidate_ips, (first, last)).await?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|error| MicError::InvalidOffer(error.to_string()))?;
        let body = SocketAddr::new(body_ip, settings.body_port);
        let forward = UdpSocket::bind(SocketAddr::new(unspecified_like(body_ip), 0))
            .await
            .map_err(|_| MicError::NoPorts {
                ip: body_ip,
                first: 0,
                last: 0,
            })?;
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let packets = Arc::new(AtomicU64::new(0));
        let ports: Vec<String> = sockets
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .map(|address| address.to_string())
            .collect();
        tracing::info!(session_id = %id, candidates = %ports.join(","), %body, "[mic] session {id}: microphone peer answering");
        let run = PeerRun {
            id: id.to_owned(),
            rtc,
            sockets,
            forward,
            body,
            stop: stop.clone(),
            packets: packets.clone(),
            worker: Arc::clone(worker),
            connect_timeout: settings.connect_timeout,
        };
        let relay = Arc::clone(self);
        let task = tokio::spawn(async move {
            let id = run.id.clone();
            run.run().await;
            // Only this peer's own entry: a newer offer may have replaced it already.
            let mut peers = relay.peers();
            if peers.get(&id).is_some_and(|peer| peer.number == number) {
                peers.remove(&id);
            }
        });
        self.peers().insert(
            id.to_owned(),
            Peer {
                number,
                stop,
                task,
                packets,
            },
        );
        Ok(answer.to_sdp_string())
    }

    /// Ends session `id`'s peer, if any, and waits until its sockets are closed.
    pub async fn stop(&self, id: &str, reason: &str) {
        let peer = self.peers().remove(id);
        if let Some(peer) = peer {
            tracing::debug!(session_id = %id, reason, "[mic] ending a microphone peer");
            peer.stop.cancel();
            let _ = peer.task.await;
        }
    }

    /// Ends every peer (agent shutdown).
    pub async fn shutdown(&self) {
        let peers: Vec<Peer> = self.peers().drain().map(|(_, peer)| peer).collect();
        for peer in peers {
            peer.stop.cancel();
            let _ = peer.task.await;
        }
    }
}

/// One UDP socket in the session's port range `first..=last` per candidate address, each
/// announced to `rtc` as a host candidate.
async fn bind_candidates(
    rtc: &mut Rtc,
    ips: &[IpAddr],
    (first, last): (u16, u16),
) -> Result<Vec<Arc<UdpSocket>>, MicError> {
    let mut sockets = Vec::new();
    for ip in ips {
        let socket = bind_in_range(*ip, first, last).await?;
        let local = socket.local_addr().map_err(|_| MicError::NoPorts {
            ip: *ip,
            first,
            last,
        })?;
        let candidate = Candidate::host(local, "udp")
            .map_err(|error| MicError::InvalidOffer(format!("host candidate: {error}")))?;
        rtc.add_local_candidate(candidate);
        sockets.push(Arc::new(socket));
    }
    Ok(sockets)
}

/// `0.0.0.0` or `::`, matching `ip`'s family (the socket that sends to the body).
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// A UDP socket on `ip` at the highest free port of `first..=last` (the session process, which
/// gets the same range, is likelier to take its ports from the bottom).
async fn bind_in_range(ip: IpAddr, first: u16, last: u16) -> Result<UdpSocket, MicError> {
    for port in (first..=last).rev() {
        if let Ok(socket) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
            return Ok(socket);
        }
    }
    Err(MicError::NoPorts { ip, first, last })
}

/// The raw RTP packet (header without extensions, then the payload) of what str0m parsed: the
/// body's audio receiver reads plain RTP.
pub fn rtp_bytes(header: &str0m::rtp::RtpHeader, payload: &[u8]) -> Vec<u8> {
    let csrc_count = header.csrc_count.min(15);
    let mut out = Vec::with_capacity(12 + 4 * csrc_count + payload.len());
    out.push(0x80 | csrc_count as u8);
    out.push((u8::from(header.marker) << 7) | (*header.payload_type & 0x7f));
    out.extend_from_slice(&header.sequence_number.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&(*header.ssrc).to_be_bytes());
    for csrc in &header.csrc[..csrc_count] {
        out.extend_from_slice(&csrc.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// One peer's loop: the sans-IO `Rtc` between its sockets, its timers and the body.
struct PeerRun {
    id: String,
    rtc: Rtc,
    sockets: Vec<Arc<UdpSocket>>,
    forward: UdpSocket,
    body: SocketAddr,
    stop: CancellationToken,
    packets: Arc<AtomicU64>,
    worker: Arc<Worker>,
    connect_timeout: Duration,
}

/// A datagram read from one of the peer's sockets.
struct Datagram {
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

impl PeerRun {
    async fn run(mut self) {
        let id = self.id.clone();
        let (sender, mut received) = mpsc::channel::<Datagram>(QUEUE);
        let readers = CancellationToken::new();
        let _stop_readers = readers.clone().drop_guard();
        for socket in &self.sockets {
            tokio::spawn(read_socket(socket.clone(), sender.clone(), readers.clone()));
        }
        drop(sender);
        let started = Instant::now();
        let mut connected = false;
        let mut next_session_check = started;
        let reason = loop {
            let deadline = match self.drain_output(&mut connected).await {
                Ok(Some(deadline)) => deadline,
                Ok(None) => break "the browser closed it",
                Err(reason) => break reason,
            };
            let now = Instant::now();
            if now >= next_session_check {
                if self.worker.mic_target(&id).is_none() {
                    break "the session ended";
                }
                next_session_check = now + SESSION_CHECK;
            }
            if !connected && now.duration_since(started) > self.connect_timeout {
                break "the browser did not connect in time";
            }
            let wake = deadline.min(next_session_check);
            let sleep = wake.saturating_duration_since(now);
            tokio::select! {
                () = self.stop.cancelled() => break "stopped",
                datagram = received.recv() => {
                    let Some(datagram) = datagram else { break "its sockets closed" };
                    let Ok(receive) = Receive::new(
                        Protocol::Udp,
                        datagram.source,
                        datagram.destination,
                        &datagram.contents,
                    ) else {
                        continue;
                    };
                    if let Err(error) = self.rtc.handle_input(Input::Receive(Instant::now(), receive)) {
                        tracing::warn!(session_id = %id, %error, "[mic] session {id}: peer failed");
                        break "the peer failed";
                    }
                }
                () = tokio::time::sleep(sleep) => {
                    if let Err(error) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                        tracing::warn!(session_id = %id, %error, "[mic] session {id}: peer failed");
                        break "the peer failed";
                    }
                }
            }
        };
        self.rtc.disconnect();
        let packets = self.packets.load(Ordering::Relaxed);
        tracing::info!(session_id = %id, reason, packets, "[mic] session {id}: microphone stopped ({reason})");
    }

    /// Sends what the peer has to send and handles its events until it asks to be woken:
    /// `Some(when)`, or `None` once the browser closed the connection.
    async fn drain_output(
        &mut self,
        connected: &mut bool,
    ) -> Result<Option<Instant>, &'static str> {
        // Bounded: str0m answers a timeout after at most a few outputs per input.
        for _ in 0..10_000 {
            let output = self.rtc.poll_output().map_err(|error| {
                tracing::warn!(session_id = %self.id, %error, "[mic] session {}: peer failed", self.id);
                "the peer failed"
            })?;
            match output {
                Output::Timeout(when) => return Ok(Some(when)),
                Output::Transmit(transmit) => {
                    let socket = self.sockets.iter().find(|socket| {
                        socket
                            .local_addr()
                            .is_ok_and(|local| local == transmit.source)
                    });
                    if let Some(socket) = socket {
                        let _ = socket
                            .send_to(&transmit.contents, transmit.destination)
                            .await;
                    }
                }
                Output::Event(Event::Connected) => {
                    *connected = true;
                    tracing::info!(session_id = %self.id, "[mic] session {}: browser microphone connected", self.id);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    return Err("the browser went away (ICE disconnected)");
                }
                Output::Event(Event::Closed) => return Ok(None),
                Output::Event(Event::RtpPacket(packet)) => {
                    let bytes = rtp_bytes(&packet.header, &packet.payload);
                    if self.forward.send_to(&bytes, self.body).await.is_ok() {
                        self.packets.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Event(_) => {}
            }
        }
        Ok(Some(Instant::now()))
    }
}

/// Reads datagrams from `socket` into the peer's queue until `stop` or the queue closes.
async fn read_socket(
    socket: Arc<UdpSocket>,
    queue: mpsc::Sender<Datagram>,
    stop: CancellationToken,
) {
    let Ok(destination) = socket.local_addr() else {
        return;
    };
    let mut buffer = vec![0u8; DATAGRAM];
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = socket.recv_from(&mut buffer) => read,
        };
        let Ok((length, source)) = read else {
            continue;
        };
        let datagram = Datagram {
            source,
            destination,
            contents: buffer[..length].to_vec(),
        };
        // A full queue drops the datagram, as a full socket buffer would.
        if let Err(mpsc::error::TrySendError::Closed(_)) = queue.try_send(datagram) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_packet_is_plain_rtp_with_the_browser_s_header_fields() {
        let mut header = str0m::rtp::RtpHeader {
            version: 2,
            has_padding: false,
            // The browser's extensions (audio level, ...) are negotiated with the worker, not
            // the body: they are left out.
            has_extension: true,
            csrc_count: 0,
            marker: true,
            payload_type: 111.into(),
            sequence_number: 0x1234,
            timestamp: 1_000,
            ssrc: 0xdead_beef.into(),
            csrc: [0; 15],
            ext_vals: Default::default(),
            header_len: 20,
        };
        let mut expected = vec![
            0x80,
            0x80 | 111,
            0x12,
            0x34,
            0,
            0,
            0x03,
            0xe8,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        expected.extend_from_slice(b"opus");
        assert_eq!(rtp_bytes(&header, b"opus"), expected);

        header.marker = false;
        header.csrc_count = 1;
        header.csrc[0] = 7;
        let mut expected = vec![
            0x81, 111, 0x12, 0x34, 0, 0, 0x03, 0xe8, 0xde, 0xad, 0xbe, 0xef,
        ];
        expected.extend_from_slice(&[0, 0, 0, 7]);
        assert_eq!(rtp_bytes(&header, &[]), expected);
    }
}
