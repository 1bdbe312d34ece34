//! The question `GET /api/v1/bodies/eligible` answers, encoded (client) and decoded (server) by
//! the same type, so the two sides cannot drift: `head_id` with optional `unreachable=id,id` and
//! `measured=body:transport:rtt_ms,...`, or the strict-venue `district` + `venue`.

use std::fmt;
use std::str::FromStr;

use hydra_core::Transport;
use serde::Deserialize;
use utoipa::IntoParams;

/// Most ids in `unreachable` and samples in `measured`.
pub const MAX_ELIGIBLE_LIST: usize = 256;

/// A connect time a head measured to one body, reported with its next request. Written
/// `body_id:transport:rtt_ms` (transport `lan` or `wireguard`) in the query and in the head's
/// state file alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The body probed.
    pub body_id: String,
    /// Which of its addresses answered.
    pub transport: Transport,
    /// TCP connect time in milliseconds.
    pub rtt_ms: u32,
}

impl fmt::Display for Measurement {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}:{}:{}",
            self.body_id,
            self.transport.as_str(),
            self.rtt_ms
        )
    }
}

impl FromStr for Measurement {
    type Err = String;

    /// Parses `body_id:transport:rtt_ms`; the error says what is wrong with the entry.
    fn from_str(item: &str) -> Result<Measurement, String> {
        let mut parts = item.split(':');
        let (Some(body_id), Some(transport), Some(rtt_ms), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "measured entry {item:?} is not body_id:transport:rtt_ms"
            ));
        };
        if body_id.is_empty() {
            return Err(format!("measured entry {item:?} has no body_id"));
        }
        let transport: Transport = transport
            .parse()
            .map_err(|error| format!("measured entry {item:?}: transport: {error}"))?;
        let rtt_ms: u32 = rtt_ms
            .parse()
            .map_err(|_| format!("measured entry {item:?}: rtt_ms must be a whole number of ms"))?;
        Ok(Measurement {
            body_id: body_id.to_owned(),
            transport,
            rtt_ms,
        })
    }
}

/// Which bodies to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EligibleQuery {
    /// For a head: quickroute, else the cross-venue fallback.
    Head {
        /// The asking head's node id.
        head_id: String,
        /// Bodies the head could not reach on either address; left out of this one answer.
        unreachable: Vec<String>,
        /// Connect times to report.
        measured: Vec<Measurement>,
    },
    /// The strict-venue behaviour of old clients: exactly this district and venue.
    StrictVenue {
        /// District.
        district: String,
        /// Venue.
        venue: String,
    },
}

/// The query parameters as they arrive, before [`EligibleQuery::from_params`] checks them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EligibleParams {
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
    /// With `head_id`: add the trace of the selection (`explain`: every node of the head's
    /// district, kept with its rank keys or left out with the reason).
    pub explain: Option<bool>,
}

/// A query that does not make sense; `field` names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter at fault.
    pub field: &'static str,
    /// What is wrong, naming the parameter.
    pub message: String,
}

