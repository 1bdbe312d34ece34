//! The browser microphone in a real headless Chromium (fake microphone): the session page, opened
//! through the agent's proxy, turns its mic on; Opus RTP reaches a UDP socket standing in for the
//! body's port 47995, and stops when the toggle is turned off or the session ends. With
//! `turn.force_relay` and the real coturn, the connection uses relay candidates only.

use std::time::Duration;

use serde_json::Value;
use tokio::net::UdpSocket;

use crate::browser::Browser;
use crate::proxy::Agent;
use crate::support::wait_for;

/// Chromium with a fake microphone granted without a prompt, loopback usable for WebRTC, real
/// addresses in candidates (no mDNS names), and nothing that reaches out of the machine.
const FLAGS: &[&str] = &[
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--no-pings",
    "--metrics-recording-only",
];

/// The body's microphone port, standing in on loopback.
struct BodyMic {
    socket: UdpSocket,
}

impl BodyMic {
    async fn bind() -> BodyMic {
        BodyMic {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Waits (at most 20 s) for `count` datagrams and returns them.
    async fn receive(&self, count: usize) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let mut buffer = [0u8; 2_048];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while packets.len() < count {
            let read = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buffer))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} RTP packets reached the body in 20 s",
                        packets.len()
                    )
                })
                .unwrap();
            packets.push(buffer[..read.0].to_vec());
        }
        packets
    }

    /// Asserts that nothing more arrives: whatever is queued is drained, then a marker sent by
    /// the test itself must be the next datagram (the caller made sure the sender is gone).
    async fn assert_quiet(&self) {
        let mut buffer = [0u8; 2_048];
        while self.socket.try_recv_from(&mut buffer).is_ok() {}
        let marker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        marker
            .send_to(b"hydra-test-marker", self.socket.local_addr().unwrap())
            .await
            .unwrap();
        let (length, _) =
            tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buffer))
                .await
                .expect("the marker arrives")
                .unwrap();
        assert_eq!(
            &buffer[..length],
            b"hydra-test-marker",
            "RTP still reached the body after the microphone peer ended"
        );
    }
}

