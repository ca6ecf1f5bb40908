//! An impairment proxy: a TCP proxy for tests that adds delay, jitter, a bandwidth cap and
//! stalls to the link, cuts every connection on command, and counts the bytes it forwards.
//!
//! Each connection gets four threads: per direction a reader that stamps every chunk it
//! receives with its release time (arrival + delay + a random 0..jitter, never earlier than
//! the chunk before, so the byte order is kept) and a writer that sends chunks at their
//! release time, paced by the bandwidth cap, and holds everything while a stall lasts. The
//! queue between them is bounded (in chunks), so a slow or stalled link pushes back on the
//! sender as TCP does. Dropping the proxy closes every connection and joins every thread.

use crate::tcp::{accept_links, lock, reap_finished, take_all, Acceptor};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Chunks queued per direction before the reader stops reading (TCP back-pressure).
const QUEUE_CHUNKS: usize = 4096;
/// Largest chunk read at once; with a bandwidth cap chunks are paced one by one.
const CHUNK: usize = 16 * 1024;
/// Bytes of the first connection's client-to-server stream kept by [`ImpairmentProxy::first_upstream`].
const CAPTURE_LIMIT: usize = 64 * 1024;

/// What the proxy does to the link. Changed live with the setters of [`ImpairmentProxy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Added to every chunk, in each direction.
    pub delay: Duration,
    /// A random extra delay of 0..jitter per chunk (order kept).
    pub jitter: Duration,
    /// Bytes per second per direction and connection; 0 = unlimited.
    pub bandwidth: u64,
}

struct Shared {
    stop: AtomicBool,
    settings: Mutex<Impairment>,
    /// Nothing is written before this instant (a stall).
    stall_until: Mutex<Option<Instant>>,
    to_server: AtomicU64,
    to_client: AtomicU64,
    accepted: AtomicU64,
    cuts: AtomicU64,
    rng: Mutex<u64>,
    capture: Mutex<Vec<u8>>,
    conns: Mutex<Vec<Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    dead: Arc<AtomicBool>,
}

impl Conn {
    fn close(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn random_below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut g = lock(&self.rng);
        // xorshift64*
        *g ^= *g >> 12;
        *g ^= *g << 25;
        *g ^= *g >> 27;
        g.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }

    fn settings(&self) -> Impairment {
        *lock(&self.settings)
    }

    fn stall_until(&self) -> Option<Instant> {
        *lock(&self.stall_until)
    }

    fn keep_thread(&self, h: JoinHandle<()>) {
        let mut t = lock(&self.threads);
        reap_finished(&mut t);
        t.push(h);
    }
}

/// Listens on `127.0.0.1:<port>` and forwards every connection to `127.0.0.1:<target>`
/// through the impairments set on it.
pub struct ImpairmentProxy {
    acceptor: Acceptor,
    shared: Arc<Shared>,
}

impl ImpairmentProxy {
    /// A proxy on a free port to `127.0.0.1:target`, with no impairment yet.
    pub fn start(target: u16) -> ImpairmentProxy {
        Self::start_with(target, Impairment::default())
    }

    /// A proxy on a free port to `127.0.0.1:target` with `imp` from the first byte.
    pub fn start_with(target: u16, imp: Impairment) -> ImpairmentProxy {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            settings: Mutex::new(imp),
            stall_until: Mutex::new(None),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            rng: Mutex::new(seed),
            capture: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = Acceptor::spawn("impair", 0, target, move |l| accept_loop(l, target, sh));
        ImpairmentProxy { acceptor, shared }
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.acceptor.port
    }

    /// The port it forwards to.
    pub fn target(&self) -> u16 {
        self.acceptor.target
    }

    /// The impairments now in force.
    pub fn impairment(&self) -> Impairment {
        self.shared.settings()
    }

    /// Replaces all impairments (applies to chunks read from now on).
    pub fn set(&self, imp: Impairment) {
        *lock(&self.shared.settings) = imp;
    }

