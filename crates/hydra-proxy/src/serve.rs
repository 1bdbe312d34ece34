//! Serving an axum router on a listener with the limits `axum::serve` lacks: a header read
//! timeout, an idle (keep-alive) timeout, a cap on open connections and a shutdown deadline.
//! Used by the control plane and the agent alike (issue 7 item 6).
//!
//! Each connection is HTTP/1.1 (hyper's `http1` with upgrades, so WebSockets work) with a
//! watchdog beside it: before the first request and from the first byte of a later one, the
//! request head must arrive within `header_read_timeout`; between requests the connection may
//! sit idle for `idle_timeout`; while a request is being answered, or once upgraded, neither
//! applies. A connection holds a permit of the cap for as long as its socket lives (an upgraded
//! WebSocket included); past the cap new connections wait in the kernel's backlog, unaccepted,
//! while the admitted ones keep working.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSettings {
    /// A request head must be complete this long after the connection opened (first request)
    /// or after its first byte arrived (later requests).
    pub header_read_timeout: Duration,
    /// How long a connection may wait between requests.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// After shutdown starts, how long open connections may finish before they are dropped.
    pub shutdown_timeout: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// open connections finish for at most `settings.shutdown_timeout` and drops the rest.
/// `component` is the log prefix without brackets (`controller`, `worker`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: CancellationToken,
    component: &'static str,
) -> std::io::Result<()> {
    serve_tls(listener, router, settings, shutdown, component, None).await
}

/// [`serve`], over TLS when `tls` is given (`crate::tls::acceptor`): each connection's
/// handshake must finish within `settings.header_read_timeout`, like a request head.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: CancellationToken,
    component: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let max_connections = settings.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut at_cap = false;
    loop {
        while connections.try_join_next().is_some() {}
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                at_cap = false;
                permit
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        open = max_connections,
                        max = max_connections,
                        "[{component}] connection cap reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let (socket, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(%error, "[{component}] cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        metrics::gauge!("hydra_http_connections_open", "component" => component).increment(1.0);
        connections.spawn(run_connection(
            socket,
            permit,
            router.clone(),
            settings,
            shutdown.clone(),
            component,
            tls.clone(),
        ));
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    let open = connections.len();
    let finished = tokio::time::timeout(settings.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            of = open,
            timeout_s = settings.shutdown_timeout.as_secs_f64(),
            "[{component}] shutdown deadline passed; dropping the open connections"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// Serves one connection (after its TLS handshake, with `tls`) until it ends, its watchdog
/// fires, or shutdown drops it.
async fn run_connection(
    socket: TcpStream,
    permit: OwnedSemaphorePermit,
    router: Router,
    settings: ServeSettings,
    shutdown: CancellationToken,
    component: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let activity = Arc::new(Activity::new());
    let tracked = Tracked {
        socket,
        activity: Arc::clone(&activity),
        _permit: Closing {
            _permit: permit,
            component,
        },
    };
    let Some(acceptor) = tls else {
        let io = TokioIo::new(tracked);
        return drive(io, activity, router, settings, shutdown, component).await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(settings.header_read_timeout, acceptor.accept(tracked)) => handshake,
        _ = shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            drive(
                TokioIo::new(stream),
                activity,
                router,
                settings,
                shutdown,
                component,
            )
            .await
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "[{component}] TLS handshake failed");
        }
        Err(_) => tracing::debug!("[{component}] TLS handshake timed out"),
    }
}

