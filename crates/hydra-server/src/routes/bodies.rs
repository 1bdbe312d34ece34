//! `GET /api/v1/bodies/eligible`: the body-selection policy over the registry view.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::HeaderMap;
use hydra_api::{EligibleResponse, ErrorBody};
use hydra_core::selection::{Head, Observations, select_bodies, strict_venue};
use hydra_core::{LatencySample, Role, Transport};
use hydra_store::LatencyRecord;
use serde::Deserialize;
use utoipa::IntoParams;

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
/// Any valid token (admin or node) may ask.
#[utoipa::path(get, path = "/api/v1/bodies/eligible", tag = "bodies", params(EligibleQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Eligible bodies, best first", body = EligibleResponse),
        (status = 400, description = "Bad parameters, or head_id names a node without the head role", body = ErrorBody),
        (status = 404, description = "Unknown head_id", body = ErrorBody)))]
pub async fn eligible(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EligibleQuery>,
) -> Result<Json<EligibleResponse>, ApiError> {
    state.caller(&headers)?;
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
    {
        let registry = state.registry().read().expect("registry lock poisoned");
        let head = registry
            .get(&head_id)
            .ok_or_else(|| ApiError::not_found(format!("head {head_id:?} is not enrolled")))?;
        if !head.roles.contains(Role::Head) {
            return Err(ApiError::invalid(format!(
                "node {head_id:?} does not have the head role"
            )));
        }
    }
    record_measurements(&state, &head_id, measured, now).await?;
    let registry = state.registry().read().expect("registry lock poisoned");
    let head_node = registry
        .get(&head_id)
        .ok_or_else(|| ApiError::not_found(format!("head {head_id:?} is not enrolled")))?;
    let head = Head {
        district: &head_node.district,
        venue: &head_node.venue,
        owner: &head_node.owner,
    };
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

/// Stores the head's measured connect times (durably, then in the view). Samples naming a body
/// that is not enrolled are ignored: the body may have been removed since the head probed it.
async fn record_measurements(
    state: &AppState,
    head_id: &str,
    measured: Vec<(String, Transport, u32)>,
    now: i64,
) -> Result<(), ApiError> {
    for (body_id, transport, rtt_ms) in measured {
        if state
            .registry()
            .read()
            .expect("registry lock poisoned")
            .get(&body_id)
            .is_none()
        {
            continue;
        }
        let record = LatencyRecord {
            head_id: head_id.to_owned(),
            body_id,
            transport,
            rtt_ms,
            measured_at: now,
        };
        state.store().record_latency(&record).await?;
        state
            .registry()
            .write()
            .expect("registry lock poisoned")
            .set_latency(
                head_id,
                &record.body_id,
                LatencySample {
                    rtt_ms,
                    measured_at: now,
                },
            );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_measured;
    use hydra_core::Transport;

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
