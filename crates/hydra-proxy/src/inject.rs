//! What the proxy adds to a session's HTML pages, with a streaming rewriter (lol_html): a script
//! that shows a "Stream ended" overlay when the WebRTC connection drops (a "Start new stream"
//! link back to `sessions.return_url`, a "Report a problem" link opening in a new tab with the
//! field's parameters, a star rating), counts disconnects and reads the ICE candidate type from
//! WebRTC stats (sent to `POST /session/{id}/stats` for the session record), turns the
//! page's exit button into `POST /session/{id}/quit` before leaving, and adds a microphone
//! toggle (bottom-right): on, the viewer's microphone goes over a send-only WebRTC connection
//! signalled with `POST /session/{id}/mic/offer`.
//!
//! Nothing is buffered beyond what lol_html holds for an unfinished tag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use lol_html::html_content::ContentType;
use lol_html::send::{HtmlRewriter, Settings};
use lol_html::{element, end};
use serde::Serialize;

/// Elements treated as the page's exit button; each gets `data-hydra-exit`.
pub const EXIT_SELECTORS: &[&str] = &[
    "#exit",
    "#exit-button",
    ".exit-button",
    "[data-action=\"exit\"]",
];

/// The marker attribute put on exit buttons and looked for by the script.
pub const EXIT_ATTRIBUTE: &str = "data-hydra-exit";

/// The session context the injected script carries.
#[derive(Debug, Clone, Serialize)]
pub struct PageContext {
    /// Session id.
    pub session_id: String,
    /// The worker (node id) that runs it.
    pub worker_id: String,
    /// The body's address.
    pub body_ip: String,
    /// Experience, if any.
    pub experience: Option<String>,
    /// Where "return" links go (`sessions.return_url`).
    pub return_url: String,
    /// Where "Report a problem" goes; the context is added as query parameters (or as a mail
    /// body for `mailto:`).
    pub report_url: String,
    /// ICE servers the page's WebRTC connections get first (TURN entries with this viewer's
    /// credentials, see [`crate::turn`]); empty leaves the page's own.
    pub ice_servers: Vec<serde_json::Value>,
    /// Force `iceTransportPolicy: 'relay'` (`turn.force_relay`): media only through TURN.
    pub force_relay: bool,
    /// `project` of the report link (`report.project`).
    pub project: String,
    /// `category` of the report link (`report.category`).
    pub category: String,
    /// The district the session was placed in.
    pub district: Option<String>,
    /// The body's node id.
    pub body: Option<String>,
    /// The head's id.
    pub head: Option<String>,
    /// When the session started (unix ms), for `duration_ms`.
    pub started_ms: i64,
}

/// The report link's parameters the page adds when it shows the overlay, in this order.
pub const PAGE_REPORT_PARAMETERS: &[&str] = &[
    "disconnect_count",
    "duration_ms",
    "end_reason",
    "ice_candidate_type",
];

impl PageContext {
    /// The report's title.
    pub fn report_title(&self) -> String {
        match &self.experience {
            Some(experience) => {
                format!("Stream problem: {experience} (session {})", self.session_id)
            }
            None => format!("Stream problem (session {})", self.session_id),
        }
    }

    /// The report link with what the agent knows of the session; the page appends
    /// [`PAGE_REPORT_PARAMETERS`] (each `&key=value`, or a `key=value` line of a `mailto:`
    /// body) when it shows the overlay.
    pub fn report_link(&self) -> String {
        let title = self.report_title();
        let context = [
            ("project", self.project.as_str()),
            ("category", self.category.as_str()),
            ("title", title.as_str()),
            ("session_id", self.session_id.as_str()),
            ("experience", self.experience.as_deref().unwrap_or("")),
            ("district", self.district.as_deref().unwrap_or("")),
            ("body", self.body.as_deref().unwrap_or("")),
            ("head", self.head.as_deref().unwrap_or("")),
            ("body_ip", self.body_ip.as_str()),
            ("worker_id", self.worker_id.as_str()),
        ];
        if self.report_url.starts_with("mailto:") {
            // The body's lines are encoded once, as a whole (each value encoded first would
            // reach the reader as `%20`).
            let lines: Vec<String> = context
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            let body = percent_encode(&lines.join("\n"));
            let separator = if self.report_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!(
                "{}{separator}subject={}&body={body}",
                self.report_url,
                percent_encode(&format!("Hydra session {}", self.session_id))
            )
        } else {
            let encoded: Vec<String> = context
                .iter()
                .map(|(key, value)| format!("{key}={}", percent_encode(value)))
                .collect();
            let separator = if self.report_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{}{separator}{}", self.report_url, encoded.join("&"))
        }
    }