/// Runs HTTP/1.1 (with upgrades) on `io` beside its watchdog.
async fn drive<I>(
    io: I,
    activity: Arc<Activity>,
    router: Router,
    settings: ServeSettings,
    shutdown: CancellationToken,
    component: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = Requests {
        router: hyper_util::service::TowerToHyperService::new(router),
        activity: Arc::clone(&activity),
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    let watchdog = activity.watchdog(settings);
    tokio::pin!(watchdog);
    let mut draining = false;
    loop {
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "[{component}] connection ended with an error");
                }
                return;
            }
            reason = watchdog.as_mut() => {
                tracing::debug!(reason, "[{component}] closing a connection");
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Releases the cap's permit and lowers the open-connections gauge when the socket is dropped
/// (for an upgraded connection, when the WebSocket ends).
struct Closing {
    _permit: OwnedSemaphorePermit,
    component: &'static str,
}

impl Drop for Closing {
    fn drop(&mut self) {
        metrics::gauge!("hydra_http_connections_open", "component" => self.component)
            .decrement(1.0);
    }
}

/// Where one connection is in its request cycle, for its watchdog.
struct Activity {
    state: Mutex<Phase>,
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of a request head since this instant.
    Waiting { since: Instant, first: bool },
    /// A request head started arriving at this instant.
    ReadingHead { since: Instant },
    /// Requests being answered (the count), or the connection was upgraded.
    Busy(usize),
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                first: true,
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes arrived: while waiting between requests, they start a request head.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if let Phase::Waiting { first: false, .. } = *phase {
            *phase = Phase::ReadingHead {
                since: Instant::now(),
            };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request head was parsed and handed to the router.
    fn request_started(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(count) => Phase::Busy(count + 1),
            _ => Phase::Busy(1),
        };
        drop(phase);
        self.changed.notify_one();
    }

    /// A response was written to the end (or dropped).
    fn request_finished(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(count) if count > 1 => Phase::Busy(count - 1),
            _ => Phase::Waiting {
                since: Instant::now(),
                first: false,
            },
        };
        drop(phase);
        self.changed.notify_one();
    }

    /// When the connection must be closed as things stand, and why; `None` while busy.
    fn deadline(&self, settings: &ServeSettings) -> Option<(Instant, &'static str)> {
        match *self.phase() {
            Phase::Waiting { since, first: true } | Phase::ReadingHead { since } => Some((
                since + settings.header_read_timeout,
                "request head not received in time",
            )),
            Phase::Waiting {
                since,
                first: false,
            } => Some((since + settings.idle_timeout, "idle timeout")),
            Phase::Busy(_) => None,
        }
    }

    /// Resolves with the reason once a deadline passes; waits out busy phases.
    async fn watchdog(self: Arc<Self>, settings: ServeSettings) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the phase, so no change between the two is missed.
            changed.as_mut().enable();
            match self.deadline(&settings) {
                None => changed.await,
                Some((deadline, reason)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if let Some((now_deadline, _)) = self.deadline(&settings)
                                && now_deadline <= Instant::now()
                            {
                                return reason;
                            }
                        }
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// The socket, noting reads for the watchdog and holding the cap's permit.
struct Tracked {
    socket: TcpStream,
    activity: Arc<Activity>,
    _permit: Closing,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        let outcome = Pin::new(&mut self.socket).poll_read(context, buffer);
        if matches!(outcome, Poll::Ready(Ok(()))) && buffer.filled().len() > before {
            self.activity.bytes_read();
        }
        outcome
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(context, data)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

/// The router as a hyper service that tells the watchdog when a request starts and ends.
#[derive(Clone)]
struct Requests {
    router: hyper_util::service::TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type Answer = hyper::Response<Answered<axum::body::Body>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Requests {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.request_started();
        let guard = InFlight(Arc::clone(&self.activity));
        let answer = hyper::service::Service::call(&self.router, request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Answered {
                body,
                _in_flight: guard,
            }))
        })
    }
}

/// Marks the end of a request when dropped: with its response body, once written.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Answered<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Activity, ServeSettings};

    const SETTINGS: ServeSettings = ServeSettings {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
        shutdown_timeout: Duration::from_secs(5),
    };

    /// Seconds from `start` to the deadline the watchdog would act on, and its reason.
    fn due(activity: &Activity, start: Instant) -> Option<(u64, &'static str)> {
        activity
            .deadline(&SETTINGS)
            .map(|(deadline, reason)| ((deadline - start).as_secs(), reason))
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_request_cycle() {
        let start = Instant::now();
        let activity = Activity::new();
        // A new connection must send its first head within the header timeout, bytes or not.
        assert_eq!(
            due(&activity, start),
            Some((10, "request head not received in time"))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.bytes_read();
        assert_eq!(
            due(&activity, start),
            Some((10, "request head not received in time"))
        );
        // Busy while a request is answered: no deadline.
        activity.request_started();
        assert_eq!(due(&activity, start), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(due(&activity, start), None);
        // Between requests: the idle timeout, from the end of the answer.
        activity.request_finished();
        assert_eq!(due(&activity, start), Some((163, "idle timeout")));
        // The first byte of the next head starts the header timeout.
        tokio::time::advance(Duration::from_secs(7)).await;
        activity.bytes_read();
        assert_eq!(
            due(&activity, start),
            Some((120, "request head not received in time"))
        );
        activity.request_started();
        activity.request_started();
        activity.request_finished();
        assert_eq!(due(&activity, start), None, "one request still in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_only_after_a_deadline_that_still_holds() {
        let activity = Arc::new(Activity::new());
        let watchdog = tokio::spawn(Arc::clone(&activity).watchdog(SETTINGS));
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.request_started();
        tokio::time::advance(Duration::from_secs(30)).await;
        tokio::task::yield_now().await;
        assert!(!watchdog.is_finished(), "a busy connection was closed");
        activity.request_finished();
        tokio::time::advance(Duration::from_secs(59)).await;
        tokio::task::yield_now().await;
        assert!(!watchdog.is_finished(), "closed before the idle timeout");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(watchdog.await.unwrap(), "idle timeout");
    }
}
