//! A TCP fault proxy on loopback: one simulated phone's network.
//!
//! Every byte between a relay (and its background uploads) and the server
//! passes through it, so network faults are applied to real sockets:
//!
//! - **cut**: one live connection is reset (`SO_LINGER 0`, so the peers see
//!   an RST, as when a NAT forgets a flow);
//! - **delay**: for a while, every chunk waits before it is forwarded;
//! - **black hole**: for a while, connections are accepted but nothing is
//!   forwarded either way; when it ends, the connections caught in it are
//!   reset, as TCP would after its retransmissions gave up;
//! - **switch** (Wi-Fi to cellular): every connection is reset at once and
//!   new ones are refused until the new network is up.
//!
//! Each fault method reports what it really did (how many connections it
//! reset), so the campaign never counts a fault that touched nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Forward every chunk after this many milliseconds.
    Delay(u64),
    /// Accept, forward nothing.
    BlackHole,
    /// Refuse new connections (no network).
    Down,
}

/// The proxy's mode, live connections and fault counters, shared with its tasks.
struct ProxyState {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Live connections, by number, each with the switch that resets it.
    conns: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    /// Chunks a delay held up, chunks a black hole swallowed, connections
    /// refused while down: evidence that a fault touched real traffic.
    delayed: AtomicU64,
    held: AtomicU64,
    refused: AtomicU64,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset_all();
    }
}

impl FaultProxy {
    /// Listens on a loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Normal);
        let shared = Arc::new(ProxyState {
            target,
            mode,
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            held: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *shared.mode.borrow() == Mode::Down {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        rst_on_close(&client);
                        continue;
                    }
                    tokio::spawn(serve(shared.clone(), client));
                }
            }
        });
        Ok(FaultProxy { addr, shared, accept })
    }

    /// Resets one live connection, picked by `pick` (an index into the live
    /// ones); returns whether there was one to reset.
    pub fn cut_one(&self, pick: usize) -> bool {
        let mut conns = self.shared.conns.lock().expect("proxy lock");
        let Some(&id) = conns.keys().nth(pick % conns.len().max(1)) else {
            return false;
        };
        conns.remove(&id).is_some_and(|kill| kill.send(()).is_ok())
    }

    /// Resets every live connection; returns how many.
    pub fn reset_all(&self) -> usize {
        let drained: Vec<_> = self.shared.conns.lock().expect("proxy lock").drain().collect();
        drained
            .into_iter()
            .filter(|(_, kill)| !kill.is_closed())
            .map(|(_, kill)| kill.send(()))
            .filter(Result::is_ok)
            .count()
    }

    /// Delays every chunk by `delay` for `period`; returns how many chunks
    /// it held up.
    pub async fn delay_for(&self, delay: Duration, period: Duration) -> u64 {
        let before = self.shared.delayed.load(Ordering::Relaxed);
        self.shared.mode.send_replace(Mode::Delay(delay.as_millis() as u64));
        tokio::time::sleep(period).await;
        self.shared.mode.send_replace(Mode::Normal);
        self.shared.delayed.load(Ordering::Relaxed) - before
    }

    /// Forwards nothing for `period`, then resets the connections caught in
    /// it; returns how many chunks it swallowed and connections it reset.
    pub async fn black_hole_for(&self, period: Duration) -> (u64, usize) {
        let before = self.shared.held.load(Ordering::Relaxed);
        self.shared.mode.send_replace(Mode::BlackHole);
        tokio::time::sleep(period).await;
        let n = self.reset_all();
        self.shared.mode.send_replace(Mode::Normal);
        (self.shared.held.load(Ordering::Relaxed) - before, n)
    }

    /// A network switch: resets everything, refuses connections for
    /// `outage`, then carries on; returns the connections it reset and the
    /// connection attempts it refused.
    pub async fn switch_network(&self, outage: Duration) -> (usize, u64) {
        let before = self.shared.refused.load(Ordering::Relaxed);
        self.shared.mode.send_replace(Mode::Down);
        let n = self.reset_all();
        tokio::time::sleep(outage).await;
        self.shared.mode.send_replace(Mode::Normal);
        (n, self.shared.refused.load(Ordering::Relaxed) - before)
    }
}

/// Makes closing the socket send an RST instead of a FIN (`SO_LINGER` 0):
/// a cut, not a goodbye. tokio deprecates `set_linger` because a *non-zero*
/// linger blocks the thread on drop; a zero linger never blocks.
#[allow(deprecated)]
fn rst_on_close(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Carries one connection until either side closes or it is reset.
async fn serve(shared: Arc<ProxyState>, client: TcpStream) {
    let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.target)).await else {
        // The server is down (killed, restarting): refuse as it would.
        rst_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    rst_on_close(&client);
    rst_on_close(&server);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (kill_tx, kill_rx) = oneshot::channel();
    shared.conns.lock().expect("proxy lock").insert(id, kill_tx);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, &shared);
    let down = pump(sr, cw, &shared);
    tokio::select! {
        biased;
        // Reset: dropping both sockets with linger 0 sends RSTs both ways.
        _ = kill_rx => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    shared.conns.lock().expect("proxy lock").remove(&id);
}

/// Copies one direction, obeying the mode before each chunk.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &ProxyState) {
    let mut mode = shared.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Mode::BlackHole => {
                    shared.held.fetch_add(1, Ordering::Relaxed);
                    // Hold the bytes; the end of the hole resets this connection.
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Delay(ms) => {
                    shared.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    break;
                }
                Mode::Normal | Mode::Down => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
