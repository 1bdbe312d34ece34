//! Options shared by every command that talks to the server: the replicas, the token, `--json`,
//! and the SDK client built from them.

use std::time::Duration;

use anyhow::Context;
use hydra_client::{Client, ClientConfig, ClientError, RetryPolicy};

/// Where the control plane is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Base URL of a server replica; repeat the flag (or separate with commas) to name every
    /// replica: writes go to the master, reads to any replica that answers.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "HYDRA_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    pub servers: Vec<String>,
    /// Admin bearer token (a server started without one stores its generated token in
    /// <data-dir>/admin-token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HYDRA_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a table (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Timeout of each request, e.g. `10s`, `500ms` (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Attempts per read or idempotent write when replicas fail (waits of up to 1 s, 2 s, 4 s...
    /// between them); an enrolment is never repeated once it may have reached the server.
    #[arg(long, value_name = "N", default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(1..=20))]
    pub attempts: u32,
}

impl ClientArgs {
    /// The SDK client over every `--server`, with `--token`, `--timeout` and `--attempts`.
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut config = ClientConfig::new(self.servers.iter().cloned())
            .with_retry(RetryPolicy::attempts(self.attempts));
        config.token = self.token.clone().filter(|token| !token.trim().is_empty());
        config.request_timeout = self.timeout;
        config.connect_timeout = self.timeout.min(Duration::from_secs(2));
        Client::new(config).context("--server")
    }

    /// Wraps an SDK error with what was being done, and a hint for a missing or wrong token.
    pub fn explain(&self, error: ClientError, doing: impl std::fmt::Display) -> anyhow::Error {
        let token = self
            .token
            .as_deref()
            .filter(|token| !token.trim().is_empty());
        let hint = match (&error, token) {
            (ClientError::Unauthorized(_), None) => {
                "; give the admin token with --token or HYDRA_TOKEN (a server that generated \
                 one stores it in <data-dir>/admin-token)"
            }
            (ClientError::Unauthorized(_), Some(_)) => {
                "; check --token / HYDRA_TOKEN against the server's admin token"
            }
            _ => "",
        };
        anyhow::anyhow!("{doing}: {error}{hint}")
    }
}

/// `10` (seconds), `10s`, `500ms`, `2m`: a positive duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let duration = if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
        trimmed
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|error| error.to_string())?
    } else {
        humantime::parse_duration(trimmed).map_err(|error| {
            format!("{error} (expected e.g. 10s, 500ms, 2m or a number of seconds)")
        })?
    };
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_or_with_a_unit() {
        let cases = ["10", "10s", "500ms", "2m", "0", "ten", ""];
        let parsed: Vec<String> = cases
            .iter()
            .map(|case| format!("{case:?} -> {:?}", parse_duration(case)))
            .collect();
        expect_test::expect![[r#"
            "10" -> Ok(10s)
            "10s" -> Ok(10s)
            "500ms" -> Ok(500ms)
            "2m" -> Ok(120s)
            "0" -> Err("must be more than zero")
            "ten" -> Err("expected number at 0 (expected e.g. 10s, 500ms, 2m or a number of seconds)")
            "" -> Err("value was empty (expected e.g. 10s, 500ms, 2m or a number of seconds)")"#]]
        .assert_eq(&parsed.join("\n"));
    }
}
