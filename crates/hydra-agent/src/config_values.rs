//! The value shapes the field's config files use, as serde helpers shared by the agent's and the
//! server's configuration: durations with units (`60s`, `10m`, `7d`) or plain seconds, a listen
//! address with its host omitted (`":47990"`), and one URL or a list of them.

use std::net::SocketAddr;

use serde::de::{self, Deserializer, Visitor};

/// Seconds from a number (`60`, `0.5`) or a duration with units (`"60s"`, `"1m 30s"`, `"7d"`,
/// `"500ms"`); never negative or infinite. The one duration type of every config file.
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct Seconds;
    impl Visitor<'_> for Seconds {
        type Value = f64;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a duration: seconds, or a number with a unit (60s, 10m, 7d)")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(E::custom(format!(
                    "{value} is not a duration (seconds must be 0 or more)"
                )))
            }
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            self.visit_f64(value as f64)
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<f64, E> {
            parse_seconds(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Seconds)
}

/// `value` as seconds: a plain number, or a duration with units (humantime's words).
pub fn parse_seconds(value: &str) -> Result<f64, String> {
    let trimmed = value.trim();
    if let Ok(number) = trimmed.parse::<f64>()
        && number.is_finite()
        && number >= 0.0
    {
        return Ok(number);
    }
    humantime::parse_duration(trimmed)
        .map(|duration| duration.as_secs_f64())
        .map_err(|_| {
            format!("{value:?} is not a duration (seconds, or a number with a unit: 60s, 10m, 7d)")
        })
}

/// A listen address; `":47990"` (host omitted, as in the field's files) listens on every IPv4
/// interface, `0.0.0.0:47990`.
pub fn listen_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text: String = serde::Deserialize::deserialize(deserializer)?;
    parse_listen(&text).map_err(de::Error::custom)
}

/// `text` as a listen address (`host:port`, `[v6]:port`, or `:port` for every interface).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("{text:?} is not a listen address (host:port, or :port for all)"))
}

/// One string or a list of strings (`controller.url: https://relay.example` or a list).
pub fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match serde::Deserialize::deserialize(deserializer) {
        Ok(OneOrMany::One(one)) => Ok(vec![one]),
        Ok(OneOrMany::Many(many)) => Ok(many),
        Err(_) => Err(de::Error::custom("expected a URL or a list of URLs")),
    }
}

/// The base URL of a daemon reached at `domain` (the field's `server.domain`): `https` with
/// TLS, else `http`, the port written only when it is not the scheme's own.
pub fn domain_url(domain: &str, tls: bool, port: u16) -> String {
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    if port == default_port || port == 0 {
        format!("{scheme}://{domain}")
    } else {
        format!("{scheme}://{domain}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        let cases = [
            "60", "0.5", "60s", "1m 30s", "10m", "7d", "500ms", "soon", "-1", "NaN",
        ];
        let parsed: Vec<String> = cases
            .iter()
            .map(|case| match parse_seconds(case) {
                Ok(seconds) => format!("{case} -> {seconds}"),
                Err(error) => format!("{case} -> error: {error}"),
            })
            .collect();
        expect_test::expect![[r#"
            [
                "60 -> 60",
                "0.5 -> 0.5",
                "60s -> 60",
                "1m 30s -> 90",
                "10m -> 600",
                "7d -> 604800",
                "500ms -> 0.5",
                "soon -> error: \"soon\" is not a duration (seconds, or a number with a unit: 60s, 10m, 7d)",
                "-1 -> error: \"-1\" is not a duration (seconds, or a number with a unit: 60s, 10m, 7d)",
                "NaN -> error: \"NaN\" is not a duration (seconds, or a number with a unit: 60s, 10m, 7d)",
            ]
        "#]]
        .assert_debug_eq(&parsed);
    }

    #[test]
    fn a_listen_address_may_omit_its_host() {
        let parsed: Vec<String> = [":47990", "127.0.0.1:7071", "[::1]:80", "47990", ":x"]
            .iter()
            .map(|case| match parse_listen(case) {
                Ok(address) => format!("{case} -> {address}"),
                Err(error) => format!("{case} -> error: {error}"),
            })
            .collect();
        expect_test::expect![[r#"
            [
                ":47990 -> 0.0.0.0:47990",
                "127.0.0.1:7071 -> 127.0.0.1:7071",
                "[::1]:80 -> [::1]:80",
                "47990 -> error: \"47990\" is not a listen address (host:port, or :port for all)",
                ":x -> error: \":x\" is not a listen address (host:port, or :port for all)",
            ]
        "#]]
        .assert_debug_eq(&parsed);
    }
}
