//! `module-opus-protocol-tcp`: the receiving end. Listens on TCP (default port 4715); each
//! accepted tunnel from `module-tunnel-sink-opus` becomes a stream (sink-input) on a local
//! sink, decoded through a jitter buffer with Opus packet-loss concealment.
//!
//! Threads: a listener thread accepts; a thread per connection does the handshake, reads,
//! decodes and pushes PCM into a lock-free ring; the sink's IO thread pops from the ring in
//! the stream's callback (never blocking) and holds the fill level near the target; the main
//! thread creates and removes the streams (woken through an eventfd) and publishes statistics.

mod conn;

use conn::{ConnShared, Pending, RecvConfig};
use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::params::{parse_bool, DEFAULT_PORT};
use opus_tunnel_pulse::mainloop::{MainTimer, MainWaker};
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::sink_input::{SinkInput, SinkInputConfig, SinkInputIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, PaModule, Proplist, SampleSpec,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const USAGE: &std::ffi::CStr = c"port=<TCP port, default 4715> \
listen=<address to listen on; default: all> \
auth-anonymous=<bool: accept anyone; default false> \
auth-ip-acl=<addresses/networks allowed, e.g. 127.0.0.1;192.168.0.0/16> \
sink=<sink to play tunnels on; default: the default sink> \
target_latency_msec=<receive buffer target, 10-2000 ms; default 60> \
max_connections=<concurrent tunnels, 1-1024; default 64>";

const VALID_ARGS: &[&str] = &[
    "port",
    "listen",
    "auth-anonymous",
    "auth-ip-acl",
    "sink",
    "target_latency_msec",
    "max_connections",
];

/// State shared between the main thread, the listener and the connection threads.
pub struct RecvShared {
    pub stop: AtomicBool,
    pub pending: Mutex<VecDeque<Pending>>,
    pub connections: AtomicUsize,
    pub cfg: RecvConfig,
    pub waker: Mutex<Option<opus_tunnel_pulse::mainloop::WakeHandle>>,
}

impl RecvShared {
    pub fn wake_main(&self) {
        if let Ok(w) = self.waker.lock() {
            if let Some(w) = w.as_ref() {
                w.wake();
            }
        }
    }
}

/// A tunnel whose stream is playing (main thread).
struct Active {
    stream: SinkInput,
    conn: Arc<ConnShared>,
}

/// Main-thread state.
struct MainState {
    module: ModuleRef,
    shared: Arc<RecvShared>,
    active: Vec<Active>,
}

impl MainState {
    /// Creates streams for new tunnels and removes those that ended. Main thread.
    fn service(&mut self) {
        let pending: Vec<Pending> = match self.shared.pending.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for p in pending {
            let result = self.create_stream(p.conn.clone(), p.ring, &p.hello_name, p.props);
            match result {
                Ok((stream, sink)) => {
                    let _ = p.reply.send(Ok(sink));
                    self.active.push(Active {
                        stream,
                        conn: p.conn,
                    });
                }
                Err(e) => {
                    let _ = p.reply.send(Err(e));
                }
            }
        }
        self.active.retain(|a| {
            if a.stream.killed() {
                log::info!("stream {} was killed; closing its tunnel", a.conn.label);
                a.conn.kill();
                return false;
            }
            !a.conn.closed.load(Ordering::SeqCst)
        });
    }

    fn create_stream(
        &self,
        conn: Arc<ConnShared>,
        ring: rtrb::Consumer<f32>,
        name: &str,
        props: Vec<(String, String)>,
    ) -> Result<(SinkInput, String), (u16, String)> {
        let spec = SampleSpec::new("float32le", conn.rate, conn.channels).map_err(|e| (415, e))?;
        let map = ChannelMap::parse(&conn.channel_map, conn.channels)
            .or_else(|_| {
                ChannelMap::default_for(conn.channels).ok_or_else(|| "no channel map".to_string())
            })
            .map_err(|e| (415, e))?;
        let mut pl = Proplist::new();
        pl.set("media.name", name);
        pl.set("application.name", "opus-tunnel");
        pl.set("media.role", "music");
        for (k, v) in props {
            pl.set(&k, &v);
        }
        let device = conn.device.clone().or_else(|| self.shared.cfg.sink.clone());
        let io = ReceiverIo::new(conn.clone(), ring);
        let stream = SinkInput::new(
            &self.module,
            SinkInputConfig {
                sink: device.as_deref(),
                spec,
                map,
                props: pl,
                requested_latency_usec: (self.shared.cfg.target_usec / 2).clamp(5_000, 100_000),
                driver: c"module-opus-protocol-tcp",
                on_kill: self.shared.waker.lock().ok().and_then(|w| w.clone()),
            },
            Box::new(io),
        )
        .map_err(|e| (404, e))?;
        let sink = stream.sink_name().unwrap_or_default();
        Ok((stream, sink))
    }

    /// Publishes each stream's statistics as its properties. Main thread, once a second.
    fn publish(&mut self) {
        for a in &self.active {
            a.stream.update_proplist(&a.conn.stat_properties());
        }
    }
}

/// The stream's side on the sink's IO thread: takes decoded audio from the ring, holding the
/// fill level near the target (a simple correction; drift-correcting resampling is separate).
struct ReceiverIo {
    conn: Arc<ConnShared>,
    ring: rtrb::Consumer<f32>,
    /// Waiting for the ring to fill up to the target before playing (start, after underrun).
    buffering: bool,
    target: usize,
    high: usize,
}

impl ReceiverIo {
    fn new(conn: Arc<ConnShared>, ring: rtrb::Consumer<f32>) -> ReceiverIo {
        let per_sec = conn.rate as u64 * u64::from(conn.channels);
        let target = (per_sec * conn.target_usec / 1_000_000) as usize;
        // Above target + max(target, 60 ms) the excess is dropped: after a network stall the
        // delay comes back down instead of staying.
        let slack = (per_sec * conn.target_usec.max(60_000) / 1_000_000) as usize;
        ReceiverIo {
            conn,
            ring,
            buffering: true,
            target,
            high: target + slack,
        }
    }
}

impl SinkInputIo for ReceiverIo {
    fn pop(&mut self, out: &mut [u8]) {
        let want = out.len() / 4;
        let ch = usize::from(self.conn.channels.max(1));
        let avail = self.ring.slots();
        if self.buffering {
            if avail >= self.target.max(want) {
                self.buffering = false;
            } else {
                out.fill(0);
                return;
            }
        }
        let take = (avail.min(want) / ch) * ch;
        if let Ok(chunk) = self.ring.read_chunk(take) {
            let (a, b) = chunk.as_slices();
            for (dst, s) in out.chunks_exact_mut(4).zip(a.iter().chain(b.iter())) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
            chunk.commit_all();
        }
        if take < want {
            out[take * 4..].fill(0);
            if !self.conn.paused.load(Ordering::Relaxed) {
                self.conn.stats.underruns.fetch_add(1, Ordering::Relaxed);
            }
            self.buffering = true;
        }
        let left = self.ring.slots();
        if left > self.high {
            let drop_n = ((left - self.target) / ch) * ch;
            if let Ok(c) = self.ring.read_chunk(drop_n) {
                c.commit_all();
            }
            self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
        }
        self.conn.set_fill(self.ring.slots());
    }

    fn queued_usec(&self) -> u64 {
        self.conn.samples_to_usec(self.ring.slots())
    }
}

/// The module instance.
pub struct Receiver {
    shared: Arc<RecvShared>,
    listener: Option<JoinHandle<()>>,
    _timer: MainTimer,
    _waker: MainWaker,
    main: Rc<RefCell<MainState>>,
    port: u16,
}

fn parse_num<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    ma: &Modargs,
    key: &str,
    default: T,
    lo: T,
    hi: T,
) -> Result<T, String> {
    match ma.get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n >= lo && n <= hi => Ok(n),
            _ => Err(format!(
                "{key}: {v:?} is not accepted (an integer from {lo} to {hi})"
            )),
        },
    }
}

