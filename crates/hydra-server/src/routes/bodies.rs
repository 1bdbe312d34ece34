//! `GET /api/v1/bodies/eligible`: the body-selection policy over the registry view.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::{EligibleResponse, ErrorBody};
use hydra_core::selection::{Head, Observations, select_bodies, strict_venue};
use hydra_core::{LatencySample, Role, Transport};
use hydra_store::LatencyRecord;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::state::{AppState, now_ms};

/// Most ids in `unreachable` and samples in `measured`.
const MAX_LIST: usize = 256;

/// Query of the eligible list: `head_id` (quickroute, else cross-venue) or `district` + `venue`
/// (strict venue, for clients that send no head).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EligibleQuery {
    /// The head asking; it names itself, its token is not its identity.
    pub head_id: Option<String>,
    /// Strict venue: district (with `venue`, without `head_id`).
    pub district: Option<String>,
    /// Strict venue: venue (with `district`, without `head_id`).
    pub venue: Option<String>,
    /// Comma-separated body ids the head could not reach; left out of this one answer.
    pub unreachable: Option<String>,
    /// Comma-separated `body_id:transport:rtt_ms` connect times the head measured
    /// (transport `lan` or `wireguard`); they rank cross-venue bodies from now on.
    pub measured: Option<String>,
}

fn split_list(field: &str, text: &str) -> Result<Vec<String>, ApiError> {
    let items: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    if items.len() > MAX_LIST {
        return Err(ApiError::invalid(format!(
            "{field} names more than {MAX_LIST} entries"
        )));
    }
    Ok(items)
}

/// Parses `measured`: `body_id:transport:rtt_ms`, comma-separated.
fn parse_measured(text: &str) -> Result<Vec<(String, Transport, u32)>, ApiError> {
    split_list("measured", text)?
        .into_iter()
        .map(|item| {
            let mut parts = item.splitn(3, ':');
            let (Some(body_id), Some(transport), Some(rtt_ms)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(ApiError::invalid(format!(
                    "measured entry {item:?} is not body_id:transport:rtt_ms"
                )));
            };
            let transport: Transport = transport.parse().map_err(|error| {
                ApiError::invalid(format!("measured entry {item:?}: transport: {error}"))
            })?;
            let rtt_ms: u32 = rtt_ms.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "measured entry {item:?}: rtt_ms must be a whole number of ms"
                ))
            })?;
            Ok((body_id.to_owned(), transport, rtt_ms))
        })
        .collect()
}

/// The bodies a head may use, best first, with the policy that chose them.
///
/// With `head_id`: quickroute (same district, venue and owner; a gate), else the cross-venue
/// fallback (same district, usable by the head's owner, ranked by measured latency, ownership,
/// cost tier, idleness, VRAM). Without: strict venue from `district` and `venue`.
/// Any valid token may ask for strict venue; with `head_id`, a node token only for its own
/// head (`403` naming `head_id` otherwise), the admin token for any.
#[utoipa::path(get, path = "/api/v1/bodies/eligible", tag = "bodies", params(EligibleQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Eligible bodies, best first", body = EligibleResponse),
        (status = 400, description = "Bad parameters, or head_id names a node without the head role", body = ErrorBody),
        (status = 403, description = "A node token asking for another head_id", body = ErrorBody),
        (status = 404, description = "Unknown head_id", body = ErrorBody)))]
