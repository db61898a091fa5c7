//! The HTTP/1.1 accept loop.
//!
//! `axum::serve` offers no way to configure hyper's connection builder, and
//! without a header read timeout a client that opens a connection and sends
//! its headers slowly (or nothing at all) holds a socket and a task forever.
//! This loop serves each connection with hyper's HTTP/1 builder, a tokio
//! timer and `header_read_timeout`, and keeps axum::serve's graceful
//! shutdown: on cancellation it stops accepting, lets each connection finish
//! the request it is serving, and closes what is still open once the grace
//! period is over.
//!
//! Only HTTP/1.1 is served, as before (axum's `http2` feature is off). The
//! HTTP/1-or-2 `auto` builder is deliberately not used: its protocol sniffing
//! runs before hyper's header timer starts and has no timeout of its own, so
//! a client that connects and sends nothing would never be closed.

use std::io;
use std::pin::pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connection-level settings of [`run`].
#[derive(Clone)]
pub struct ServerOptions {
    /// Serve TLS with this (and only TLS: a plain HTTP request on the port
    /// fails its handshake), or plain HTTP when `None`.
    pub tls: Option<std::sync::Arc<super::tls::Tls>>,
    /// How long a client may take to send a request's headers. hyper also
    /// applies it to the wait for the next request on a kept-alive
    /// connection, so it bounds idle connections too.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight before it closes the
    /// connections still open.
    pub shutdown_grace: Duration,
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain.
///
/// Returns once every connection has ended: in-flight requests finished,
/// or the grace period ran out and the remaining connections were dropped
/// (which also drops the handlers they were running).
pub async fn run(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over.
    let force_close = CancellationToken::new();

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        // Responses are small and written whole: never hold one back for
        // Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        // Each request learns the address it came from (failed
        // authentications are counted per address).
        let app = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(app);
        let (http, shutdown, force_close) = (http.clone(), shutdown.clone(), force_close.clone());
        match &options.tls {
            None => {
                connections.spawn(serve(
                    TokioIo::new(stream),
                    http,
                    service,
                    shutdown,
                    force_close,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                // The handshake gets the header read timeout too: a client
                // that connects and stalls is closed either way.
                let handshake_timeout = options.header_read_timeout;
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                        () = force_close.cancelled() => return,
                    };
                    serve(TokioIo::new(stream), http, service, shutdown, force_close).await;
                });
            }
        }
    }

    // Refuse new connections from here on.
    drop(listener);
    connections.close();
    if tokio::time::timeout(options.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = options.shutdown_grace.as_secs(),
            open = connections.len(),
            "shutdown grace period over; closing remaining connections"
        );
        force_close.cancel();
        connections.wait().await;
    }
}

/// Serve one connection until it ends: on shutdown it finishes the request
/// in progress and closes (an idle connection closes at once); past the
/// grace period it is dropped.
async fn serve<I, S>(
    io: I,
    http: http1::Builder,
    service: S,
    shutdown: CancellationToken,
    force_close: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http.serve_connection(io, service);
    let mut conn = pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                // Header timeouts, idle keep-alive expiry and clients that
                // hang up are routine: not worth more than debug.
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = force_close.cancelled() => break,
        }
    }
}

/// Per-connection failures (the peer gave up before we accepted) are
/// ignored. Anything else, such as running out of file descriptors, would
/// fail again at once: pause instead of spinning, while the listen backlog
/// holds new connections.
async fn accept_failed(e: io::Error, shutdown: &CancellationToken) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1s");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
