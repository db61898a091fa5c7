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
///
/// The writer waits on a thread of its own: tokio's timer counts whole
/// milliseconds and rounds every wait up, so a 1 ms delay took 2 ms or more
/// each way (a round trip through the proxy measured 4.3 ms instead of 2).
/// A thread's sleep overshoots by tens of microseconds.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    to: impl AsyncWrite + Unpin + Send + 'static,
    delay: Duration,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let runtime = tokio::runtime::Handle::current();
    let writer = std::thread::spawn(move || {
        let mut to = to;
        while let Ok((due, bytes)) = rx.recv() {
            let left = due.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
            if runtime.block_on(to.write_all(&bytes)).is_err() {
                return;
            }
        }
        let _ = runtime.block_on(to.shutdown());
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = std::time::Instant::now() + delay;
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    // The writer ends once it has sent what is left; it is not waited
    // for here, so a closed connection never blocks the runtime.
    drop(writer);
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