pub async fn eligible(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EligibleQuery>,
) -> Result<Json<EligibleResponse>, ApiError> {
    let caller = state.caller(&headers)?;
    let now = now_ms();
    let settings = state.selection_settings();
    let Some(head_id) = query.head_id else {
        if query.unreachable.is_some() || query.measured.is_some() {
            return Err(ApiError::invalid("unreachable and measured need head_id"));
        }
        let (Some(district), Some(venue)) = (query.district, query.venue) else {
            return Err(ApiError::invalid(
                "give head_id, or both district and venue",
            ));
        };
        let registry = state.registry().read().expect("registry lock poisoned");
        let selection = strict_venue(
            &district,
            &venue,
            registry.in_district(&district),
            now,
            &settings,
        );
        return Ok(Json(EligibleResponse::from(&selection)));
    };
    // A node token speaks only for its own head: reading another head's ranking, or recording
    // samples in its name, would let any node reorder that head's bodies.
    if let Caller::Node(node_id) = &caller
        && *node_id != head_id
    {
        return Err(ApiError::forbidden(format!(
            "head_id {head_id:?}: a node token may only ask for its own head"
        )));
    }
    if query.district.is_some() || query.venue.is_some() {
        return Err(ApiError::invalid(
            "give either head_id or district and venue, not both",
        ));
    }
    let unreachable: HashSet<String> = match &query.unreachable {
        Some(text) => split_list("unreachable", text)?.into_iter().collect(),
        None => HashSet::new(),
    };
    let measured = match &query.measured {
        Some(text) => parse_measured(text)?,
        None => Vec::new(),
    };
    // One lookup of the head, under one lock: its place is kept for the selection, and the
    // samples naming a body that is not enrolled (removed since the head probed it) dropped.
    let (district, venue, owner, samples) = {
        let registry = state.registry().read().expect("registry lock poisoned");
        let head = registry
            .get(&head_id)
            .ok_or_else(|| ApiError::not_found(format!("head {head_id:?} is not enrolled")))?;
        if !head.roles.contains(Role::Head) {
            return Err(ApiError::invalid(format!(
                "node {head_id:?} does not have the head role"
            )));
        }
        let samples = latest_samples(&head_id, measured, now, |body_id| {
            registry.get(body_id).is_some()
        });
        (
            head.district.clone(),
            head.venue.clone(),
            head.owner.clone(),
            samples,
        )
    };
    // Durably, in one transaction, before the view (a restart must not lose what was answered).
    if !samples.is_empty() {
        state.store().record_latencies(&samples).await?;
    }
    let head = Head {
        district: &district,
        venue: &venue,
        owner: &owner,
    };
    let mut registry = state.registry().write().expect("registry lock poisoned");
    for sample in &samples {
        registry.set_latency(
            &head_id,
            &sample.body_id,
            LatencySample {
                rtt_ms: sample.rtt_ms,
                measured_at: sample.measured_at,
            },
        );
    }
    let observations = Observations {
        latency: registry.latency_of(&head_id),
        unreachable: (!unreachable.is_empty()).then_some(&unreachable),
    };
    let selection = select_bodies(
        &head,
        registry.in_district(head.district),
        now,
        &settings,
        &observations,
    );
    metrics::counter!("hydra_eligible_requests_total", "policy" => selection.policy.as_str())
        .increment(1);
    Ok(Json(EligibleResponse::from(&selection)))
}

/// The head's measured connect times as store records: one per body (the last one given wins),
/// only for bodies that `enrolled` knows.
fn latest_samples(
    head_id: &str,
    measured: Vec<(String, Transport, u32)>,
    now: i64,
    enrolled: impl Fn(&str) -> bool,
) -> Vec<LatencyRecord> {
    let mut by_body: HashMap<String, (Transport, u32)> = HashMap::new();
    let mut order = Vec::new();
    for (body_id, transport, rtt_ms) in measured {
        if !enrolled(&body_id) {
            continue;
        }
        if by_body
            .insert(body_id.clone(), (transport, rtt_ms))
            .is_none()
        {
            order.push(body_id);
        }
    }
    order
        .into_iter()
        .filter_map(|body_id| {
            let (transport, rtt_ms) = by_body.remove(&body_id)?;
            Some(LatencyRecord {
                head_id: head_id.to_owned(),
                body_id,
                transport,
                rtt_ms,
                measured_at: now,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{latest_samples, parse_measured};
    use hydra_core::Transport;

    #[test]
    fn samples_are_one_per_enrolled_body_and_the_last_wins() {
        let measured = vec![
            ("b1".to_owned(), Transport::Lan, 3),
            ("gone".to_owned(), Transport::Lan, 1),
            ("b2".to_owned(), Transport::Wireguard, 40),
            ("b1".to_owned(), Transport::Wireguard, 9),
        ];
        let samples = latest_samples("h1", measured, 77, |body| body != "gone");
        let shown: Vec<_> = samples
            .iter()
            .map(|s| {
                (
                    s.head_id.as_str(),
                    s.body_id.as_str(),
                    s.transport,
                    s.rtt_ms,
                    s.measured_at,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("h1", "b1", Transport::Wireguard, 9, 77),
                ("h1", "b2", Transport::Wireguard, 40, 77)
            ]
        );
    }

    #[test]
    fn measured_parses_and_names_bad_entries() {
        assert_eq!(
            parse_measured("b1:lan:3, b2:wireguard:40").unwrap(),
            vec![
                ("b1".into(), Transport::Lan, 3),
                ("b2".into(), Transport::Wireguard, 40)
            ]
        );
        let error = parse_measured("b1:udp:3").unwrap_err();
        assert!(
            error.message.contains("b1:udp:3") && error.message.contains("transport"),
            "{}",
            error.message
        );
        assert!(
            parse_measured("b1:lan")
                .unwrap_err()
                .message
                .contains("body_id:transport:rtt_ms")
        );
        assert!(
            parse_measured("b1:lan:-1")
                .unwrap_err()
                .message
                .contains("rtt_ms")
        );
    }
}