    /// The `<script>` element added to the page.
    pub fn script(&self) -> String {
        #[derive(Serialize)]
        struct Embedded<'a> {
            session_id: &'a str,
            quit_url: String,
            rating_url: String,
            notice_url: String,
            mic_url: String,
            stats_url: String,
            started_ms: i64,
            report_mailto: bool,
            return_url: &'a str,
            report_link: String,
            ice_servers: &'a [serde_json::Value],
            force_relay: bool,
        }
        let embedded = Embedded {
            session_id: &self.session_id,
            quit_url: format!("/session/{}/quit", self.session_id),
            rating_url: format!("/session/{}/rating", self.session_id),
            notice_url: format!("/session/{}/notice", self.session_id),
            mic_url: format!("/session/{}/mic/offer", self.session_id),
            stats_url: format!("/session/{}/stats", self.session_id),
            started_ms: self.started_ms,
            report_mailto: self.report_url.starts_with("mailto:"),
            return_url: &self.return_url,
            report_link: self.report_link(),
            ice_servers: &self.ice_servers,
            force_relay: self.force_relay,
        };
        // `<` escaped so that no value can close the script element.
        let json = serde_json::to_string(&embedded)
            .unwrap_or_else(|_| "{}".into())
            .replace('<', "\\u003c");
        format!("<script data-hydra-injected=\"1\">window.__hydraSession={json};{SCRIPT}</script>")
    }
}

