//! `opscore delay-proxy`: a TCP proxy that holds every byte for a set time
//! in each direction, as a network between Ops-Core and its database would
//! (1 ms each way is a round trip of 2 ms more). It delays without limiting
//! throughput: bytes read are forwarded once their time is due, while more
//! are read meanwhile, so a pipelined stream is not slowed down by it.
//! Used by the latency scenario (`scripts/bench-replicas`,
//! docs/performance.md).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Settings of the delay proxy.
#[derive(Debug, Clone, Args)]
pub struct DelayProxyArgs {
    /// Address to listen on (loopback, port 0 for any free port; the
    /// address taken is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where to forward connections (`host:port`, e.g. PostgreSQL's).
    #[arg(long)]
    pub target: String,
    /// Delay added in each direction (e.g. 1ms, 500us).
    #[arg(long, default_value = "1ms", value_parser = super::parse_duration)]
    pub delay: Duration,
}

/// A running proxy; stops when dropped.
pub struct DelayProxy {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DelayProxy {
    /// Listen on `listen` and forward each connection to `target`, every
    /// byte `delay` late each way.
    pub async fn start(
        listen: SocketAddr,
        target: String,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else {
                    continue;
                };
                let (target, s) = (target.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = async {
                            tokio::join!(pipe(ir, ow, delay), pipe(or, iw, delay))
                        } => {}
                    }
                });
            }
        });
        Ok(Self { addr, stop })
    }
}

/// Copy `from` to `to`, each chunk `delay` after it was read. A reader
/// and a writer run side by side, so chunks in flight overlap.
async fn pipe(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Run the proxy until interrupted (`opscore delay-proxy`).
pub async fn run(args: DelayProxyArgs) -> anyhow::Result<()> {
    let proxy = DelayProxy::start(args.listen, args.target.clone(), args.delay)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "delay-proxy listening on {} -> {}, {:?} each way",
        proxy.addr, args.target, args.delay
    );
    tokio::signal::ctrl_c().await?;
    drop(proxy);
    Ok(())
}