impl QueryError {
    fn new(field: &'static str, message: impl Into<String>) -> QueryError {
        QueryError {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for QueryError {}

impl EligibleQuery {
    /// The question of head `head_id`, with nothing to report.
    pub fn for_head(head_id: impl Into<String>) -> EligibleQuery {
        EligibleQuery::Head {
            head_id: head_id.into(),
            unreachable: Vec::new(),
            measured: Vec::new(),
        }
    }

    /// The strict-venue question.
    pub fn strict_venue(district: impl Into<String>, venue: impl Into<String>) -> EligibleQuery {
        EligibleQuery::StrictVenue {
            district: district.into(),
            venue: venue.into(),
        }
    }

    /// Query parameters, as [`EligibleQuery::from_params`] reads them (empty lists are left
    /// out).
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        match self {
            EligibleQuery::Head {
                head_id,
                unreachable,
                measured,
            } => {
                let mut pairs = vec![("head_id", head_id.clone())];
                if !unreachable.is_empty() {
                    pairs.push(("unreachable", unreachable.join(",")));
                }
                if !measured.is_empty() {
                    let encoded: Vec<String> = measured.iter().map(ToString::to_string).collect();
                    pairs.push(("measured", encoded.join(",")));
                }
                pairs
            }
            EligibleQuery::StrictVenue { district, venue } => {
                vec![("district", district.clone()), ("venue", venue.clone())]
            }
        }
    }

    /// Checks the parameters' shape: `head_id` (with optional `unreachable` and `measured`) or
    /// both `district` and `venue`, lists of at most [`MAX_ELIGIBLE_LIST`] entries, every
    /// `measured` entry well formed. Whether the ids exist is the server's business.
    pub fn from_params(params: EligibleParams) -> Result<EligibleQuery, QueryError> {
        let Some(head_id) = params.head_id else {
            if params.unreachable.is_some() {
                return Err(QueryError::new("unreachable", "unreachable needs head_id"));
            }
            if params.measured.is_some() {
                return Err(QueryError::new("measured", "measured needs head_id"));
            }
            if params.explain.is_some() {
                return Err(QueryError::new("explain", "explain needs head_id"));
            }
            let (Some(district), Some(venue)) = (params.district, params.venue) else {
                return Err(QueryError::new(
                    "head_id",
                    "give head_id, or both district and venue",
                ));
            };
            return Ok(EligibleQuery::StrictVenue { district, venue });
        };
        if params.district.is_some() || params.venue.is_some() {
            return Err(QueryError::new(
                "head_id",
                "give either head_id or district and venue, not both",
            ));
        }
        let unreachable = match &params.unreachable {
            Some(text) => split_list("unreachable", text)?,
            None => Vec::new(),
        };
        let measured = match &params.measured {
            Some(text) => split_list("measured", text)?
                .iter()
                .map(|item| {
                    item.parse::<Measurement>()
                        .map_err(|message| QueryError::new("measured", message))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(EligibleQuery::Head {
            head_id,
            unreachable,
            measured,
        })
    }
}

/// Splits a comma-separated list, dropping empty entries; refuses more than
/// [`MAX_ELIGIBLE_LIST`].
fn split_list(field: &'static str, text: &str) -> Result<Vec<String>, QueryError> {
    let items: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    if items.len() > MAX_ELIGIBLE_LIST {
        return Err(QueryError::new(
            field,
            format!("{field} names more than {MAX_ELIGIBLE_LIST} entries"),
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params_of(pairs: &[(&'static str, String)]) -> EligibleParams {
        let mut params = EligibleParams::default();
        for (name, value) in pairs {
            let slot = match *name {
                "head_id" => &mut params.head_id,
                "district" => &mut params.district,
                "venue" => &mut params.venue,
                "unreachable" => &mut params.unreachable,
                "measured" => &mut params.measured,
                other => panic!("unexpected parameter {other}"),
            };
            *slot = Some(value.clone());
        }
        params
    }

    fn render(query: &EligibleQuery) -> String {
        query
            .query_pairs()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn every_shape() -> Vec<EligibleQuery> {
        vec![
            EligibleQuery::for_head("head-1"),
            EligibleQuery::Head {
                head_id: "head-1".into(),
                unreachable: vec!["body-a".into(), "body-b".into()],
                measured: vec![
                    Measurement {
                        body_id: "body-c".into(),
                        transport: Transport::Lan,
                        rtt_ms: 3,
                    },
                    Measurement {
                        body_id: "body-d".into(),
                        transport: Transport::Wireguard,
                        rtt_ms: 41,
                    },
                ],
            },
            EligibleQuery::strict_venue("bxl1", "rupelmonde"),
        ]
    }

    #[test]
    fn encodes_every_shape_of_question() {
        let rendered: Vec<String> = every_shape().iter().map(render).collect();
        expect_test::expect![[r#"
            head_id=head-1
            head_id=head-1&unreachable=body-a,body-b&measured=body-c:lan:3,body-d:wireguard:41
            district=bxl1&venue=rupelmonde"#]]
        .assert_eq(&rendered.join("\n"));
    }

    #[test]
    fn every_shape_survives_a_round_trip() {
        for query in every_shape() {
            let decoded = EligibleQuery::from_params(params_of(&query.query_pairs()));
            assert_eq!(decoded, Ok(query));
        }
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        let cases: Vec<(&str, EligibleParams)> = vec![
            ("nothing", EligibleParams::default()),
            ("venue only", params_of(&[("venue", "rupelmonde".into())])),
            (
                "both shapes",
                params_of(&[("head_id", "h".into()), ("district", "bxl1".into())]),
            ),
            (
                "unreachable alone",
                params_of(&[("unreachable", "b".into())]),
            ),
            (
                "measured alone",
                params_of(&[("measured", "b:lan:1".into())]),
            ),
            (
                "bad transport",
                params_of(&[("head_id", "h".into()), ("measured", "b1:udp:3".into())]),
            ),
            (
                "missing part",
                params_of(&[("head_id", "h".into()), ("measured", "b1:lan".into())]),
            ),
            (
                "extra part",
                params_of(&[("head_id", "h".into()), ("measured", "b1:lan:3:4".into())]),
            ),
            (
                "negative rtt",
                params_of(&[("head_id", "h".into()), ("measured", "b1:lan:-1".into())]),
            ),
            (
                "too many",
                params_of(&[
                    ("head_id", "h".into()),
                    ("unreachable", vec!["b"; MAX_ELIGIBLE_LIST + 1].join(",")),
                ]),
            ),
        ];
        let lines: Vec<String> = cases
            .into_iter()
            .map(|(label, params)| match EligibleQuery::from_params(params) {
                Ok(query) => format!("{label}: accepted {query:?}"),
                Err(error) => format!("{label}: {}: {}", error.field, error.message),
            })
            .collect();
        expect_test::expect![[r#"
            nothing: head_id: give head_id, or both district and venue
            venue only: head_id: give head_id, or both district and venue
            both shapes: head_id: give either head_id or district and venue, not both
            unreachable alone: unreachable: unreachable needs head_id
            measured alone: measured: measured needs head_id
            bad transport: measured: measured entry "b1:udp:3": transport: unknown value "udp", expected one of: lan, wireguard
            missing part: measured: measured entry "b1:lan" is not body_id:transport:rtt_ms
            extra part: measured: measured entry "b1:lan:3:4" is not body_id:transport:rtt_ms
            negative rtt: measured: measured entry "b1:lan:-1": rtt_ms must be a whole number of ms
            too many: unreachable: unreachable names more than 256 entries"#]]
        .assert_eq(&lines.join("\n"));
    }
}