/// Percent-encodes everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The behaviour; reads `window.__hydraSession`.
const SCRIPT: &str = r#"
(function () {
  var ctx = window.__hydraSession;
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (text) { node.textContent = text; }
    return node;
  }
  function rate(stars, box) {
    fetch(ctx.rating_url, {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({stars: stars}), keepalive: true});
    box.textContent = "Thank you for your rating";
  }
  var stats = {disconnects: 0, candidate: null, reason: null};
  function beacon(body) {
    try {
      fetch(ctx.stats_url, {method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify(body), keepalive: true}).catch(function () {});
    } catch (e) {}
  }
  function readCandidateType(pc) {
    if (!pc.getStats) { return; }
    pc.getStats().then(function (report) {
      var pairs = {}, locals = {}, selected = null;
      report.forEach(function (s) {
        if (s.type === "transport" && s.selectedCandidatePairId) { selected = s.selectedCandidatePairId; }
        if (s.type === "candidate-pair") { pairs[s.id] = s; }
        if (s.type === "local-candidate") { locals[s.id] = s; }
      });
      var pair = selected ? pairs[selected] : null;
      if (!pair) {
        for (var id in pairs) { if (pairs[id].nominated && pairs[id].state === "succeeded") { pair = pairs[id]; } }
      }
      var local = pair && locals[pair.localCandidateId];
      if (local && local.candidateType && local.candidateType !== stats.candidate) {
        stats.candidate = local.candidateType;
        beacon({ice_candidate_type: stats.candidate});
      }
    }).catch(function () {});
  }
  function reportLink() {
    var values = {disconnect_count: String(stats.disconnects),
      duration_ms: String(Math.max(0, Date.now() - ctx.started_ms)),
      end_reason: stats.reason || "", ice_candidate_type: stats.candidate || ""};
    var link = ctx.report_link;
    ["disconnect_count", "duration_ms", "end_reason", "ice_candidate_type"].forEach(function (key) {
      link += ctx.report_mailto ? encodeURIComponent("\n" + key + "=" + values[key])
        : "&" + key + "=" + encodeURIComponent(values[key]);
    });
    return link;
  }
  function showEnded() {
    if (document.getElementById("hydra-stream-ended")) { return; }
    var overlay = el("div", {id: "hydra-stream-ended", style:
      "position:fixed;inset:0;z-index:2147483647;background:rgba(0,0,0,.85);color:#fff;" +
      "display:flex;flex-direction:column;align-items:center;justify-content:center;font:18px sans-serif"});
    overlay.appendChild(el("h2", {}, "Stream ended"));
    var back = el("a", {href: ctx.return_url, id: "hydra-return", style: "color:#9cf"}, "Start new stream");
    overlay.appendChild(back);
    var stars = el("div", {id: "hydra-rating", style: "margin:1em;font-size:32px"});
    for (var i = 1; i <= 5; i++) {
      (function (n) {
        var star = el("button", {type: "button", "data-stars": String(n),
          style: "background:none;border:0;color:#fc0;font-size:32px;cursor:pointer"}, "\u2605");
        star.addEventListener("click", function () { rate(n, stars); });
        stars.appendChild(star);
      })(i);
    }
    overlay.appendChild(stars);
    overlay.appendChild(el("a", {href: reportLink(), id: "hydra-report", target: "_blank",
      rel: "noopener noreferrer", style: "color:#9cf"}, "Report a problem"));
    (document.body || document.documentElement).appendChild(overlay);
  }
  window.__hydraShowEnded = showEnded;
  // A drain's deadline: the agent says the stream ends in N s; a banner counts down.
  function showNotice(seconds) {
    var banner = document.getElementById("hydra-ends-soon");
    if (!banner) {
      banner = el("div", {id: "hydra-ends-soon", role: "status", style:
        "position:fixed;top:0;left:0;right:0;z-index:2147483646;background:#b60;color:#fff;" +
        "padding:.5em;text-align:center;font:16px sans-serif"});
      (document.body || document.documentElement).appendChild(banner);
    }
    banner.textContent = "This stream ends in " + seconds + " s";
  }
  var endsAt = null;
  function pollNotice() {
    fetch(ctx.notice_url, {credentials: "same-origin"}).then(function (answer) {
      return answer.ok ? answer.json() : null;
    }).then(function (notice) {
      if (notice && typeof notice.ends_in_s === "number") {
        endsAt = Date.now() + notice.ends_in_s * 1000;
      }
    }).catch(function () {});
  }
  setInterval(pollNotice, 5000);
  setInterval(function () {
    if (endsAt !== null) { showNotice(Math.max(0, Math.ceil((endsAt - Date.now()) / 1000))); }
  }, 1000);
  pollNotice();
  var Native = window.RTCPeerConnection;
  function withIce(config) {
    config = Object.assign({}, config || {});
    if (ctx.ice_servers.length) {
      config.iceServers = ctx.ice_servers.concat(config.iceServers || []);
    }
    if (ctx.force_relay) { config.iceTransportPolicy = "relay"; }
    return config;
  }
  if (Native) {
    var Watched = function (config, constraints) {
      var pc = new Native(withIce(config), constraints);
      pc.addEventListener("connectionstatechange", function () {
        var state = pc.connectionState;
        if (state === "connected") { readCandidateType(pc); }
        if (state === "disconnected" || state === "failed") {
          stats.disconnects += 1;
          beacon({disconnects: 1});
        }
        if (["disconnected", "failed", "closed"].indexOf(state) >= 0) {
          stats.reason = stats.reason || state;
          showEnded();
        }
      });
      return pc;
    };
    Watched.prototype = Native.prototype;
    window.RTCPeerConnection = Watched;
  }
  // The microphone: a send-only connection of its own (not watched: its end is not the
  // stream's), answered by the worker, which forwards the audio to the body.
  var mic = {state: "off", pc: null, stream: null, error: null, button: null};
  window.__hydraMic = mic;
  function micShow(state, error) {
    mic.state = state;
    mic.error = error || null;
    if (!mic.button) { return; }
    var on = state === "on" || state === "starting";
    // The label stays "Microphone" (a toggle's name must not change); aria-pressed says on.
    mic.button.setAttribute("aria-pressed", on ? "true" : "false");
    mic.button.setAttribute("data-state", state);
    mic.button.title = state === "error" ? "Microphone failed: " + mic.error :
      on ? "Stop sending your microphone" : "Send your microphone to the stream";
  }
  function micOff() {
    if (mic.pc) { mic.pc.close(); }
    if (mic.stream) { mic.stream.getTracks().forEach(function (t) { t.stop(); }); }
    mic.pc = null;
    mic.stream = null;
    micShow("off");
  }
  function gathered(pc) {
    return new Promise(function (done) {
      if (pc.iceGatheringState === "complete") { return done(); }
      var timer = setTimeout(done, 5000);
      pc.addEventListener("icegatheringstatechange", function () {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); done(); }
      });
    });
  }
  function micOn() {
    micShow("starting");
    navigator.mediaDevices.getUserMedia({audio: true}).then(function (stream) {
      mic.stream = stream;
      var pc = new Native(withIce({}));
      mic.pc = pc;
      stream.getAudioTracks().forEach(function (track) {
        pc.addTransceiver(track, {direction: "sendonly", streams: [stream]});
      });
      pc.addEventListener("connectionstatechange", function () {
        if (mic.pc !== pc) { return; }
        if (pc.connectionState === "connected") { micShow("on"); }
        if (pc.connectionState === "failed") { micOff(); micShow("error", "connection failed"); }
      });
      return pc.createOffer().then(function (offer) {
        return pc.setLocalDescription(offer);
      }).then(function () { return gathered(pc); }).then(function () {
        return fetch(ctx.mic_url, {method: "POST", headers: {"content-type": "application/json"},
          body: JSON.stringify({sdp: pc.localDescription.sdp})});
      }).then(function (answer) {
        if (!answer.ok) {
          return answer.text().then(function (text) {
            throw new Error("the worker refused the microphone: " + answer.status + " " + text);
          });
        }
        return answer.json();
      }).then(function (answer) {
        if (mic.pc !== pc) { return; }
        return pc.setRemoteDescription({type: "answer", sdp: answer.sdp});
      });
    }).catch(function (error) {
      micOff();
      micShow("error", String(error && error.message || error));
    });
  }
  function addMicToggle() {
    if (!Native || !navigator.mediaDevices || document.getElementById("hydra-mic")) { return; }
    var button = el("button", {type: "button", id: "hydra-mic", "aria-pressed": "false",
      style: "position:fixed;right:16px;bottom:16px;z-index:2147483646;padding:8px 12px;" +
        "border-radius:6px;border:1px solid #fff;background:#222;color:#fff;font:14px sans-serif"},
      "Microphone");
    mic.button = button;
    micShow(mic.state, mic.error);
    button.addEventListener("click", function () {
      if (mic.state === "on" || mic.state === "starting") { micOff(); } else { micOn(); }
    });
    (document.body || document.documentElement).appendChild(button);
  }
  window.__hydraMicOn = micOn;
  window.__hydraMicOff = micOff;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", addMicToggle);
  } else {
    addMicToggle();
  }
  document.addEventListener("click", function (event) {
    var target = event.target && event.target.closest && event.target.closest("[data-hydra-exit]");
    if (!target) { return; }
    event.preventDefault();
    event.stopImmediatePropagation();
    stats.reason = "quit";
    fetch(ctx.quit_url, {method: "POST", keepalive: true}).finally(function () {
      location.href = ctx.return_url;
    });
  }, true);
})();
"#;