fn bind(listen: Option<&str>, port: u16) -> Result<TcpListener, String> {
    let addrs: Vec<SocketAddr> = match listen {
        Some(a) => {
            let ip: IpAddr = a
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    format!("listen: {a:?} is not accepted (an IP address such as 127.0.0.1 or ::)")
                })?;
            vec![SocketAddr::new(ip, port)]
        }
        // Dual-stack "::" where the machine has IPv6, else all IPv4 addresses.
        None => vec![
            SocketAddr::new(IpAddr::from([0u16; 8]), port),
            SocketAddr::new(IpAddr::from([0u8; 4]), port),
        ],
    };
    let mut last = String::new();
    for a in &addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a}: {e}"),
        }
    }
    Err(last)
}

impl PaModule for Receiver {
    fn init(module: &ModuleRef) -> Result<Self, String> {
        let arg = module.argument();
        let ma = Modargs::new(arg.as_deref(), VALID_ARGS)?;
        let port = parse_num(&ma, "port", DEFAULT_PORT, 1, u16::MAX)?;
        let anonymous = match ma.get("auth-anonymous") {
            None => false,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| format!("auth-anonymous: {v:?} is not accepted (a boolean: 1/0, yes/no, true/false, on/off)"))?,
        };
        let acl = match ma.get("auth-ip-acl") {
            None => None,
            Some(v) => Some(IpAcl::parse("auth-ip-acl", &v).map_err(|e| e.to_string())?),
        };
        if !anonymous && acl.is_none() {
            return Err(
                "no way to authenticate peers: set auth-anonymous=1 or auth-ip-acl=<addresses> \
                        (cookie authentication is not available yet)"
                    .into(),
            );
        }
        let target_ms = parse_num(&ma, "target_latency_msec", 60u64, 10, 2000)?;
        let max_connections = parse_num(&ma, "max_connections", 64usize, 1, 1024)?;
        let sink = ma.get("sink");
        let core = module.core();
        if let Some(s) = &sink {
            if core.sink_name(Some(s)).is_none() {
                log::warn!(
                    "sink {s:?} does not exist (yet); tunnels will be refused until it does"
                );
            }
        }
        let listener = bind(ma.get("listen").as_deref(), port)?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot configure the listening socket: {e}"))?;
        let shared = Arc::new(RecvShared {
            stop: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            connections: AtomicUsize::new(0),
            cfg: RecvConfig {
                anonymous,
                acl,
                sink,
                target_usec: target_ms * 1000,
                max_connections,
            },
            waker: Mutex::new(None),
        });
        let main = Rc::new(RefCell::new(MainState {
            module: *module,
            shared: shared.clone(),
            active: Vec::new(),
        }));
        let m2 = main.clone();
        let waker = MainWaker::new(&core, move || {
            if let Ok(mut m) = m2.try_borrow_mut() {
                m.service();
            }
        })?;
        if let Ok(mut w) = shared.waker.lock() {
            *w = Some(waker.handle());
        }
        let m3 = main.clone();
        let timer = MainTimer::new(&core, 1_000_000, move || {
            if let Ok(mut m) = m3.try_borrow_mut() {
                m.service();
                m.publish();
            }
        });
        let s2 = shared.clone();
        let listener = thread::Builder::new()
            .name("opus-tunnel-listen".into())
            .spawn(move || accept_loop(listener, s2))
            .map_err(|e| format!("cannot start the listener thread: {e}"))?;
        log::info!("listening for opus tunnels on {local}");
        Ok(Receiver {
            shared,
            listener: Some(listener),
            _timer: timer,
            _waker: waker,
            main,
            port: local.port(),
        })
    }

    fn n_used(&self) -> i32 {
        self.main
            .try_borrow()
            .map(|m| m.active.len() as i32)
            .unwrap_or(0)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<RecvShared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let s = shared.clone();
                let _ = stream.set_nonblocking(false);
                match thread::Builder::new()
                    .name("opus-tunnel-conn".into())
                    .spawn(move || conn::serve(stream, peer, s))
                {
                    Ok(h) => workers.push(h),
                    Err(e) => {
                        log::error!("cannot start a thread for {peer}: {e}; connection dropped")
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(200));
            }
        }
        workers.retain(|h| !h.is_finished());
    }
    for w in workers {
        let _ = w.join();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(m) = self.main.try_borrow() {
            for a in &m.active {
                a.conn.kill();
            }
        }
        // Refuse the connections that wait for a stream, so their threads end.
        if let Ok(mut q) = self.shared.pending.lock() {
            for p in q.drain(..) {
                let _ = p
                    .reply
                    .send(Err((503, "the receiver is shutting down".into())));
            }
        }
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        if let Ok(mut m) = self.main.try_borrow_mut() {
            m.active.clear();
        }
        log::info!("stopped listening on port {}", self.port);
    }
}

declare_module!(
    Receiver,
    ModuleInfo {
        author: c"opus-tunnel developers",
        description:
            c"Receives Opus tunnels (from module-tunnel-sink-opus) and plays them on a local sink",
        usage: USAGE,
        load_once: false,
    }
);
