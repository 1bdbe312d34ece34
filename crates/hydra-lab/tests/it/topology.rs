//! The lab builds hosts and links inside its own namespaces, a drop rule makes a connect time
//! out, a missing listener refuses, and the stand-in client holds a stream and notices a drop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use hydra_lab::standin::{EXIT_CONNECT, EXIT_DROPPED};
use hydra_lab::{Lab, run_isolated};

fn client_args(ip: Ipv4Addr, hold_ms: u64, record: &Path) -> Vec<String> {
    vec![
        "--connect".into(),
        format!("{ip}:47990"),
        "--hold-ms".into(),
        hold_ms.to_string(),
        "--connect-timeout-ms".into(),
        "1000".into(),
        "--record".into(),
        record.display().to_string(),
    ]
}

#[test]
fn lan_stream_holds_drops_time_out_and_missing_listeners_refuse() {
    run_isolated(|mut lab: Lab| async move {
        let lan = lab.network("lan1", 24)?;
        let body = lab.host("body")?;
        let head = lab.host("head")?;
        let body_ip = Ipv4Addr::new(198, 18, 1, 10);
        let head_ip = Ipv4Addr::new(198, 18, 1, 200);
        lab.attach(&body, &lan, "lan", body_ip)?;
        lab.attach(&head, &lan, "lan", head_ip)?;
        let client = lab.binary("hydra-lab-stream-client");
        let record = lab.dir().join("client.record");

        // Nothing listens yet: refused at once.
        let mut refused = lab.spawn(
            &head,
            "refused",
            &client,
            &client_args(body_ip, 200, &record),
        )?;
        let status = refused
            .wait_for_exit(Duration::from_secs(5))
            .await?
            .expect("client exits");
        assert_eq!(status.code(), Some(EXIT_CONNECT));
        assert!(
            refused.stdout_text().contains("Connection refused"),
            "{}",
            refused.stdout_text()
        );

        let server = lab.spawn(
            &body,
            "server",
            &lab.binary("hydra-lab-stream-server"),
            &[
                "--listen".into(),
                format!("{body_ip}:47990"),
                "--body-id".into(),
                "b1".into(),
            ],
        )?;
        hydra_lab::poll::wait_until("server listening", Duration::from_secs(5), || {
            Ok(server.stdout_text().contains("listening").then_some(()))
        })
        .await?;

        // A stream holds for its whole hold time and ends with 0.
        let mut held = lab.spawn(
            &head,
            "held",
            &client,
            &client_args(body_ip, 1_000, &record),
        )?;
        let status = held
            .wait_for_exit(Duration::from_secs(10))
            .await?
            .expect("client exits");
        assert!(status.success(), "{}", held.stdout_text());
        assert!(
            held.stdout_text()
                .contains("connected 198.18.1.10:47990 body=b1")
        );

        // A drop rule on the body: the connect times out (no reset), after about 1 s.
        lab.drop_tcp_from(&body, &[head_ip], 47990)?;
        assert!(lab.ruleset(&body)?.contains("198.18.1.200"));
        let mut dropped = lab.spawn(
            &head,
            "dropped",
            &client,
            &client_args(body_ip, 200, &record),
        )?;
        let status = dropped
            .wait_for_exit(Duration::from_secs(10))
            .await?
            .expect("client exits");
        assert_eq!(status.code(), Some(EXIT_CONNECT));
        assert!(
            dropped.stdout_text().contains("timed out"),
            "{}",
            dropped.stdout_text()
        );
        lab.clear_drops(&body)?;

        // A stream cut by a drop rule mid-way is noticed by the client.
        let mut cut = lab.spawn(
            &head,
            "cut",
            &client,
            &client_args(body_ip, 20_000, &record),
        )?;
        hydra_lab::poll::wait_until("stream connected", Duration::from_secs(5), || {
            Ok(cut.stdout_text().contains("connected").then_some(()))
        })
        .await?;
        lab.drop_tcp_from(&body, &[head_ip], 47990)?;
        let status = cut
            .wait_for_exit(Duration::from_secs(10))
            .await?
            .expect("client exits");
        assert_eq!(status.code(), Some(EXIT_DROPPED), "{}", cut.stdout_text());
        Ok(())
    });
}