/// Rewrites a stream of HTML chunks: the script goes first into `<head>` (else `<body>`, else at
/// the end), so it runs before the page's own scripts; exit buttons get [`EXIT_ATTRIBUTE`].
/// A rewriting error ends the stream with that error.
pub fn inject<S, E>(
    upstream: S,
    context: &PageContext,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + use<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let script = context.script();
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = {
        let output = output.clone();
        move |chunk: &[u8]| {
            output
                .lock()
                .expect("rewriter output poisoned")
                .extend_from_slice(chunk)
        }
    };
    let settings = rewriter_settings(&script);
    let rewriter = HtmlRewriter::new(settings, sink);
    let take = move |output: &Arc<Mutex<Vec<u8>>>| -> Bytes {
        Bytes::from(std::mem::take(
            &mut *output.lock().expect("rewriter output poisoned"),
        ))
    };
    futures::stream::unfold(
        (upstream, Some(rewriter), output),
        move |(mut upstream, mut rewriter, output)| async move {
            loop {
                let active = rewriter.as_mut()?;
                match upstream.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(error) = active.write(&chunk) {
                            let failure = std::io::Error::other(format!("html rewrite: {error}"));
                            return Some((Err(failure), (upstream, None, output)));
                        }
                        let produced = take(&output);
                        if !produced.is_empty() {
                            return Some((Ok(produced), (upstream, rewriter, output)));
                        }
                    }
                    Some(Err(error)) => {
                        let failure = std::io::Error::other(format!("upstream body: {error}"));
                        return Some((Err(failure), (upstream, None, output)));
                    }
                    None => {
                        let finished = rewriter.take().map(HtmlRewriter::end);
                        if let Some(Err(error)) = finished {
                            let failure = std::io::Error::other(format!("html rewrite: {error}"));
                            return Some((Err(failure), (upstream, None, output)));
                        }
                        let produced = take(&output);
                        return (!produced.is_empty())
                            .then_some((Ok(produced), (upstream, None, output)));
                    }
                }
            }
        },
    )
}

