//! The accept loop: what a connection may hold before any handler runs.
//!
//! `axum::serve` sets no header-read timeout and no connection limit, so a
//! client could open sockets and send nothing, or trickle its headers, and
//! keep them forever. This loop serves each connection with hyper's HTTP/1
//! server itself, with the `[connections]` settings:
//!
//! - **Connection limit.** A semaphore of `max_connections` permits. A
//!   connection takes one when accepted and holds it until it ends; a
//!   WebSocket carries it on past the upgrade (as [`ConnPermit`] in the
//!   request's extensions, moved into the stream's task). With none left, the
//!   connection is answered `503 too_many_connections` with `Connection:
//!   close` and closed at once, without reading the request, and counted
//!   (`lanyard_limited_total{limit="connections"}`).
//! - **Header-read timeout.** hyper closes a connection whose request head
//!   is not complete `header_timeout_secs` after it opened, or after its
//!   previous response (an idle keep-alive connection is closed the same
//!   way). Counted as `limit="header_timeout"`.
//! - **Body timeout.** Each request body is wrapped in [`TimedBody`]: the
//!   whole body must arrive within `body_timeout_secs` of the head, or reading
//!   it fails, the handler answers 400, and hyper closes the connection
//!   because the body was not read to its end. Counted as
//!   `limit="body_timeout"`.
//!
//! - **TLS** (when `[tls]` is set, see `crate::tls`): the handshake must
//!   end within the header timeout too, or the connection is closed and
//!   counted as `header_timeout`; a connection over the limit gets its
//!   handshake (a second at most) and then the same 503.
//!
//! Shutdown: on the signal the loop stops accepting, tells every connection
//! to finish its request in flight and close, and waits for them. Upgraded
//! WebSockets are not waited for (they were never part of hyper's
//! connection), as with `axum::serve`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ConnectionsSection;
use crate::metrics::{self, Limit, Limited};

/// A connection's share of `max_connections`, in each of its requests'
/// extensions. The stream handler keeps a clone for the life of the
/// WebSocket, so an upgraded connection still counts.
#[derive(Clone)]
pub(crate) struct ConnPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The answer to a connection over the limit: whole, small, and sent
/// before reading anything.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 109\r\n\
\r\n\
{\"code\":\"too_many_connections\",\"message\":\"the server has its maximum of connections open; retry in a second\"}";

/// Serves `app` on `listener`, over TLS when `tls` is given, until `stop`
/// is notified, then waits for the connections being served to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: ConnectionsSection,
    stop: Arc<Notify>,
    tls: Option<TlsAcceptor>,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    // Each connection holds a receiver: the sender's `closed()` is "all done".
    let (stop_tx, stop_rx) = watch::channel(());
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let tcp = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        // Acks and replies are small writes that must leave at once; with
        // Nagle's algorithm each would wait for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, permit, cfg, stop_rx) =
                    (app.clone(), ConnPermit(Arc::new(permit)), cfg.clone(), stop_rx.clone());
                match tls.clone() {
                    None => {
                        tokio::spawn(connection(tcp, app, permit, cfg, stop_rx));
                    }
                    Some(tls) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(cfg.header_timeout(), tls.accept(tcp)).await {
                                Ok(Ok(stream)) => connection(stream, app, permit, cfg, stop_rx).await,
                                // A failed handshake (a plain-HTTP client, a
                                // port scan) has no one to answer.
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => metrics::emit(Limited { limit: Limit::HeaderTimeout }),
                            }
                        });
                    }
                }
            }
            Err(_) => {
                metrics::emit(Limited { limit: Limit::Connections });
                match tls.clone() {
                    None => {
                        tokio::spawn(refuse(tcp));
                    }
                    Some(tls) => {
                        tokio::spawn(async move {
                            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), tls.accept(tcp)).await
                            {
                                refuse(stream).await;
                            }
                        });
                    }
                }
            }
        }
    }
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
}

/// An accept that failed. Errors of one connection (it was reset before we
/// took it) are nothing; others (out of file descriptors) pass with time, so
/// the loop waits a little rather than spin.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection; raise `ulimit -n` or lower [connections] max_connections");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one connection with hyper's HTTP/1 server, upgrades allowed.
async fn connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    tcp: I,
    app: Router,
    permit: ConnPermit,
    cfg: ConnectionsSection,
    mut stop: watch::Receiver<()>,
) {
    let body_timeout = cfg.body_timeout();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|body| Body::new(TimedBody::new(body, body_timeout)));
        req.extensions_mut().insert(permit.clone());
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(cfg.header_timeout());
    let conn = builder.serve_connection(TokioIo::new(tcp), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result
        && e.is_timeout()
    {
        metrics::emit(Limited { limit: Limit::HeaderTimeout });
    }
}

/// Answers a connection over the limit and closes it. The request is
/// drained briefly after the answer, so the close is a FIN the client reads
/// the answer before, not a reset that may discard it.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(mut tcp: I) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(REFUSAL).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A request body that must arrive in full by a deadline, set when the
/// request's head was read. Past it, the next read fails with
/// [`BodyTimeout`].
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// The deadline passed and was counted; later reads fail the same way.
    expired: bool,
}

/// The error a late body fails with; handlers report it in their 400.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive within {0:?} ([connections] body_timeout_secs); send it faster or in smaller parts"
)]
pub(crate) struct BodyTimeout(Duration);

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout, expired: false }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.expired || self.deadline.as_mut().poll(cx).is_ready() {
            if !self.expired {
                self.expired = true;
                metrics::emit(Limited { limit: Limit::BodyTimeout });
            }
            return Poll::Ready(Some(Err(BodyTimeout(self.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
