//! The question a head (or an operator) asks `GET /api/v1/bodies/eligible`.

use hydra_core::Transport;

/// A connect time the head measured to one body, reported with its next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// The body probed.
    pub body_id: String,
    /// Which of its addresses answered.
    pub transport: Transport,
    /// TCP connect time in milliseconds.
    pub rtt_ms: u32,
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

    /// Query parameters, as the server reads them: `unreachable=id1,id2` and
    /// `measured=body:transport:rtt_ms,...` (empty lists are left out).
    pub(crate) fn query_pairs(&self) -> Vec<(&'static str, String)> {
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
                    let encoded: Vec<String> = measured
                        .iter()
                        .map(|measurement| {
                            format!(
                                "{}:{}:{}",
                                measurement.body_id,
                                measurement.transport.as_str(),
                                measurement.rtt_ms
                            )
                        })
                        .collect();
                    pairs.push(("measured", encoded.join(",")));
                }
                pairs
            }
            EligibleQuery::StrictVenue { district, venue } => {
                vec![("district", district.clone()), ("venue", venue.clone())]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(query: &EligibleQuery) -> String {
        query
            .query_pairs()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn encodes_every_shape_of_question() {
        let cases = [
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
        ];
        let rendered: Vec<String> = cases.iter().map(render).collect();
        expect_test::expect![[r#"
            head_id=head-1
            head_id=head-1&unreachable=body-a,body-b&measured=body-c:lan:3,body-d:wireguard:41
            district=bxl1&venue=rupelmonde"#]]
        .assert_eq(&rendered.join("\n"));
    }
}
