//! One HTTP exchange with one replica: the request (token, `If-None-Match`, idempotency key,
//! read-your-writes revision), the revision a write is answered with, the body read to the end
//! (bounded).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION};

use super::{Answer, Call, Client, Kind, TransportError};
use crate::error::describe_transport;

/// Largest answer body the client reads; a node list of 100,000 nodes stays well below it.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

impl Client {
    /// One HTTP exchange with one replica, body read to the end (bounded).
    pub(super) async fn send_once(
        &self,
        base: &str,
        call: &Call,
        timeout: Duration,
    ) -> Result<Answer, TransportError> {
        let mut url = call.url(base).map_err(|detail| TransportError {
            detail,
            maybe_sent: false,
        })?;
        self.ask_for_own_writes(call, &mut url);
        let request = self.request(call, url.clone(), timeout);
        let mut response = request.send().await.map_err(|error| TransportError {
            detail: describe_transport(&error),
            maybe_sent: !error.is_connect(),
        })?;
        let status = response.status().as_u16();
        if call.kind != Kind::Read {
            self.note_written_revision(response.headers());
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = read_bounded(&mut response, &url).await?;
        Ok(Answer {
            url: url.to_string(),
            status,
            location,
            body,
        })
    }

    /// Read-your-writes: a replica whose view is behind waits or answers 503, and the read moves
    /// on to the next replica; a replica on another database ignores it. Discovery calls and
    /// writes ask for nothing.
    fn ask_for_own_writes(&self, call: &Call, url: &mut reqwest::Url) {
        let written = self.written_revision();
        let discovery = matches!(
            call.segments.first().map(String::as_str),
            Some("check-master" | "health")
        );
        if call.kind == Kind::Read && written > 0 && !discovery {
            let feed = self
                .written_feed
                .lock()
                .expect("feed lock poisoned")
                .clone();
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair(hydra_api::MIN_REVISION_PARAM, &written.to_string());
            if let Some(feed) = feed {
                pairs.append_pair(hydra_api::MIN_REVISION_FEED_PARAM, &feed);
            }
        }
    }

    /// The request of `call` with its token, `If-None-Match`, idempotency key and JSON body.
    fn request(
        &self,
        call: &Call,
        url: reqwest::Url,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.request(call.method.clone(), url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = &call.if_none_match {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag.as_str());
        }
        if let Some(write_id) = call.write_id {
            request = request.header(
                hydra_api::write_id::IDEMPOTENCY_KEY,
                hydra_api::write_id::format_write_id(write_id),
            );
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        request
    }

    /// Keeps the highest revision a write was answered with, in its feed (database).
    fn note_written_revision(&self, headers: &reqwest::header::HeaderMap) {
        let Some(revision) = headers
            .get(hydra_api::REVISION_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<i64>().ok())
        else {
            return;
        };
        let feed = headers
            .get(hydra_api::FEED_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut written_feed = self.written_feed.lock().expect("feed lock poisoned");
        if *written_feed != feed {
            // Another database (an independent server): its revisions start their own count.
            *written_feed = feed;
            self.written_revision
                .store(revision, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.written_revision
                .fetch_max(revision, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The answer's body, read to the end; larger than [`MAX_ANSWER_BYTES`] is a failure.
async fn read_bounded(
    response: &mut reqwest::Response,
    url: &reqwest::Url,
) -> Result<Vec<u8>, TransportError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(TransportError {
                        detail: format!("answer of {url} is larger than {MAX_ANSWER_BYTES} bytes"),
                        maybe_sent: true,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => {
                return Err(TransportError {
                    detail: describe_transport(&error),
                    maybe_sent: true,
                });
            }
        }
    }
    Ok(body)
}
