//! The viewer capability: the one secret that opens a session's browser routes (page,
//! sub-resources, WebSockets, quit, rating). Minted by the agent with `stream_url`, checked by
//! the agent's proxy and by the server's colocated route, both with this module.
//!
//! A capability is `<expiry unix seconds>.<hex HMAC-SHA256>` over the session id and the expiry,
//! keyed by the worker's agent key (which both the agent and the server hold), so nothing is
//! stored per session and the server can verify (and re-mint) without keeping a bearer secret in
//! clear. A browser presents it once in the query (`?hydra_viewer=...`); the answer sets it as a
//! cookie scoped to `/session/{id}/` (HttpOnly, SameSite=Strict) so the page's own requests and
//! WebSockets carry it. It is stripped before a request reaches the session process.
//!
//! Time comes in as unix milliseconds; nothing here reads a clock.

use aws_lc_rs::hmac;
use axum::http::header::{self, HeaderMap, HeaderValue};

/// The query parameter and cookie name that carry a capability.
pub const NAME: &str = "hydra_viewer";

/// How long a capability minted with a stream URL stays valid unless configured: long enough
/// for a kiosk's day, short enough that a leaked link dies.
pub const DEFAULT_TTL_SECS: u64 = 12 * 60 * 60;

/// Why a presented capability was refused (for logs; the browser only ever sees one answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No capability in the query or the cookies.
    Missing,
    /// Not of the form `<expiry>.<64 hex digits>`.
    Malformed,
    /// Its expiry has passed.
    Expired,
    /// Not signed for this session with this worker's key.
    BadSignature,
}

/// Where an accepted capability came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The capability, when it came in the query: the answer sets it as the session's cookie.
    pub set_cookie: Option<HeaderValue>,
}

fn signature(key: &[u8], session_id: &str, expires_at_secs: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, &message(session_id, expires_at_secs))
}

/// Domain-separated so a capability can never be confused with another HMAC under the key.
fn message(session_id: &str, expires_at_secs: u64) -> Vec<u8> {
    format!("hydra-viewer-v1\n{session_id}\n{expires_at_secs}").into_bytes()
}

/// A capability for `session_id`, valid until `expires_at_secs` (unix seconds), under `key`.
pub fn mint(key: &[u8], session_id: &str, expires_at_secs: u64) -> String {
    let tag = signature(key, session_id, expires_at_secs);
    format!("{expires_at_secs}.{}", hex::encode(tag.as_ref()))
}

/// A capability for `session_id` valid for `ttl_secs` from `now_ms`.
pub fn mint_for(key: &[u8], session_id: &str, now_ms: i64, ttl_secs: u64) -> String {
    let now_secs = u64::try_from(now_ms.max(0) / 1000).unwrap_or(0);
    mint(key, session_id, now_secs.saturating_add(ttl_secs))
}