    /// A fixed delay added to every chunk in both directions.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.settings).delay = delay;
    }

    /// A random extra delay of 0..`jitter` per chunk (order kept).
    pub fn set_jitter(&self, jitter: Duration) {
        lock(&self.shared.settings).jitter = jitter;
    }

    /// Bytes per second per direction and connection (0 = unlimited).
    pub fn set_bandwidth(&self, bytes_per_sec: u64) {
        lock(&self.shared.settings).bandwidth = bytes_per_sec;
    }

    /// Holds all data in both directions for `ms` milliseconds from now, then releases it
    /// (the proxy keeps reading while its queues have room). Returns at once.
    pub fn stall(&self, ms: u64) {
        *lock(&self.shared.stall_until) = Some(Instant::now() + Duration::from_millis(ms));
    }

    /// True while a stall lasts.
    pub fn stalled(&self) -> bool {
        self.shared
            .stall_until()
            .is_some_and(|t| Instant::now() < t)
    }

    /// Closes every current connection now (both peers see it closed); new connections are
    /// still accepted. Returns how many were closed.
    pub fn cut_all(&self) -> usize {
        let conns = take_all(&self.shared.conns);
        for c in &conns {
            c.close();
        }
        self.shared
            .cuts
            .fetch_add(conns.len() as u64, Ordering::SeqCst);
        conns.len()
    }

    /// Bytes delivered to the server so far.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.to_server.load(Ordering::SeqCst)
    }

    /// Bytes delivered to clients so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (including ones whose target refused).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Connections closed by [`ImpairmentProxy::cut_all`] so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// The first bytes (up to 64 KiB) that the first connection's client sent, as read by
    /// the proxy: e.g. a recorded handshake.
    pub fn first_upstream(&self) -> Vec<u8> {
        lock(&self.shared.capture).clone()
    }
}

impl Drop for ImpairmentProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.acceptor.join();
        self.cut_all();
        for t in take_all(&self.shared.threads) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, sh: Arc<Shared>) {
    accept_links(
        &listener,
        target,
        &sh.stop,
        &sh.accepted,
        |id, [link, down, kept]| {
            let dead = Arc::new(AtomicBool::new(false));
            lock(&sh.conns).push(Conn {
                id,
                client: kept.client,
                server: kept.server,
                dead: dead.clone(),
            });
            let finished = Arc::new(AtomicU64::new(0));
            // client → server, and server → client
            spawn_direction(
                &sh,
                id,
                link.client,
                link.server,
                true,
                dead.clone(),
                finished.clone(),
            );
            spawn_direction(&sh, id, down.server, down.client, false, dead, finished);
        },
    );
}

struct Chunk {
    release: Instant,
    bytes: Vec<u8>,
}

fn spawn_direction(
    sh: &Arc<Shared>,
    id: u64,
    from: TcpStream,
    to: TcpStream,
    upstream: bool,
    dead: Arc<AtomicBool>,
    finished: Arc<AtomicU64>,
) {
    let (tx, rx) = sync_channel::<Chunk>(QUEUE_CHUNKS);
    let (sh1, dead1, from_r, to_r) = (sh.clone(), dead.clone(), from, to.try_clone());
    let dir = if upstream { "up" } else { "down" };
    let reader = std::thread::Builder::new()
        .name(format!("impair-{dir}-r"))
        .spawn(move || read_side(from_r, tx, &sh1, upstream, id, &dead1))
        .expect("spawn impairment reader");
    sh.keep_thread(reader);
    let Ok(to) = to_r else {
        dead.store(true, Ordering::SeqCst);
        return;
    };
    let sh2 = sh.clone();
    let writer = std::thread::Builder::new()
        .name(format!("impair-{dir}-w"))
        .spawn(move || {
            write_side(to, rx, &sh2, upstream, &dead);
            // The last of the four threads of a connection forgets its sockets.
            if finished.fetch_add(1, Ordering::SeqCst) == 1 {
                lock(&sh2.conns).retain(|c| c.id != id);
            }
        })
        .expect("spawn impairment writer");
    sh.keep_thread(writer);
}

fn read_side(
    mut from: TcpStream,
    tx: SyncSender<Chunk>,
    sh: &Shared,
    upstream: bool,
    id: u64,
    dead: &AtomicBool,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut last_release = Instant::now();
    loop {
        if dead.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break, // orderly close: the writer passes it on once the queue is empty
            Ok(n) => {
                if upstream && id == 0 {
                    let mut cap = lock(&sh.capture);
                    let room = CAPTURE_LIMIT.saturating_sub(cap.len());
                    cap.extend_from_slice(&buf[..n.min(room)]);
                }
                let imp = sh.settings();
                let extra = Duration::from_micros(sh.random_below(imp.jitter.as_micros() as u64));
                let release = (Instant::now() + imp.delay + extra).max(last_release);
                last_release = release;
                if tx
                    .send(Chunk {
                        release,
                        bytes: buf[..n].to_vec(),
                    })
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                dead.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    // Dropping tx tells the writer the stream ended.
}

/// Sleeps until `t`, waking every 20 ms to notice a cut or the proxy stopping; false if it
/// should give up.
fn sleep_until(t: Instant, sh: &Shared, dead: &AtomicBool) -> bool {
    loop {
        if dead.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(20)));
    }
}

