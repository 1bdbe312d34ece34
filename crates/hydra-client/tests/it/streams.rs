//! Streamed answers (a capture's tail): no overall timeout, an idle one. A real axum server on
//! loopback streams NDJSON chunks slower than the client's request timeout (they keep flowing),
//! or stalls after its first chunk (the read ends with a clear error after the idle timeout).

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::get;
use hydra_api::CheckMaster;
use hydra_client::{Client, ClientConfig, RetryPolicy};
use tokio::net::TcpListener;

/// Chunks of the slow stream, one every [`SLOW_GAP`]: 2.4 s in all, well past the 1 s request
/// timeout.
const SLOW_CHUNKS: u64 = 8;
const SLOW_GAP: Duration = Duration::from_millis(300);

/// A master whose `captures/slow/tail` sends [`SLOW_CHUNKS`] lines [`SLOW_GAP`] apart and whose
/// `captures/stalled/tail` sends one line, then nothing (the connection stays open).
async fn streaming_master() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = Router::new()
        .route(
            "/api/v1/check-master",
            get(|| async {
                axum::Json(CheckMaster {
                    is_master: true,
                    master_url: None,
                    master_id: None,
                    term: None,
                    cluster_id: None,
                    replica_id: None,
                })
            }),
        )
        .route(
            "/api/v1/captures/slow/tail",
            get(|| async {
                let lines = futures::stream::unfold(1_u64, |seq| async move {
                    if seq > SLOW_CHUNKS {
                        return None;
                    }
                    tokio::time::sleep(SLOW_GAP).await;
                    let line = Bytes::from(format!("{{\"seq\":{seq}}}\n"));
                    Some((Ok::<Bytes, std::convert::Infallible>(line), seq + 1))
                });
                Body::from_stream(lines)
            }),
        )
        .route(
            "/api/v1/captures/stalled/tail",
            get(|| async {
                let first = futures::stream::once(async {
                    Ok::<Bytes, std::convert::Infallible>(Bytes::from_static(b"{\"seq\":1}\n"))
                });
                Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A client whose plain calls time out after 1 s and whose streams may be silent 1 s.
fn impatient_client(url: &str) -> Client {
    let mut config = ClientConfig::new([url])
        .with_token("admin-token")
        .with_retry(RetryPolicy::attempts(1));
    config.request_timeout = Duration::from_secs(1);
    config.stream_idle_timeout = Duration::from_secs(1);
    Client::new(config).expect("client")
}

#[tokio::test]
async fn a_stream_slower_than_the_request_timeout_keeps_flowing_to_its_end() {
    let url = streaming_master().await;
    let client = impatient_client(&url);
    let mut tail = client.tail_capture("slow", None).await.expect("tail opens");
    let mut received = String::new();
    // Bounded: the server ends the stream after its last chunk.
    while let Some(chunk) = tail
        .next_chunk()
        .await
        .expect("no timeout while chunks come")
    {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let expected: String = (1..=SLOW_CHUNKS)
        .map(|seq| format!("{{\"seq\":{seq}}}\n"))
        .collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_a_clear_error_after_the_idle_timeout() {
    let url = streaming_master().await;
    let client = impatient_client(&url);
    let mut tail = client
        .tail_capture("stalled", None)
        .await
        .expect("tail opens");
    let first = tail.next_chunk().await.expect("first chunk");
    assert_eq!(first.as_deref(), Some(&b"{\"seq\":1}\n"[..]));
    // The test's own bound: the idle timeout (1 s) must end the read well before 20 s.
    let stalled = tokio::time::timeout(Duration::from_secs(20), tail.next_chunk())
        .await
        .expect("the idle timeout ends the read");
    let error = stalled.expect_err("a stalled stream is an error, not an end");
    let text = error.to_string();
    assert!(
        text.contains("the stream stalled: nothing received for 1s"),
        "{text}"
    );
    assert!(text.contains("/api/v1/captures/stalled/tail"), "{text}");
}