/// The rewriter's handlers: the script once, into the first `<head>` or `<body>` (else at the
/// document's end), and [`EXIT_ATTRIBUTE`] on every exit button.
fn rewriter_settings(script: &str) -> Settings<'static, 'static> {
    let injected = Arc::new(AtomicBool::new(false));
    let mut settings = Settings::new_send();
    for tag in ["head", "body"] {
        let injected = injected.clone();
        let script = script.to_owned();
        settings = settings.append_element_content_handler(element!(tag, move |element| {
            if !injected.swap(true, Ordering::Relaxed) {
                element.prepend(&script, ContentType::Html);
            }
            Ok(())
        }));
    }
    for selector in EXIT_SELECTORS {
        settings = settings.append_element_content_handler(element!(*selector, |element| {
            element.set_attribute(EXIT_ATTRIBUTE, "1")?;
            Ok(())
        }));
    }
    {
        let injected = injected.clone();
        let script = script.to_owned();
        settings = settings.append_document_content_handler(end!(move |end| {
            if !injected.swap(true, Ordering::Relaxed) {
                end.append(&script, ContentType::Html);
            }
            Ok(())
        }));
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> PageContext {
        PageContext {
            session_id: "s-1".into(),
            worker_id: "w1".into(),
            body_ip: "10.0.0.2".into(),
            experience: Some("demo</script>".into()),
            return_url: "https://kiosk.example/home".into(),
            report_url: "https://support.example/report".into(),
            ice_servers: Vec::new(),
            force_relay: false,
            project: "venue-ops".into(),
            category: "stream".into(),
            district: Some("bxl1".into()),
            body: Some("b-7".into()),
            head: None,
            started_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_script_carries_the_viewer_s_ice_servers_and_the_relay_policy() {
        let plain = context().script();
        assert!(
            plain.contains(r#""ice_servers":[],"force_relay":false"#),
            "{plain}"
        );
        let relayed = PageContext {
            ice_servers: vec![serde_json::json!({
                "urls": ["turn:turn.example:3478"], "username": "1700000000:s-1", "credential": "x"
            })],
            force_relay: true,
            ..context()
        }
        .script();
        assert!(relayed.contains(r#""force_relay":true"#), "{relayed}");
        assert!(
            relayed.contains(r#""username":"1700000000:s-1""#),
            "{relayed}"
        );
        assert!(relayed.contains(r#"config.iceTransportPolicy = "relay""#));
    }

    #[test]
    fn the_script_polls_the_session_s_notice_and_counts_down_its_end() {
        let script = context().script();
        assert!(
            script.contains(r#""notice_url":"/session/s-1/notice""#),
            "{script}"
        );
        assert!(script.contains("fetch(ctx.notice_url"), "{script}");
        assert!(script.contains(r#""This stream ends in " + seconds + " s""#));
        assert!(script.contains(r#"role: "status""#));
    }

    async fn rewrite(chunks: &[&str]) -> String {
        let owned: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|chunk| Ok(Bytes::from(chunk.to_string())))
            .collect();
        let stream = inject(futures::stream::iter(owned), &context());
        let parts: Vec<Bytes> = stream.map(|part| part.unwrap()).collect().await;
        String::from_utf8(parts.concat()).unwrap()
    }

    #[tokio::test]
    async fn the_script_goes_first_into_head_even_across_chunk_boundaries() {
        let page = rewrite(&[
            "<!doctype html><html><he",
            "ad><title>x</title></head><body><button id=\"ex",
            "it\">Exit</button><script>page()</script></body></html>",
        ])
        .await;
        let script_at = page.find("data-hydra-injected").unwrap();
        assert!(page[..script_at].ends_with("<head><script "), "{page}");
        assert!(page.contains(r#"<button id="exit" data-hydra-exit="1">Exit</button>"#));
        assert_eq!(page.matches("data-hydra-injected").count(), 1);
        assert!(script_at < page.find("page()").unwrap());
        // The hostile experience name cannot close the script early.
        assert!(!page.contains("demo</script>"));
        assert!(page.contains("Stream ended") && page.contains("Report a problem"));
        assert!(page.contains("/session/s-1/quit"));
        assert!(page.contains("/session/s-1/mic/offer"));
        assert!(page.contains(r#""aria-pressed": "false""#));
    }

    #[tokio::test]
    async fn a_fragment_without_head_or_body_gets_the_script_at_the_end() {
        let page = rewrite(&["<p>hello</p>"]).await;
        assert!(page.starts_with("<p>hello</p><script data-hydra-injected"));
    }

    #[test]
    fn the_report_link_carries_the_session_context() {
        let mut context = context();
        assert_eq!(
            context.report_link(),
            "https://support.example/report?project=venue-ops&category=stream&title=Stream%20problem%3A%20demo%3C%2Fscript%3E%20%28session%20s-1%29&session_id=s-1&experience=demo%3C%2Fscript%3E&district=bxl1&body=b-7&head=&body_ip=10.0.0.2&worker_id=w1"
        );
        context.report_url = "mailto:ops@example.org".into();
        let mail = context.report_link();
        assert!(
            mail.starts_with(
                "mailto:ops@example.org?subject=Hydra%20session%20s-1&body=project%3Dvenue-ops%0A"
            ),
            "{mail}"
        );
        // Each value is encoded once: a space is %20 in the link, a space in the mail.
        assert!(
            mail.contains(
                "title%3DStream%20problem%3A%20demo%3C%2Fscript%3E%20%28session%20s-1%29%0A"
            ),
            "{mail}"
        );
    }
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    /// The field's report parameters (relay.md, issue 14), written out here.
    const FIELD_PARAMETERS: &[&str] = &[
        "project",
        "category",
        "title",
        "session_id",
        "experience",
        "district",
        "body",
        "head",
        "body_ip",
        "disconnect_count",
        "duration_ms",
        "end_reason",
        "ice_candidate_type",
    ];

    /// The overlay says "Start new stream"; the report link opens in a new tab and, with what the
    /// page appends, carries every parameter of the field; the stats beacon goes to the
    /// session's own route.
    #[test]
    fn the_overlay_says_start_new_stream_and_the_report_link_has_every_field_parameter() {
        let context = PageContext {
            session_id: "s-9".into(),
            worker_id: "w1".into(),
            body_ip: "10.0.0.2".into(),
            experience: None,
            return_url: "https://kiosk.example/home".into(),
            report_url: "https://support.example/report".into(),
            ice_servers: Vec::new(),
            force_relay: false,
            project: "hydra".into(),
            category: "stream".into(),
            district: None,
            body: None,
            head: Some("h-1".into()),
            started_ms: 5,
        };
        let script = context.script();
        assert!(script.contains(r#""Start new stream""#), "{script}");
        assert!(!script.contains(r#""Return")"#));
        assert!(script.contains(r#"target: "_blank""#));
        assert!(script.contains(r#""stats_url":"/session/s-9/stats""#));
        assert!(script.contains(r#""started_ms":5"#));
        let link = context.report_link();
        let query = link.split_once('?').unwrap().1;
        let mut keys: Vec<&str> = query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap().0)
            .collect();
        for key in PAGE_REPORT_PARAMETERS {
            assert!(
                script.contains(&format!("\"{key}\"")),
                "{key} is not added by the page"
            );
            keys.push(key);
        }
        for key in FIELD_PARAMETERS {
            assert!(keys.contains(key), "{key} is missing from {keys:?}");
        }
    }
}