/// Whether `token` opens `session_id` under `key` at `now_ms`; the signature is compared in
/// constant time.
pub fn verify(key: &[u8], session_id: &str, token: &str, now_ms: i64) -> Result<(), Refusal> {
    let (expiry, signature_hex) = token.split_once('.').ok_or(Refusal::Malformed)?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Malformed);
    }
    let expires_at_secs: u64 = expiry.parse().map_err(|_| Refusal::Malformed)?;
    let given = hex::decode(signature_hex).map_err(|_| Refusal::Malformed)?;
    if given.len() != 32 {
        return Err(Refusal::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, &message(session_id, expires_at_secs), &given)
        .map_err(|_| Refusal::BadSignature)?;
    let now_secs = now_ms.max(0) / 1000;
    if i128::from(expires_at_secs) <= i128::from(now_secs) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Checks what a request to `/session/{session_id}/...` presents (the query's `hydra_viewer`
/// first, then the cookie); the first valid one wins.
pub fn check(
    key: &[u8],
    session_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Access, Refusal> {
    let mut refusal = Refusal::Missing;
    for token in query.map(from_query).into_iter().flatten() {
        match verify(key, session_id, token, now_ms) {
            Ok(()) => {
                return Ok(Access {
                    set_cookie: set_cookie(session_id, token, now_ms),
                });
            }
            Err(why) => refusal = why,
        }
    }
    for token in from_cookies(headers) {
        match verify(key, session_id, token, now_ms) {
            Ok(()) => return Ok(Access { set_cookie: None }),
            Err(why) => refusal = why,
        }
    }
    Err(refusal)
}

/// Whether a request presents any capability at all (checked before a lookup, so a request
/// without one costs nothing).
pub fn presented(query: Option<&str>, headers: &HeaderMap) -> bool {
    query.is_some_and(|query| from_query(query).next().is_some())
        || from_cookies(headers).next().is_some()
}

/// `stream_url` with the capability in its query.
pub fn viewer_url(stream_url: &str, token: &str) -> String {
    let separator = if stream_url.contains('?') { '&' } else { '?' };
    format!("{stream_url}{separator}{NAME}={token}")
}

/// `url` without the capability (what a store keeps: the link without its secret).
pub fn without_capability(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_owned(),
        Some((base, query)) => match strip_query(query) {
            Some(rest) => format!("{base}?{rest}"),
            None => base.to_owned(),
        },
    }
}

/// The values of `hydra_viewer=` in a raw query.
fn from_query(query: &str) -> impl Iterator<Item = &str> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix(NAME)?.strip_prefix('='))
}

/// The values of the `hydra_viewer` cookie.
fn from_cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(NAME)?.strip_prefix('='))
}

/// A raw query without its `hydra_viewer` pairs, every other byte kept; `None` when nothing is
/// left.
pub fn strip_query(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_capability_pair(pair.as_bytes()))
        .collect();
    let joined = kept.join("&");
    (!joined.is_empty()).then_some(joined)
}

fn is_capability_pair(pair: &[u8]) -> bool {
    pair.strip_prefix(NAME.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"="))
}

/// Removes the `hydra_viewer` cookie from the request's `Cookie` headers (the session process
/// never sees the capability); other cookies pass as they were.
pub fn strip_cookie(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(header::COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|byte| *byte == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty() && !is_capability_pair(pair))
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(rebuilt) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(header::COOKIE, rebuilt);
        }
    }
}

