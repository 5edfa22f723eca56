//! A TCP proxy that plays the bad network between a client and the relay:
//! `Shaper::start(target)` listens on `127.0.0.1:0` and forwards every connection to `target`.
//! A test can, for every connection (stall and drop also for one, by the order of acceptance):
//! - add a one-way delay: each chunk of bytes is held that long before it goes on, each way;
//! - stall: nothing is forwarded either way, both sockets stay open. This is a path that died
//!   without a FIN or a RST (Wi-Fi out of range, a NAT entry gone): the peers see only silence;
//! - resume: forwarding goes on, and what waited (in the kernel's buffers) goes through as a burst;
//! - drop: both sides are closed;
//! - count the bytes forwarded each way.
//!
//! A connection accepted during a stall is dead too (accepted, nothing forwarded), unless the
//! stall lets new connections pass (`NewConnections::Pass`: dead for existing connections only),
//! so that a client's reconnection can be tested both ways.
//!
//! The shaper runs on a thread of its own with its own runtime: it serves `#[tokio::test]`s and
//! child processes (`boothcast listen --server {shaper.url()}`) alike, and a test blocked on a
//! child's output does not hold it up. Dropping the shaper closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Connections a shaper keeps track of; later ones are closed at once. A client reconnecting
/// with back-off makes a few dozen in a test.
const MAX_CONNECTIONS: usize = 1024;
/// Chunks read but not yet written, per direction (a delayed chunk waits here). A full queue
/// stops the reading, and the kernel's socket buffers hold the rest, as on a real path.
const QUEUE: usize = 256;
/// The largest chunk read at once, in bytes.
const CHUNK: usize = 16 * 1024;

/// What a stall does to the connections accepted while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewConnections {
    /// They are dead too: accepted, nothing forwarded (the whole path is down).
    Dead,
    /// They are forwarded: only the connections open at the stall are dead.
    Pass,
}

/// Bytes forwarded: `up` from the client to the target, `down` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    pub up: u64,
    pub down: u64,
}

/// One forwarded connection.
#[derive(Default)]
struct Link {
    stalled: AtomicBool,
    dropped: AtomicBool,
    up: AtomicU64,
    down: AtomicU64,
}

impl Link {
    fn bytes(&self) -> Bytes {
        let (up, down) = (self.up.load(SeqCst), self.down.load(SeqCst));
        Bytes { up, down }
    }
}

struct Shared {
    /// One-way delay in microseconds.
    delay_us: AtomicU64,
    /// Whether a connection accepted now starts stalled.
    new_dead: AtomicBool,
    links: Mutex<Vec<Arc<Link>>>,
    /// Bumped after every change of a control, so that waiting tasks look again.
    changed: watch::Sender<()>,
}