/// The payload type the worker's answer gave Opus (`a=rtpmap:<pt> opus/48000/2`).
fn opus_payload_type(answer_sdp: &str) -> u8 {
    answer_sdp
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("a=rtpmap:")?;
            let (pt, codec) = rest.split_once(' ')?;
            codec
                .to_ascii_lowercase()
                .starts_with("opus/48000")
                .then(|| pt.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Opus in the answer:\n{answer_sdp}"))
}

/// Checks that `packets` are RTP (version 2) with payload type `pt` and a payload.
fn assert_opus_rtp(packets: &[Vec<u8>], pt: u8) {
    for packet in packets {
        assert!(packet.len() > 12, "a packet of {} bytes", packet.len());
        assert_eq!(packet[0] >> 6, 2, "RTP version 2: {packet:02x?}");
        assert_eq!(
            packet[1] & 0x7f,
            pt,
            "Opus payload type {pt}: {packet:02x?}"
        );
    }
}

/// Opens the session page, turns the mic on with its toggle, and waits until it is connected;
/// answers the Opus payload type of the worker's answer.
async fn mic_on(browser: &mut Browser) -> u8 {
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "document.getElementById('hydra-mic')"
            )
            .await,
        "the page has no microphone toggle"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('hydra-mic').getAttribute('aria-pressed')")
            .await,
        "false"
    );
    browser
        .eval("document.getElementById('hydra-mic').click()")
        .await;
    let connected = browser
        .until(
            Duration::from_secs(30),
            "window.__hydraMic.state === 'on' || window.__hydraMic.state === 'error'",
        )
        .await;
    let state = browser
        .eval("JSON.stringify({state: __hydraMic.state, error: __hydraMic.error})")
        .await;
    assert!(
        connected && browser.eval("window.__hydraMic.state").await == "on",
        "the microphone did not connect: {state}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('hydra-mic').getAttribute('aria-pressed')")
            .await,
        "true"
    );
    let answer = browser
        .eval("window.__hydraMic.pc.remoteDescription.sdp")
        .await;
    opus_payload_type(answer.as_str().expect("the answer's SDP"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_s_microphone_reaches_the_body_as_opus_rtp_until_turned_off_or_the_session_ends() {
    let body = BodyMic::bind().await;
    let body_port = body.port();
    let agent = Agent::start_with(|worker, _| {
        worker.mic.body_port = body_port;
        worker.mic.candidate_ips = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let session = agent.start_session("mic").await;
    let stream_url = session["stream_url"].as_str().unwrap().to_owned();
    let mut browser = Browser::start_with(FLAGS).await;
    browser.open(&stream_url).await;

    let pt = mic_on(&mut browser).await;
    assert_opus_rtp(&body.receive(20).await, pt);
    assert!(agent.state.mic().is_active("mic"));
    let port = agent.worker.session("mic").unwrap().port;
    let (first, last) = agent.worker.webrtc_ports(port).unwrap();
    let local = browser
        .eval(
            "__hydraMic.pc.getStats().then(stats => { let pair = null; \
             stats.forEach(s => { if (s.type === 'transport') pair = s.selectedCandidatePairId; }); \
             const chosen = stats.get(pair); return stats.get(chosen.remoteCandidateId).port; })",
        )
        .await;
    let used = local.as_u64().expect("the selected pair's remote port") as u16;
    assert!(
        (first..=last).contains(&used),
        "the worker's peer listens on {used}, outside the session's range {first}-{last}"
    );

    // Off: the browser closes its connection; the worker's peer ends and nothing more arrives.
    browser
        .eval("document.getElementById('hydra-mic').click()")
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('hydra-mic').getAttribute('aria-pressed')")
            .await,
        "false"
    );
    wait_for(
        "the microphone peer to end",
        Duration::from_secs(20),
        || !agent.state.mic().is_active("mic"),
    )
    .await;
    body.assert_quiet().await;

    // On again, then the session ends: the peer ends with it.
    let pt = mic_on(&mut browser).await;
    assert_opus_rtp(&body.receive(10).await, pt);
    let ended = reqwest::Client::new()
        .delete(agent.url("/api/v1/sessions/mic"))
        .bearer_auth("test-api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    wait_for(
        "the microphone peer to end with its session",
        Duration::from_secs(20),
        || !agent.state.mic().is_active("mic"),
    )
    .await;
    body.assert_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mic_offer_needs_the_viewer_capability_and_a_running_session() {
    let agent = Agent::start().await;
    let session = agent.start_session("micauth").await;
    let stream_url = session["stream_url"].as_str().unwrap();
    let token = crate::support::capability_of(stream_url);
    let client = reqwest::Client::new();
    let offer = |query: String, body: Value| {
        client
            .post(agent.url(&format!("/session/micauth/mic/offer{query}")))
            .json(&body)
            .send()
    };
    // Without the capability: the same 404 as an unknown session.
    let refused = offer(String::new(), serde_json::json!({"sdp": "v=0"}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    // With it, a body without `sdp` is a 400 naming the field, and bad SDP one naming `sdp`.
    let missing = offer(format!("?hydra_viewer={token}"), serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("sdp"),
        "{error}"
    );
    let garbage = offer(
        format!("?hydra_viewer={token}"),
        serde_json::json!({"sdp": "not sdp"}),
    )
    .await
    .unwrap();
    assert_eq!(garbage.status(), 400);
    let error: Value = garbage.json().await.unwrap();
    assert_eq!(error["error"], "invalid_request");
    assert!(
        error["message"].as_str().unwrap().starts_with("sdp"),
        "{error}"
    );
    // SDP's CRLF is allowed; any other control character is refused naming `sdp`.
    let control = offer(
        format!("?hydra_viewer={token}"),
        serde_json::json!({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\u{0}\r\n"}),
    )
    .await
    .unwrap();
    assert_eq!(control.status(), 400);
    let error: Value = control.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("sdp contains a control character (U+0000)"),
        "{error}"
    );
    assert!(!agent.state.mic().is_active("micauth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_force_relay_the_microphone_goes_through_coturn_on_relay_candidates_only() {
    use crate::support::{Coturn, free_port};
    const SECRET: &str = "mic-relay-test-secret-0123456789";
    let temp = tempfile::tempdir().unwrap();
    let body = BodyMic::bind().await;
    let body_port = body.port();
    let turn_port = free_port();
    let relay_min = 61_000 + (turn_port % 4_000);
    let servers = vec![serde_json::json!({"urls": [format!("turn:127.0.0.1:{turn_port}")]})];
    // coturn configured from the agent's own `turn-config` output, as an operator would.
    let mut config = hydra_agent::config::AgentConfig::default();
    config.node.lan_ip = Some("127.0.0.1".parse().unwrap());
    config.ice_servers = servers.clone();
    config.turn.secret = Some(SECRET.into());
    config.turn.listening_port = turn_port;
    config.turn.relay_port_min = relay_min;
    config.turn.relay_port_max = relay_min + 40;
    config.turn.force_relay = true;
    let coturn_config = hydra_agent::turn::coturn_config(&config).unwrap();
    let _coturn = Coturn::start(temp.path(), &coturn_config, turn_port);
    let ice = config.ice();
    assert!(ice.force_relay);
    let agent = Agent::start_with(|worker, http| {
        worker.mic.body_port = body_port;
        worker.mic.candidate_ips = vec!["127.0.0.1".parse().unwrap()];
        worker.ice = ice.clone();
        http.ice = ice;
    })
    .await;
    let session = agent.start_session("relay").await;
    let mut browser = Browser::start_with(FLAGS).await;
    browser.open(session["stream_url"].as_str().unwrap()).await;

    let pt = mic_on(&mut browser).await;
    assert_opus_rtp(&body.receive(20).await, pt);
    let candidates = browser
        .eval(
            "__hydraMic.pc.getStats().then(stats => { let pair = null; const local = []; \
             stats.forEach(s => { if (s.type === 'transport') pair = s.selectedCandidatePairId; \
               if (s.type === 'local-candidate') local.push(s.candidateType); }); \
             const chosen = stats.get(pair); \
             return {selected: stats.get(chosen.localCandidateId).candidateType, local, \
               policy: __hydraMic.pc.getConfiguration().iceTransportPolicy}; })",
        )
        .await;
    assert_eq!(candidates["policy"], "relay", "{candidates}");
    assert_eq!(candidates["selected"], "relay", "{candidates}");
    let local = candidates["local"].as_array().unwrap();
    assert!(
        !local.is_empty() && local.iter().all(|kind| kind == "relay"),
        "only relay candidates: {candidates}"
    );
    browser
        .eval("document.getElementById('hydra-mic').click()")
        .await;
    wait_for(
        "the microphone peer to end",
        Duration::from_secs(20),
        || !agent.state.mic().is_active("relay"),
    )
    .await;
}