/// `Set-Cookie` for the session's capability: scoped to the session's paths, invisible to
/// scripts, never sent from another site, gone when the capability expires.
fn set_cookie(session_id: &str, token: &str, now_ms: i64) -> Option<HeaderValue> {
    let expires_at_secs: i64 = token.split_once('.')?.0.parse().ok()?;
    let max_age = (expires_at_secs - now_ms.max(0) / 1000).max(0);
    HeaderValue::from_str(&format!(
        "{NAME}={token}; Path=/session/{session_id}/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"hyk_0123456789abcdef0123456789abcdef";
    const NOW_MS: i64 = 1_800_000_000_000;

    #[test]
    fn a_minted_capability_opens_its_session_until_it_expires() {
        let token = mint_for(KEY, "s-1", NOW_MS, 60);
        assert_eq!(verify(KEY, "s-1", &token, NOW_MS), Ok(()));
        assert_eq!(verify(KEY, "s-1", &token, NOW_MS + 59_999), Ok(()));
        assert_eq!(
            verify(KEY, "s-1", &token, NOW_MS + 60_000),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn another_session_another_key_or_a_forged_expiry_is_refused() {
        let token = mint_for(KEY, "s-1", NOW_MS, 60);
        assert_eq!(
            verify(KEY, "s-2", &token, NOW_MS),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify(b"hyk_another_key_of_another_worker", "s-1", &token, NOW_MS),
            Err(Refusal::BadSignature)
        );
        let (_, signature) = token.split_once('.').unwrap();
        let extended = format!("{}.{signature}", NOW_MS / 1000 + 999_999);
        assert_eq!(
            verify(KEY, "s-1", &extended, NOW_MS),
            Err(Refusal::BadSignature)
        );
        for malformed in ["", ".", "12", "x.00", "1.zz", "1.00", "-1.00", "1.0g"] {
            assert_eq!(
                verify(KEY, "s-1", malformed, NOW_MS),
                Err(Refusal::Malformed),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn check_takes_the_query_then_the_cookie_and_sets_the_cookie_from_the_query() {
        let token = mint_for(KEY, "s-1", NOW_MS, 60);
        let none = HeaderMap::new();
        let from_query = check(
            KEY,
            "s-1",
            Some(&format!("a=1&{NAME}={token}")),
            &none,
            NOW_MS,
        )
        .unwrap();
        let cookie = from_query.set_cookie.unwrap();
        assert_eq!(
            cookie.to_str().unwrap(),
            format!(
                "hydra_viewer={token}; Path=/session/s-1/; Max-Age=60; HttpOnly; SameSite=Strict"
            )
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=x; {NAME}={token}")).unwrap(),
        );
        assert_eq!(
            check(KEY, "s-1", Some(&format!("{NAME}=1.00")), &headers, NOW_MS),
            Ok(Access { set_cookie: None })
        );
        assert_eq!(
            check(KEY, "s-1", None, &none, NOW_MS),
            Err(Refusal::Missing)
        );
        assert_eq!(
            check(KEY, "s-1", Some("a=1"), &headers, NOW_MS + 61_000),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn the_capability_is_stripped_and_everything_else_kept_byte_for_byte() {
        assert_eq!(strip_query("hydra_viewer=1.ab"), None);
        assert_eq!(
            strip_query("a=%2F&hydra_viewer=1.ab&b=%25&hydra_viewerx=2").as_deref(),
            Some("a=%2F&b=%25&hydra_viewerx=2")
        );
        assert_eq!(strip_query("&&a").as_deref(), Some("&&a"));
        assert_eq!(
            without_capability("http://w:7071/session/s-1/?hydra_viewer=1.ab"),
            "http://w:7071/session/s-1/"
        );
        assert_eq!(
            viewer_url("http://w:7071/session/s-1/", "1.ab"),
            "http://w:7071/session/s-1/?hydra_viewer=1.ab"
        );
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; hydra_viewer=1.ab;b=2"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("hydra_viewer=2.cd"),
        );
        strip_cookie(&mut headers);
        let left: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, vec![HeaderValue::from_static("a=1; b=2")]);
    }

    proptest::proptest! {
        #[test]
        fn a_capability_opens_exactly_its_own_session(
            session in "[A-Za-z0-9_-]{1,64}",
            other in "[A-Za-z0-9_-]{1,64}",
            ttl in 1u64..10_000_000,
            now_s in 0i64..4_000_000_000,
        ) {
            let now_ms = now_s * 1000;
            let token = mint_for(KEY, &session, now_ms, ttl);
            proptest::prop_assert_eq!(verify(KEY, &session, &token, now_ms), Ok(()));
            let ttl_ms = i64::try_from(ttl).unwrap() * 1000;
            proptest::prop_assert_eq!(
                verify(KEY, &session, &token, now_ms + ttl_ms),
                Err(Refusal::Expired)
            );
            if other != session {
                proptest::prop_assert_eq!(
                    verify(KEY, &other, &token, now_ms),
                    Err(Refusal::BadSignature)
                );
            }
        }

        #[test]
        fn stripping_removes_only_capability_pairs(
            pairs in proptest::collection::vec("(hydra_viewer|[a-z%0-9=.]{0,8})(=[a-z0-9.]{0,4})?", 0..6),
        ) {
            let query = pairs.join("&");
            let kept: Vec<&str> = pairs
                .iter()
                .map(String::as_str)
                .filter(|pair| *pair != NAME && !pair.starts_with("hydra_viewer="))
                .collect();
            let expected = Some(kept.join("&")).filter(|joined| !joined.is_empty());
            proptest::prop_assert_eq!(strip_query(&query), expected);
        }
    }
}