pub struct Shaper {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shaper {
    /// Starts forwarding connections made to `self.addr` (on `127.0.0.1:0`) to `target`.
    pub fn start(target: SocketAddr) -> Shaper {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the shaper");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            delay_us: AtomicU64::new(0),
            new_dead: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            changed: watch::Sender::new(()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shaper".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = accept(listener, target, s) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection's task, closing its sockets.
            })
            .unwrap();
        Shaper {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The shaper's address as a relay address for the clients: `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Holds every byte `delay` before it goes on, each way (chunks read from now on).
    pub fn set_delay(&self, delay: Duration) {
        let us = delay.as_micros() as u64;
        self.shared.delay_us.store(us, SeqCst);
    }

    /// Stops forwarding on every open connection, both ways, keeping the sockets open;
    /// `new` says whether connections accepted until `resume` are dead too.
    pub fn stall(&self, new: NewConnections) {
        let dead = new == NewConnections::Dead;
        self.shared.new_dead.store(dead, SeqCst);
        self.apply(None, |l| l.stalled.store(true, SeqCst));
    }

    /// Forwards again on every connection; what waited goes through at once.
    pub fn resume(&self) {
        self.shared.new_dead.store(false, SeqCst);
        self.apply(None, |l| l.stalled.store(false, SeqCst));
    }

    /// Closes both sides of every open connection.
    pub fn drop_all(&self) {
        self.apply(None, |l| l.dropped.store(true, SeqCst));
    }

    /// Stalls (`true`) or resumes (`false`) connection `i` alone (0 is the first accepted).
    pub fn stall_one(&self, i: usize, stalled: bool) {
        self.apply(Some(i), |l| l.stalled.store(stalled, SeqCst));
    }

    /// Closes both sides of connection `i`.
    pub fn drop_one(&self, i: usize) {
        self.apply(Some(i), |l| l.dropped.store(true, SeqCst));
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.links.lock().unwrap().len()
    }

    /// Bytes forwarded on all connections so far.
    pub fn bytes(&self) -> Bytes {
        let links = self.shared.links.lock().unwrap();
        links
            .iter()
            .map(|l| l.bytes())
            .fold(Bytes::default(), |a, b| Bytes {
                up: a.up + b.up,
                down: a.down + b.down,
            })
    }

    /// Bytes forwarded on connection `i` so far (zero if there is no such connection yet).
    pub fn bytes_of(&self, i: usize) -> Bytes {
        let links = self.shared.links.lock().unwrap();
        links.get(i).map_or(Bytes::default(), |l| l.bytes())
    }

    /// Applies `f` to connection `i`, or to all when `None`, and has the tasks look again.
    fn apply(&self, i: Option<usize>, f: impl Fn(&Link)) {
        let links = self.shared.links.lock().unwrap();
        links
            .iter()
            .enumerate()
            .filter(|(k, _)| i.is_none_or(|i| i == *k))
            .for_each(|(_, l)| f(l));
        self.shared.changed.send_replace(());
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let link = Arc::new(Link::default());
        link.stalled.store(shared.new_dead.load(SeqCst), SeqCst);
        {
            let mut links = shared.links.lock().unwrap();
            if links.len() >= MAX_CONNECTIONS {
                continue;
            }
            links.push(link.clone());
        }
        tokio::spawn(forward(client, target, link, shared.clone()));
    }
}

/// Forwards one connection until both directions have ended, an error, or a drop.
async fn forward(client: TcpStream, target: SocketAddr, link: Arc<Link>, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let up = pump(client_rx, server_tx, &link, &shared, |l| &l.up);
    let down = pump(server_rx, client_tx, &link, &shared, |l| &l.down);
    tokio::select! {
        _ = async { tokio::try_join!(up, down) } => {}
        _ = until(&link, &shared, |l| l.dropped.load(SeqCst)) => {}
    }
}

/// One direction: reads chunks while not stalled, holds each for the delay, writes it while
/// not stalled. The end of the input is passed on as a half-close.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: &Link,
    shared: &Shared,
    count: fn(&Link) -> &AtomicU64,
) -> std::io::Result<()> {
    let open = |l: &Link| !l.stalled.load(SeqCst);
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let read = async move {
        loop {
            until(link, shared, open).await;
            let mut chunk = vec![0; CHUNK];
            let n = from.read(&mut chunk).await?;
            if n == 0 {
                return Ok(()); // dropping `tx` lets the writer finish
            }
            chunk.truncate(n);
            let delay = Duration::from_micros(shared.delay_us.load(SeqCst));
            if tx.send((Instant::now() + delay, chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            until(link, shared, open).await;
            to.write_all(&chunk).await?;
            count(link).fetch_add(chunk.len() as u64, SeqCst);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Returns once `f` holds for the link, looking again after every change of a control.
async fn until(link: &Link, shared: &Shared, f: impl Fn(&Link) -> bool) {
    let mut changes = shared.changed.subscribe();
    loop {
        changes.borrow_and_update();
        if f(link) {
            return;
        }
        let _ = changes.changed().await;
    }
}