fn write_side(
    mut to: TcpStream,
    rx: Receiver<Chunk>,
    sh: &Shared,
    upstream: bool,
    dead: &AtomicBool,
) {
    let counter = if upstream {
        &sh.to_server
    } else {
        &sh.to_client
    };
    let mut next_free = Instant::now();
    loop {
        let chunk = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if dead.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                if !dead.load(Ordering::SeqCst) {
                    // The reader saw an orderly close: pass the half-close on; the other
                    // direction goes on.
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                break;
            }
        };
        if !sleep_until(chunk.release, sh, dead) {
            break;
        }
        let mut off = 0;
        let mut failed = false;
        while off < chunk.bytes.len() {
            // A stall holds everything, also what is already due.
            while let Some(until) = sh.stall_until() {
                if Instant::now() >= until {
                    break;
                }
                if !sleep_until(
                    until.min(Instant::now() + Duration::from_millis(20)),
                    sh,
                    dead,
                ) {
                    failed = true;
                    break;
                }
            }
            if failed {
                break;
            }
            let bw = sh.settings().bandwidth;
            let piece = if bw == 0 {
                chunk.bytes.len() - off
            } else {
                // Pace in pieces of at most ~10 ms worth of bytes.
                ((bw / 100).max(1) as usize).min(chunk.bytes.len() - off)
            };
            if bw > 0 {
                if !sleep_until(next_free, sh, dead) {
                    failed = true;
                    break;
                }
                let start = next_free.max(Instant::now());
                next_free = start + Duration::from_secs_f64(piece as f64 / bw as f64);
            }
            if to.write_all(&chunk.bytes[off..off + piece]).is_err() {
                failed = true;
                break;
            }
            counter.fetch_add(piece as u64, Ordering::SeqCst);
            off += piece;
        }
        if failed {
            break;
        }
    }
    // Cut, failed or stopping: the whole connection goes (both sockets, both directions).
    dead.store(true, Ordering::SeqCst);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (u16, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                crate::tcp::echo(s, 65536);
            }
        });
        (port, h)
    }

    fn round_trip(c: &mut TcpStream, n: usize) -> Duration {
        let t = Instant::now();
        let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
        c.write_all(&data).unwrap();
        let mut got = vec![0u8; n];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, data, "bytes changed or reordered");
        t.elapsed()
    }

    #[test]
    fn delay_stall_bandwidth_cut() {
        let (port, server) = echo_server();
        let p = ImpairmentProxy::start(port);
        let mut c = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let plain = round_trip(&mut c, 100);
        assert!(plain < Duration::from_millis(50), "{plain:?}");

        p.set_delay(Duration::from_millis(50));
        p.set_jitter(Duration::from_millis(20));
        let d = round_trip(&mut c, 100);
        assert!(
            d >= Duration::from_millis(100) && d < Duration::from_millis(250),
            "{d:?}"
        );
        // Many small writes with jitter keep their order.
        for _ in 0..20 {
            c.write_all(b"abcdefgh").unwrap();
        }
        let mut got = vec![0u8; 160];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, b"abcdefgh".repeat(20));

        p.set(Impairment::default());
        p.stall(300);
        let s = round_trip(&mut c, 100);
        assert!(s >= Duration::from_millis(280), "{s:?}");

        p.set_bandwidth(100_000);
        let b = round_trip(&mut c, 50_000);
        // 0.5 s each way at 100 kB/s, pipelined: at least ~0.5 s.
        assert!(b >= Duration::from_millis(450), "{b:?}");
        p.set_bandwidth(0);

        // The counters move just after each write.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            p.bytes_to_server() == 50_460 && p.bytes_to_client() == 50_460,
            "{} {}",
            p.bytes_to_server(),
            p.bytes_to_client()
        );
        assert!(p.bytes_to_server() >= 50_260 && p.bytes_to_client() >= 50_260);
        assert_eq!(p.first_upstream().len() as u64, p.bytes_to_server());
        assert_eq!(p.cut_all(), 1);
        let mut buf = [0u8; 10];
        let r = c.read(&mut buf);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        drop(p);
        server.join().unwrap();
    }
}
