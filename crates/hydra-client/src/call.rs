//! One API call ready for any replica ([`Call`]), the answer it got ([`Answer`]) and a failure
//! below HTTP ([`TransportError`]).

use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;
use crate::replicas::normalise_base_url;

/// Whether a call reads, or writes and may be repeated without changing the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any replica may answer; retried on any transport failure.
    Read,
    /// Master only; retried even when it may have reached the server (moves, drains, deletes,
    /// heartbeats).
    IdempotentWrite,
    /// Master only; retried only when it surely did not reach the server (enrolment).
    Write,
}

/// One API call, ready to be sent to any replica.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) segments: Vec<String>,
    pub(crate) query: Vec<(&'static str, String)>,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) kind: Kind,
    /// `If-None-Match`: a `304` answer then counts as a success.
    pub(crate) if_none_match: Option<String>,
    /// `Idempotency-Key`: the write's id, so the server applies a repeat of it at most once.
    pub(crate) write_id: Option<u128>,
}

impl Call {
    /// A call to `/api/v1/<segments...>`; each segment is percent-encoded.
    pub(crate) fn new(method: Method, kind: Kind, segments: &[&str]) -> Call {
        Call {
            method,
            segments: segments
                .iter()
                .map(|segment| (*segment).to_owned())
                .collect(),
            query: Vec::new(),
            body: None,
            kind,
            if_none_match: None,
            write_id: None,
        }
    }

    /// Adds `Idempotency-Key: <write id>` (a UUID) when `write_id` is given.
    pub(crate) fn with_write_id(self, write_id: Option<u128>) -> Call {
        Call { write_id, ..self }
    }

    /// Adds `If-None-Match: etag`; the answer may then be `304` ([`Answer::not_modified`]).
    pub(crate) fn with_if_none_match(self, etag: Option<&str>) -> Call {
        Call {
            if_none_match: etag.map(str::to_owned),
            ..self
        }
    }

    /// Adds query parameters.
    pub(crate) fn with_query(self, query: Vec<(&'static str, String)>) -> Call {
        Call { query, ..self }
    }

    /// Adds a JSON body.
    pub(crate) fn with_json(self, body: &impl Serialize) -> Result<Call, ClientError> {
        let encoded = serde_json::to_vec(body)
            .map_err(|error| ClientError::Config(format!("cannot encode the request: {error}")))?;
        Ok(Call {
            body: Some(encoded),
            ..self
        })
    }

    /// The full URL of this call on `base`, for a streamed answer.
    pub(crate) fn stream_url(&self, base: &str) -> Result<String, ClientError> {
        self.url(base)
            .map(String::from)
            .map_err(ClientError::Config)
    }

    pub(crate) fn url(&self, base: &str) -> Result<Url, String> {
        let mut url = Url::parse(base).map_err(|error| format!("bad base URL {base}: {error}"))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| format!("base URL {base} cannot have a path"))?;
            path.pop_if_empty().push("api").push("v1");
            path.extend(&self.segments);
        }
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &self.query {
                pairs.append_pair(name, value);
            }
        }
        Ok(url)
    }
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) url: String,
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// `Ok(self)` for a 2xx (or a 304, which only a call with `If-None-Match` gets), else the
    /// matching error.
    pub(crate) fn into_success(self) -> Result<Answer, ClientError> {
        if (200..300).contains(&self.status) || self.not_modified() {
            Ok(self)
        } else {
            Err(ClientError::from_answer(&self.url, self.status, &self.body))
        }
    }

    /// `304 Not Modified`: what a call with `If-None-Match` gets while nothing changed.
    pub(crate) fn not_modified(&self) -> bool {
        self.status == 304
    }

    /// A 5xx or 429: worth another replica or a later try.
    pub(crate) fn is_transient(&self) -> bool {
        self.status >= 500 || self.status == 429
    }

    /// The master's base URL when this is a redirect to it (`307`/`308` with an absolute
    /// `Location`).
    pub(crate) fn redirected_master(&self) -> Option<String> {
        if !matches!(self.status, 307 | 308) {
            return None;
        }
        let location = Url::parse(self.location.as_deref()?).ok()?;
        normalise_base_url(&location.origin().ascii_serialization()).ok()
    }

    /// Decodes a JSON body.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|error| ClientError::Decode {
            url: self.url.clone(),
            detail: error.to_string(),
        })
    }
}

/// A failure below HTTP: no answer at all.
#[derive(Debug)]
pub(crate) struct TransportError {
    pub(crate) detail: String,
    /// Whether the request may have reached the server (anything but a failed connect).
    pub(crate) maybe_sent: bool,
}
