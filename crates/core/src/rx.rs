//! The receiving end, independent of the sound server: a thread per accepted connection does
//! the handshake, then read → deframe → RTP → jitter buffer → decode → ring; the daemon's
//! real-time thread takes the audio out with [`Playback::pop`]. Anything a peer sends that we
//! cannot use closes that connection with a log line; nothing it sends can panic or grow
//! memory without bound. The daemon side is a [`Host`]: it creates the stream for a tunnel.
use crate::acl::IpAcl;
use crate::auth::{Cookie, ServerAuth, Verified};
use crate::codec::{self, Decoder, StreamFormat};
use crate::framing::{self, Deframer};
use crate::handshake::{
    Direction, HandshakeError, HeadReader, Hello, Reply, STATUS_BAD_REQUEST, STATUS_FORBIDDEN,
    STATUS_TOO_MANY_CONNECTIONS, STATUS_UNSUPPORTED_FORMAT, STATUS_VERSION_NOT_SUPPORTED,
};
use crate::jitter::{JitterBuffer, Playout, PushResult};
use crate::net::Conn;
use crate::params::{Compression, OpusKnobs, ServerAddr, KNOB_KEYS};
use crate::playout::{Playout as PlayoutEngine, PlayoutConfig, PlayoutState, PlayoutStats};
use crate::rtp::{self, Control};
use crate::samples::SampleFormat;
use crate::stats::{BitrateMeter, Stats, TunnelState};
use crate::tx;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The receiver's settings from its module arguments.
pub struct RecvConfig {
    /// Accept any peer (`auth-anonymous`).
    pub anonymous: bool,
    /// Peers allowed by address (`auth-ip-acl`).
    pub acl: Option<IpAcl>,
    /// Everyone else must prove this cookie (`auth-cookie`, when `auth-cookie-enabled`).
    pub cookie: Option<Cookie>,
    /// The device tunnels play on when the sender names none (`None`: the default).
    pub sink: Option<String>,
    /// Receive buffer target, µs.
    pub target_usec: u64,
    /// The most the target may grow to after underruns, µs (`max_latency_msec`).
    pub max_usec: u64,
    /// Concurrent connections; one more is refused with 503.
    pub max_connections: usize,
    /// The host resamples: the engine passes the audio through at ratio 1 and the host's
    /// real-time side applies [`Playback::ratio`] (see
    /// [`crate::playout::Controller::set_external_resampler`]).
    pub external_resampler: bool,
}

/// Largest RFC 4571 frame a sender may send us (an Opus packet is at most a few KB; a 60 ms
/// L16 frame of 8 channels at 48 kHz is 46 KB).
const MAX_FRAME: usize = 65535;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A sender that is silent (no audio, no keepalive) for this long is considered gone.
const DEAD_AFTER: Duration = Duration::from_secs(5);

/// What the connection thread shares with the main thread and the sink's IO thread.
pub struct ConnShared {
    /// `<sender's name>@<sender's host>`, for log lines.
    pub label: String,
    /// Sample rate of the stream.
    pub rate: u32,
    /// Channels of the stream.
    pub channels: u8,
    /// Channel map in PulseAudio's text form, as the sender gave it.
    pub channel_map: String,
    /// The device the sender asked for (`None`: the receiver's choice).
    pub device: Option<String>,
    /// Receive buffer target, µs.
    pub target_usec: u64,
    /// Counters of this connection.
    pub stats: Stats,
    /// The connection ended (set by its thread).
    pub closed: AtomicBool,
    /// The stream was killed or the module unloads: the connection thread should end.
    killed: AtomicBool,
    /// The sender said it paused (no stream plays into its sink).
    pub paused: AtomicBool,
    /// Samples in the ring after the last pop.
    fill: AtomicU64,
    meter: Mutex<BitrateMeter>,
    peer: String,
    /// Record tunnels: the capture's sender side (stopped when the connection is killed).
    record: OnceLock<Arc<tx::Shared>>,
    /// Record tunnels: the far end has readers, so the capture should run.
    recording: AtomicBool,
    /// The engine restarted: the real-time side drops what the ring holds.
    flush: AtomicBool,
    /// The clock both threads time the stream with (µs since the connection began).
    epoch: Instant,
    /// The playout engine's figures, refreshed by the connection thread every 100 ms.
    playout: Mutex<Option<PlayoutStats>>,
    /// The engine's ratio (f64 bits), for an external resampler.
    ratio_bits: AtomicU64,
}

impl ConnShared {
    /// Ends the connection (its stream was killed, or the receiver stops).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(t) = self.record.get() {
            t.stop();
        }
    }

    /// Record tunnels: whether the capture should run (the far end has readers). The host
    /// corks its recording stream while this is false.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    /// The connection has ended; its stream should go.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Microseconds since the connection began (monotonic; cheap enough for the real-time
    /// thread).
    pub fn now_usec(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Records the ring's fill level (samples) after a pop.
    pub fn set_fill(&self, samples: usize) {
        self.fill.store(samples as u64, Ordering::Relaxed);
    }

    /// Interleaved samples of this stream as a duration, µs.
    pub fn samples_to_usec(&self, samples: usize) -> u64 {
        let per_sec = u64::from(self.rate) * u64::from(self.channels);
        samples as u64 * 1_000_000 / per_sec.max(1)
    }

    fn latency_usec(&self) -> u64 {
        self.samples_to_usec(self.fill.load(Ordering::Relaxed) as usize)
    }

    /// The statistics as `opus.tunnel.*` properties (call about once a second: the bitrate is
    /// measured between calls).
    pub fn stat_properties(&self) -> Vec<(String, String)> {
        if let Some(t) = self.record.get() {
            let mut v = t.stat_properties();
            if !self.recording() {
                for (k, val) in v.iter_mut() {
                    if k == "opus.tunnel.state" {
                        *val = "idle".into();
                    }
                }
            }
            v.push(("opus.tunnel.peer".into(), self.peer.clone()));
            return v;
        }
        let s = self.stats.snapshot();
        let bitrate = match self.meter.lock() {
            Ok(mut m) => m.sample(Instant::now(), s.bytes_received),
            Err(_) => 0,
        };
        let state = if self.paused.load(Ordering::Relaxed) {
            TunnelState::Idle
        } else {
            s.state
        };
        let p = self.playout.lock().ok().and_then(|p| *p);
        let latency = p.map_or_else(|| self.latency_usec(), |p| p.latency_usec);
        let target = p.map_or(self.target_usec, |p| p.target_usec);
        let state = match p.map(|p| p.state) {
            _ if self.paused.load(Ordering::Relaxed) => "idle",
            Some(PlayoutState::Buffering) => "buffering",
            Some(PlayoutState::Slewing) => "slewing",
            Some(PlayoutState::Locked) => "streaming",
            None => state.as_str(),
        };
        vec![
            ("opus.tunnel.state".into(), state.into()),
            ("opus.tunnel.peer".into(), self.peer.clone()),
            ("opus.tunnel.bitrate".into(), bitrate.to_string()),
            ("opus.tunnel.latency_usec".into(), latency.to_string()),
            ("opus.tunnel.target_latency_usec".into(), target.to_string()),
            (
                "opus.tunnel.drift_ppm".into(),
                format!("{:.1}", p.map_or(0.0, |p| p.drift_ppm)),
            ),
            (
                "opus.tunnel.underruns".into(),
                p.map_or(0, |p| p.underruns).to_string(),
            ),
            (
                "opus.tunnel.overruns".into(),
                (s.overruns + p.map_or(0, |p| p.overruns)).to_string(),
            ),
            ("opus.tunnel.plc_frames".into(), s.plc_frames.to_string()),
            (
                "opus.tunnel.late_packets".into(),
                s.late_packets.to_string(),
            ),
            (
                "opus.tunnel.bytes_received".into(),
                s.bytes_received.to_string(),
            ),
        ]
    }
}

/// What the sound server does for the receiver (implemented by each daemon's module).
pub trait Host: Send + Sync + 'static {
    /// A tunnel passed its handshake: create a playback stream fed by the request's
    /// [`Playback`] on `conn.device` (or the host's default), then answer through the
    /// [`Replier`] — from any thread, within 5 s.
    fn open(&self, req: StreamRequest);
    /// A record tunnel passed its handshake: create a recording stream, *corked*, on
    /// `conn.device` (or the host's default source), whose audio goes to the request's
    /// [`tx::Feeder`]; keep it corked while [`ConnShared::recording`] is false (check on
    /// every [`Host::changed`]); answer through the [`Replier`]. The default refuses.
    fn open_record(&self, req: RecordRequest) {
        req.into_parts().4.refuse(
            STATUS_UNSUPPORTED_FORMAT,
            "this receiver does not serve record tunnels",
        );
    }
    /// A connection ended: the host should remove the streams whose
    /// [`ConnShared::is_closed`] is true.
    fn changed(&self);
}

/// A handshaken tunnel waiting for its stream.
pub struct StreamRequest {
    /// The connection's shared state (format, statistics, flags).
    pub conn: Arc<ConnShared>,
    /// The real-time side of the stream: hand it to the stream's callback.
    pub playback: Playback,
    /// `<sender's sink> on <sender's host>`.
    pub media_name: String,
    /// Properties for the stream (peer, remote name, codec).
    pub props: Vec<(String, String)>,
    reply: mpsc::Sender<Result<String, (u16, String)>>,
}

impl StreamRequest {
    /// Splits the request; the [`Replier`] answers the peer.
    pub fn into_parts(
        self,
    ) -> (
        Arc<ConnShared>,
        Playback,
        String,
        Vec<(String, String)>,
        Replier,
    ) {
        (
            self.conn,
            self.playback,
            self.media_name,
            self.props,
            Replier(self.reply),
        )
    }
}

/// A handshaken record tunnel waiting for its recording stream.
pub struct RecordRequest {
    /// The connection's shared state (format, statistics, flags).
    pub conn: Arc<ConnShared>,
    /// The real-time side: the recording stream's callback pushes what it records here
    /// (float32le at the connection's rate and channels).
    pub feeder: tx::Feeder,
    /// `<far end's source> on <far end's host>`.
    pub media_name: String,
    /// Properties for the stream.
    pub props: Vec<(String, String)>,
    reply: mpsc::Sender<Result<String, (u16, String)>>,
}

impl RecordRequest {
    /// Splits the request; the [`Replier`] answers the peer.
    pub fn into_parts(
        self,
    ) -> (
        Arc<ConnShared>,
        tx::Feeder,
        String,
        Vec<(String, String)>,
        Replier,
    ) {
        (
            self.conn,
            self.feeder,
            self.media_name,
            self.props,
            Replier(self.reply),
        )
    }
}

/// Answers a [`StreamRequest`] or [`RecordRequest`].
pub struct Replier(mpsc::Sender<Result<String, (u16, String)>>);

impl Replier {
    /// The stream plays on `device`.
    pub fn accept(self, device: &str) {
        let _ = self.0.send(Ok(device.to_string()));
    }

    /// No stream: the peer gets `status` (e.g. 404) and `reason`.
    pub fn refuse(self, status: u16, reason: &str) {
        let _ = self.0.send(Err((status, reason.to_string())));
    }
}

/// The receiver: listener thread, connection threads, limits. Dropping it stops all of them
/// (connections end within ~200 ms).
pub struct Receiver {
    shared: Arc<RecvShared>,
    listener: Option<JoinHandle<()>>,
    local: SocketAddr,
}

struct RecvShared {
    stop: AtomicBool,
    connections: AtomicUsize,
    handshaking: AtomicUsize,
    cfg: RecvConfig,
    host: Arc<dyn Host>,
    live: Mutex<Vec<Arc<ConnShared>>>,
}

impl Receiver {
    /// Serves tunnels arriving on `listener` (already bound) through `host`.
    pub fn start(
        listener: TcpListener,
        cfg: RecvConfig,
        host: Arc<dyn Host>,
    ) -> std::io::Result<Receiver> {
        let local = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(RecvShared {
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            cfg,
            host,
            live: Mutex::new(Vec::new()),
        });
        let s2 = shared.clone();
        let listener = thread::Builder::new()
            .name("opus-tunnel-listen".into())
            .spawn(move || accept_loop(listener, s2))?;
        Ok(Receiver {
            shared,
            listener: Some(listener),
            local,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Tunnels past their handshake (streaming, or waiting for their stream).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(live) = self.shared.live.lock() {
            for c in live.iter() {
                c.kill();
            }
        }
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
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
                    .spawn(move || serve(stream, peer, s))
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

/// Counts a connection in a counter for as long as it lives.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse(stream: &mut TcpStream, peer: SocketAddr, status: u16, reason: &str) {
    log::warn!("refused a tunnel from {peer}: {reason}");
    let _ = stream.write_all(Reply::refuse(status, reason).to_text().as_bytes());
}

enum HelloError {
    Io(String),
    Bad(HandshakeError),
}

/// Reads one handshake message (after `pending`, bytes already received), returning its text
/// and what followed it. Gives up at `deadline`, or within 200 ms when the receiver stops.
fn read_message(
    stream: &mut TcpStream,
    pending: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(String, Vec<u8>), HelloError> {
    let mut reader = HeadReader::new();
    if !pending.is_empty() {
        if let Some(m) = reader.push(pending).map_err(HelloError::Bad)? {
            return Ok(m);
        }
    }
    let mut buf = [0u8; 2048];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if Instant::now() >= deadline {
            return Err(HelloError::Io(format!(
                "the handshake did not complete within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        if stop.load(Ordering::SeqCst) {
            return Err(HelloError::Io("the receiver is stopping".into()));
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return Err(HelloError::Io(
                    "closed before the handshake was complete".into(),
                ))
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(HelloError::Io(e.to_string())),
        };
        if let Some(m) = reader.push(&buf[..n]).map_err(HelloError::Bad)? {
            return Ok(m);
        }
    }
}

fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<RecvShared>) {
    // Connections still in their handshake are counted apart, so that peers who never
    // complete one (they are closed at the 5 s deadline) cannot keep real tunnels out.
    let h = shared.handshaking.fetch_add(1, Ordering::SeqCst) + 1;
    let handshake_slot = Slot(&shared.handshaking);
    let cfg = &shared.cfg;
    if h > cfg.max_connections.max(64) {
        refuse(
            &mut stream,
            peer,
            STATUS_TOO_MANY_CONNECTIONS,
            "too many connections in their handshake",
        );
        return;
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(4)));
    // PulseAudio's rules: anonymous, or an address in the ACL, needs nothing more; anyone
    // else must prove the cookie, if cookie authentication is on.
    let trusted = cfg.anonymous || cfg.acl.as_ref().is_some_and(|a| a.allows(peer.ip()));
    let cookie = match (&cfg.cookie, trusted) {
        (_, true) => None,
        (Some(c), false) => Some(c.clone()),
        (None, false) => {
            refuse(
                &mut stream,
                peer,
                STATUS_FORBIDDEN,
                "address not allowed by auth-ip-acl, and cookie authentication is off",
            );
            return;
        }
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let parsed = read_message(&mut stream, &[], deadline, &shared.stop).and_then(|(text, rest)| {
        Hello::parse(&text)
            .map(|h| (text, h, rest))
            .map_err(HelloError::Bad)
    });
    let (hello_text, hello, mut rest) = match parsed {
        Ok(h) => h,
        Err(HelloError::Bad(HandshakeError::Version { theirs })) => {
            let mut r = Reply::refuse(
                STATUS_VERSION_NOT_SUPPORTED,
                format!("protocol version {theirs} is not supported"),
            );
            r.fields
                .insert("Supported".into(), crate::handshake::VERSION.to_string());
            log::warn!("refused a tunnel from {peer}: it speaks protocol version {theirs}");
            let _ = stream.write_all(r.to_text().as_bytes());
            return;
        }
        Err(HelloError::Bad(e)) => {
            refuse(
                &mut stream,
                peer,
                STATUS_BAD_REQUEST,
                &format!("bad handshake: {e}"),
            );
            return;
        }
        Err(HelloError::Io(e)) => {
            log::warn!("closed a connection from {peer} without a handshake: {e}");
            return;
        }
    };
    let mut verified = None;
    if let Some(cookie) = cookie {
        match authenticate(
            &mut stream,
            cookie,
            &hello_text,
            &hello,
            &mut rest,
            deadline,
            &shared.stop,
        ) {
            Ok(v) => verified = Some(v),
            Err(why) => {
                log::warn!("refused a tunnel from {peer}: {why}");
                return;
            }
        }
    }
    let fmt = StreamFormat {
        rate: hello.rate,
        channels: hello.channels,
    };
    if let Err(e) = codec::validate(hello.codec, &fmt) {
        refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e.to_string());
        return;
    }
    let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = Slot(&shared.connections);
    drop(handshake_slot);
    if n > cfg.max_connections {
        refuse(
            &mut stream,
            peer,
            STATUS_TOO_MANY_CONNECTIONS,
            &format!("max_connections={} reached", cfg.max_connections),
        );
        return;
    }
    let conn = new_conn(&hello, cfg.target_usec, peer.to_string());
    if let Ok(mut live) = shared.live.lock() {
        live.retain(|c| !c.is_closed());
        live.push(conn.clone());
    }
    match hello.direction {
        Direction::Play => serve_play(stream, peer, &shared, &hello, conn, rest, verified),
        Direction::Record => serve_capture(stream, peer, &shared, &hello, conn, verified),
    }
}

/// The shared state of a new connection described by `hello`.
fn new_conn(hello: &Hello, target_usec: u64, peer: String) -> Arc<ConnShared> {
    Arc::new(ConnShared {
        label: format!("{}@{}", hello.name, hello.host),
        rate: hello.rate,
        channels: hello.channels,
        channel_map: hello.channel_map.clone(),
        device: hello.device.clone(),
        target_usec,
        stats: Stats::new(),
        closed: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        fill: AtomicU64::new(0),
        epoch: Instant::now(),
        playout: Mutex::new(None),
        meter: Mutex::new(BitrateMeter::default()),
        peer,
        record: OnceLock::new(),
        recording: AtomicBool::new(false),
        flush: AtomicBool::new(false),
        ratio_bits: AtomicU64::new(1.0f64.to_bits()),
    })
}

/// Waits (at most the handshake deadline) for the host to answer a stream request.
fn await_answer(
    rx: &mpsc::Receiver<Result<String, (u16, String)>>,
    shared: &RecvShared,
) -> Result<String, (u16, String)> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => return a,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Err((503, "the receiver is busy or shutting down".into()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err((503, "the receiver is shutting down".into()))
            }
        }
    }
}

/// Properties of a tunnel's stream: who is at the other end, and the codec.
fn stream_props(peer: SocketAddr, hello: &Hello) -> Vec<(String, String)> {
    vec![
        ("opus.tunnel.peer".to_string(), peer.to_string()),
        ("opus.tunnel.remote_name".to_string(), hello.name.clone()),
        ("opus.tunnel.remote_host".to_string(), hello.host.clone()),
        ("compression".to_string(), hello.codec.as_str().to_string()),
    ]
}

/// Ends the handshake once the host has answered: the `200` with the device, or the
/// host's refusal. `None` (connection marked closed, host told) if there is no tunnel.
fn conclude(
    stream: &mut TcpStream,
    peer: SocketAddr,
    rx: &mpsc::Receiver<Result<String, (u16, String)>>,
    shared: &RecvShared,
    conn: &ConnShared,
    verified: &Option<Verified>,
) -> Option<String> {
    match await_answer(rx, shared) {
        Ok(device) if accept(stream, &device, verified) => return Some(device),
        Ok(_) => {}
        Err((status, reason)) => refuse(stream, peer, status, &reason),
    }
    conn.closed.store(true, Ordering::SeqCst);
    shared.host.changed();
    None
}

/// Sends the `200` (signed when the peer proved the cookie); false if the peer is gone.
fn accept(stream: &mut TcpStream, device: &str, verified: &Option<Verified>) -> bool {
    let mut ok = Reply::ok();
    ok.fields.insert("Device".into(), device.to_string());
    if let Some(v) = verified {
        v.sign(&mut ok);
    }
    stream.write_all(ok.to_text().as_bytes()).is_ok()
}

/// A play tunnel: the peer sends, we decode and play through the drift-correcting engine.
fn serve_play(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<RecvShared>,
    hello: &Hello,
    conn: Arc<ConnShared>,
    rest: Vec<u8>,
    verified: Option<Verified>,
) {
    let cfg = &shared.cfg;
    let fmt = StreamFormat {
        rate: hello.rate,
        channels: hello.channels,
    };
    let label = conn.label.clone();
    let setup = Decoder::new(hello.codec, fmt)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            PlayoutEngine::new(PlayoutConfig {
                rate: hello.rate,
                channels: hello.channels,
                target_usec: cfg.target_usec,
                max_usec: cfg.max_usec.max(cfg.target_usec),
            })
            .map(|mut e| {
                e.set_external_resampler(cfg.external_resampler);
                (d, e)
            })
            .map_err(|e| e.to_string())
        });
    let (decoder, engine) = match setup {
        Ok(x) => x,
        Err(e) => {
            refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e);
            conn.closed.store(true, Ordering::SeqCst);
            return;
        }
    };
    let (producer, consumer, report_tx, report_rx) = playout_rings(&conn, cfg);
    let (tx, rx) = mpsc::channel();
    let props = stream_props(peer, hello);
    shared.host.open(StreamRequest {
        conn: conn.clone(),
        playback: Playback::new(conn.clone(), consumer, report_tx),
        media_name: format!("{} on {}", hello.name, hello.host),
        props,
        reply: tx,
    });
    let Some(sink) = conclude(&mut stream, peer, &rx, shared, &conn, &verified) else {
        return;
    };
    log::info!(
        "tunnel {label} from {peer} plays on {sink} ({}, {} Hz, {} ch)",
        hello.codec.as_str(),
        hello.rate,
        hello.channels
    );
    conn.stats.set_state(TunnelState::Streaming);
    let mut c = Conn::from(stream);
    let why = Receive::new(
        conn.clone(),
        decoder,
        producer,
        report_rx,
        engine,
        codec::payload_type(hello.codec),
        cfg.max_usec.max(cfg.target_usec),
    )
    .run(&mut c, rest, &shared.stop);
    log::info!("tunnel {label} from {peer} ended: {why}");
    conn.stats.set_state(TunnelState::Closed);
    conn.closed.store(true, Ordering::SeqCst);
    c.shutdown();
    shared.host.changed();
}

/// The rings between a playout engine and the real-time side: audio (room for the maximum
/// latency plus two device periods) and device reports.
#[allow(clippy::type_complexity)]
fn playout_rings(
    conn: &ConnShared,
    cfg: &RecvConfig,
) -> (
    rtrb::Producer<f32>,
    rtrb::Consumer<f32>,
    rtrb::Producer<DeviceReport>,
    rtrb::Consumer<DeviceReport>,
) {
    let cap_usec = cfg.max_usec.max(cfg.target_usec) + 250_000;
    let cap = (u64::from(conn.rate) * u64::from(conn.channels) * cap_usec / 1_000_000) as usize;
    let (producer, consumer) = rtrb::RingBuffer::<f32>::new(cap);
    let (report_tx, report_rx) = rtrb::RingBuffer::<DeviceReport>::new(256);
    (producer, consumer, report_tx, report_rx)
}

/// Tells the host when the far end of a record tunnel wants audio.
struct HostCapture {
    conn: Arc<ConnShared>,
    host: Arc<dyn Host>,
}

impl tx::RemoteCapture for HostCapture {
    fn recording(&self, on: bool) {
        self.conn.recording.store(on, Ordering::SeqCst);
        self.host.changed();
    }
}

/// A record tunnel: we record a local source (only while the peer has readers), encode with
/// the knobs the peer asked for, and send.
fn serve_capture(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<RecvShared>,
    hello: &Hello,
    conn: Arc<ConnShared>,
    verified: Option<Verified>,
) {
    let label = conn.label.clone();
    let fmt = StreamFormat {
        rate: hello.rate,
        channels: hello.channels,
    };
    let mut knobs = OpusKnobs::default();
    for (k, v) in &hello.fields {
        if let Some(key) = KNOB_KEYS.iter().find(|key| key.eq_ignore_ascii_case(k)) {
            if let Err(e) = knobs.set(key, v) {
                refuse(&mut stream, peer, STATUS_BAD_REQUEST, &e.to_string());
                conn.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    if let Err(e) = codec::Encoder::new(hello.codec, fmt, &knobs) {
        refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e.to_string());
        conn.closed.store(true, Ordering::SeqCst);
        return;
    }
    let wcfg = tx::WorkerConfig {
        addr: ServerAddr::Tcp {
            host: peer.ip().to_string(),
            port: peer.port(),
        },
        remote_sink: None,
        name: label.clone(),
        host: String::new(),
        compression: hello.codec,
        fmt,
        sample_format: SampleFormat::F32Le,
        channel_map: hello.channel_map.clone(),
        // Sources post in blocks of their own choosing (module-sine-source: up to 2 s); the
        // encoder keeps up to three of them before it drops old audio.
        block_usec: 1_000_000,
        cookie: None,
    };
    // Three seconds between the recording stream and the encoder (float32).
    let ring_bytes = 4 * usize::from(hello.channels) * hello.rate as usize * 3;
    let (feeder, tshared, consumer) = tx::record_feeder(&wcfg, knobs, ring_bytes);
    let _ = conn.record.set(tshared.clone());
    let (tx, rx) = mpsc::channel();
    let props = stream_props(peer, hello);
    shared.host.open_record(RecordRequest {
        conn: conn.clone(),
        feeder,
        media_name: format!("{} on {}", hello.name, hello.host),
        props,
        reply: tx,
    });
    let Some(source) = conclude(&mut stream, peer, &rx, shared, &conn, &verified) else {
        return;
    };
    log::info!(
        "record tunnel {label} from {peer} records {source} ({}, {} Hz, {} ch), while it has readers",
        hello.codec.as_str(),
        hello.rate,
        hello.channels
    );
    let remote: Arc<dyn tx::RemoteCapture> = Arc::new(HostCapture {
        conn: conn.clone(),
        host: shared.host.clone(),
    });
    let why = tx::serve_record(wcfg, consumer, tshared, Conn::from(stream), remote);
    log::info!("record tunnel {label} from {peer} ended: {why}");
    conn.recording.store(false, Ordering::SeqCst);
    conn.closed.store(true, Ordering::SeqCst);
    shared.host.changed();
}

/// The cookie challenge: sends the `401` with our nonce, checks the sender's proof. On
/// failure the peer has been sent the refusal and the reason is returned for the log.
fn authenticate(
    stream: &mut TcpStream,
    cookie: Cookie,
    hello_text: &str,
    hello: &Hello,
    rest: &mut Vec<u8>,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Verified, String> {
    let mut sa = ServerAuth::new(cookie).map_err(|e| e.to_string())?;
    let challenge = match sa.on_hello(hello_text, hello) {
        Ok(c) => c,
        Err(e) => {
            let _ = stream.write_all(e.reply().to_text().as_bytes());
            return Err(e.to_string());
        }
    };
    stream
        .write_all(challenge.to_text().as_bytes())
        .map_err(|e| e.to_string())?;
    let (text, more) = match read_message(stream, rest, deadline, stop) {
        Ok(m) => m,
        Err(HelloError::Io(e)) => return Err(format!("no answer to the cookie challenge: {e}")),
        Err(HelloError::Bad(e)) => {
            let _ = stream.write_all(
                Reply::refuse(STATUS_BAD_REQUEST, format!("bad auth message: {e}"))
                    .to_text()
                    .as_bytes(),
            );
            return Err(format!("bad auth message: {e}"));
        }
    };
    *rest = more;
    match sa.on_auth(&text) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = stream.write_all(e.reply().to_text().as_bytes());
            Err(e.to_string())
        }
    }
}

/// What the real-time side reports to the connection thread after every pop: when, and the
/// running totals of frames taken from the ring and frames that were missing (played as
/// silence).
#[derive(Clone, Copy, Debug, Default)]
struct DeviceReport {
    now_usec: u64,
    consumed: u64,
    missing: u64,
}

/// How often the connection thread wakes at least (the engine wants ≤ 12 ms).
const WAKE: Duration = Duration::from_millis(10);

/// The receive pipeline of one connection: deframe, RTP, jitter buffer (gaps → PLC), decode,
/// then the drift-correcting playout engine, whose output goes into the ring.
struct Receive {
    conn: Arc<ConnShared>,
    decoder: Decoder,
    ring: rtrb::Producer<f32>,
    reports: rtrb::Consumer<DeviceReport>,
    playout: PlayoutEngine,
    /// Device counters at the engine's last reset (it counts from there).
    base: DeviceReport,
    last: DeviceReport,
    /// The sender paused; the engine restarts at the next packet.
    restart: bool,
    jitter: JitterBuffer,
    deframer: Deframer,
    pcm: Vec<f32>,
    out: Vec<f32>,
    ssrc: Option<u32>,
    payload_type: u8,
    max_usec: u64,
    /// `OPUS_TUNNEL_TRACE` set in the daemon's environment: log the engine's state 10×/s.
    trace: bool,
    /// The desktop end of a record tunnel tells the far end when to record and how.
    upstream: Option<Arc<Upstream>>,
    up_running: Option<bool>,
    up_gen: u64,
    /// Since when the engine's correction has been at its limit.
    saturated_since: Option<Instant>,
}

/// What the desktop end of a record tunnel relays to the capturing end.
struct Upstream {
    /// A stream records from the tunnel source.
    running: AtomicBool,
    knobs: Mutex<OpusKnobs>,
    knobs_gen: AtomicU64,
}

impl Receive {
    fn new(
        conn: Arc<ConnShared>,
        decoder: Decoder,
        ring: rtrb::Producer<f32>,
        reports: rtrb::Consumer<DeviceReport>,
        playout: PlayoutEngine,
        payload_type: u8,
        max_usec: u64,
    ) -> Receive {
        Receive {
            conn,
            decoder,
            ring,
            reports,
            playout,
            base: DeviceReport::default(),
            last: DeviceReport::default(),
            restart: false,
            jitter: JitterBuffer::new(64),
            deframer: Deframer::new(MAX_FRAME),
            pcm: Vec::new(),
            out: Vec::new(),
            ssrc: None,
            payload_type,
            max_usec,
            trace: std::env::var_os("OPUS_TUNNEL_TRACE").is_some(),
            upstream: None,
            up_running: None,
            up_gen: 0,
            saturated_since: None,
        }
    }

    fn run(&mut self, stream: &mut Conn, rest: Vec<u8>, stop: &AtomicBool) -> String {
        let _ = stream.set_timeouts(Some(WAKE), Some(Duration::from_secs(4)));
        let mut reporter = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let mut last_heard = Instant::now();
        let mut last_report = Instant::now();
        let mut last_stats = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        if let Err(e) = self.consume(&rest) {
            return e;
        }
        loop {
            if self.conn.killed() || stop.load(Ordering::SeqCst) {
                let mut pkt = Vec::new();
                rtp::write_rtcp(
                    0,
                    &[Control::Bye("stream closed by the receiver".into())],
                    &mut pkt,
                );
                let mut w = Vec::new();
                if framing::frame(&pkt, &mut w).is_ok() {
                    let _ = reporter.write_all(&w);
                }
                return "closed by the receiver".into();
            }
            match stream.read(&mut buf) {
                Ok(0) => return "the sender closed the connection".into(),
                Ok(n) => {
                    last_heard = Instant::now();
                    self.conn
                        .stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if let Err(e) = self.consume(&buf[..n]) {
                        return e;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if last_heard.elapsed() > DEAD_AFTER {
                        return format!("nothing heard for {} s", DEAD_AFTER.as_secs());
                    }
                }
                Err(e) => return e.to_string(),
            }
            if let Err(e) = self.tick() {
                return e;
            }
            if let Err(e) = self.relay_upstream(&mut reporter) {
                return e;
            }
            if last_stats.elapsed() >= Duration::from_millis(100) {
                last_stats = Instant::now();
                if let Ok(mut st) = self.conn.playout.lock() {
                    *st = Some(self.playout.stats());
                }
                if self.trace {
                    let c = self.playout.controller();
                    log::info!(
                        "trace {} dev consumed={} missing={} period={:.0} ring={} fifo={} produced={} {:?}",
                        self.conn.now_usec(),
                        self.last.consumed.saturating_sub(self.base.consumed),
                        self.last.missing.saturating_sub(self.base.missing),
                        c.device_period(),
                        self.conn.fill.load(Ordering::Relaxed),
                        c.fifo_frames(),
                        c.produced(),
                        self.playout.stats()
                    );
                }
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let p = self.playout.stats();
                let s = self.conn.stats.snapshot();
                let kv = vec![
                    ("latency_usec".to_string(), p.latency_usec.to_string()),
                    ("target_latency_usec".to_string(), p.target_usec.to_string()),
                    ("drift_ppm".to_string(), format!("{:.1}", p.drift_ppm)),
                    ("underruns".to_string(), p.underruns.to_string()),
                    ("plc_frames".to_string(), s.plc_frames.to_string()),
                ];
                // While the sender is paused a bare keepalive says we are alive (14 bytes).
                let msg = if self.conn.paused.load(Ordering::Relaxed) {
                    Control::Keepalive
                } else {
                    Control::Report(kv)
                };
                let mut pkt = Vec::new();
                rtp::write_rtcp(0, &[msg], &mut pkt);
                let mut w = Vec::new();
                if framing::frame(&pkt, &mut w).is_ok() && reporter.write_all(&w).is_err() {
                    return "cannot send reports to the sender".into();
                }
            }
        }
    }

    /// Desktop end of a record tunnel: tells the far end to record (or stop) as readers come
    /// and go, and relays knob changes.
    fn relay_upstream(&mut self, w: &mut Conn) -> Result<(), String> {
        let Some(u) = self.upstream.clone() else {
            return Ok(());
        };
        let mut msgs = Vec::new();
        let running = u.running.load(Ordering::SeqCst);
        if self.up_running != Some(running) {
            self.up_running = Some(running);
            msgs.push(if running {
                Control::Resume
            } else {
                Control::Pause
            });
        }
        let gen = u.knobs_gen.load(Ordering::SeqCst);
        if gen != self.up_gen {
            self.up_gen = gen;
            let knobs = u.knobs.lock().map(|k| *k).unwrap_or_default();
            let kv = knobs
                .properties()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            msgs.push(Control::Knobs(kv));
        }
        if msgs.is_empty() {
            return Ok(());
        }
        let mut pkt = Vec::new();
        rtp::write_rtcp(0, &msgs, &mut pkt);
        let mut out = Vec::new();
        framing::frame(&pkt, &mut out).map_err(|e| e.to_string())?;
        w.write_all(&out)
            .map_err(|e| format!("cannot reach the far end: {e}"))
    }

    /// A new connection of a record tunnel: everything but the ring and the device counters
    /// starts afresh.
    fn new_session(&mut self, decoder: Decoder) {
        self.decoder = decoder;
        self.jitter.reset();
        self.deframer = Deframer::new(MAX_FRAME);
        self.restart_engine();
        self.ssrc = None;
        self.restart = false;
        self.up_running = None;
        self.conn.paused.store(false, Ordering::Relaxed);
    }

    /// Device reports in, concealment if the stream is late, resampled audio out to the ring.
    fn tick(&mut self) -> Result<(), String> {
        while let Ok(r) = self.reports.pop() {
            self.last = r;
            if !self.restart && !self.conn.paused.load(Ordering::Relaxed) {
                self.playout.on_device(
                    r.now_usec,
                    r.consumed.saturating_sub(self.base.consumed),
                    r.missing.saturating_sub(self.base.missing),
                );
            }
        }
        if self.restart || self.conn.paused.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = self.conn.now_usec();
        if let Some(n) = self.playout.conceal_needed(now) {
            self.pcm.clear();
            self.decoder
                .conceal(n, &mut self.pcm)
                .map_err(|e| format!("concealment: {e}"))?;
            self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
            self.playout.on_conceal(&self.pcm);
        }
        // Nothing is produced before the device has started to pull: until then the audio
        // waits in the engine (which slews it down if it passes the maximum latency).
        if self.last.consumed + self.last.missing == 0 {
            // A sink that never pulls (e.g. PulseAudio mixes at most 32 streams per sink)
            // must not make us hold audio without bound.
            let fifo_usec = self.playout.controller().fifo_frames() * 1_000_000
                / u64::from(self.conn.rate.max(1));
            if fifo_usec > self.max_usec {
                self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
                self.restart_engine();
            }
            return Ok(());
        }
        self.playout.produce(&mut self.out);
        self.conn.ratio_bits.store(
            self.playout.controller().ratio().to_bits(),
            Ordering::Relaxed,
        );
        self.flush();
        // Watchdog: the engine's loop can lose its estimate after a burst (a stall, the first
        // stream on an idle sink) and hold its full 1 % correction for many seconds, an
        // audible pitch shift. Held for 3 s (a normal start takes up to ~1.5 s), start
        // afresh instead (a short gap).
        let st = self.playout.stats();
        if st.state == PlayoutState::Locked && st.drift_ppm.abs() >= 9_000.0 {
            let since = *self.saturated_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                log::debug!(
                    "{}: drift correction saturated for 3 s; restarting playout",
                    self.conn.label
                );
                self.saturated_since = None;
                self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
                self.restart_engine();
            }
        } else {
            self.saturated_since = None;
        }
        // The device stopped pulling (suspended, moved, stalled): what waits is stale. Start
        // afresh rather than drop audio behind the engine's back.
        let limit = self.out_limit();
        if self.out.len() > limit {
            self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "{}: the device stopped taking audio; restarting playout",
                self.conn.label
            );
            self.restart_engine();
        }
        Ok(())
    }

    /// Starts the engine afresh. What is still in the ring is stale: the real-time side
    /// throws it away at its next pop (uncounted), so the engine starts from an empty ring.
    fn restart_engine(&mut self) {
        if self.ring.buffer().capacity() > self.ring.slots() {
            self.conn.flush.store(true, Ordering::SeqCst);
        }
        self.playout.reset();
        self.out.clear();
        self.base = self.last;
    }

    /// Moves produced audio into the ring, as much as fits; the rest waits in `out` (it is
    /// part of the latency the engine accounts for, so it must not be dropped silently).
    fn flush(&mut self) {
        let n = self.out.len().min(self.ring.slots());
        if n == 0 {
            return;
        }
        if let Ok(chunk) = self.ring.write_chunk_uninit(n) {
            chunk.fill_from_iter(self.out[..n].iter().copied());
        }
        self.out.drain(..n);
    }

    /// The most produced audio that may wait outside the ring: the maximum latency.
    fn out_limit(&self) -> usize {
        let per_sec = u64::from(self.conn.rate) * u64::from(self.conn.channels);
        (per_sec * self.max_usec / 1_000_000) as usize
    }

    /// Feeds received bytes through the pipeline. An `Err` closes the connection.
    fn consume(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.deframer.push(bytes);
        loop {
            let frame = match self.deframer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad framing: {e}")),
            };
            if rtp::is_rtcp(&frame) {
                let controls = rtp::parse_rtcp(&frame).map_err(|e| format!("bad RTCP: {e}"))?;
                for c in controls {
                    match c {
                        Control::Pause => {
                            self.conn.paused.store(true, Ordering::Relaxed);
                            self.restart = true;
                        }
                        Control::Bye(why) => return Err(format!("the sender said goodbye: {why}")),
                        _ => {}
                    }
                }
                continue;
            }
            let (h, payload) = rtp::parse_rtp(&frame).map_err(|e| format!("bad RTP: {e}"))?;
            if h.payload_type != self.payload_type {
                return Err(format!(
                    "RTP payload type {} where the handshake agreed on {}",
                    h.payload_type, self.payload_type
                ));
            }
            if self.ssrc != Some(h.ssrc) {
                if self.ssrc.is_some() {
                    self.jitter.reset();
                    self.restart = true;
                }
                self.ssrc = Some(h.ssrc);
            }
            if self.restart {
                // After a pause the ring has run dry: the engine starts afresh, counting the
                // device from here.
                self.restart = false;
                self.restart_engine();
            }
            self.conn.paused.store(false, Ordering::Relaxed);
            self.conn
                .stats
                .packets_received
                .fetch_add(1, Ordering::Relaxed);
            match self.jitter.push(h.seq, h.timestamp, payload.to_vec()) {
                PushResult::Late | PushResult::Duplicate => {
                    self.conn.stats.late_packets.fetch_add(1, Ordering::Relaxed);
                }
                PushResult::Overflow => {
                    self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                PushResult::Accepted => {}
            }
            self.drain_jitter()?;
        }
    }

    /// The stream position of an RTP timestamp, in frames at the stream's rate.
    fn position(&self, ts: u32) -> u32 {
        let clock = self.decoder.rtp_clock_rate();
        if clock == self.conn.rate {
            ts
        } else {
            (u64::from(ts) * u64::from(self.conn.rate) / u64::from(clock.max(1))) as u32
        }
    }

    fn drain_jitter(&mut self) -> Result<(), String> {
        while let Some(p) = self.jitter.pop() {
            self.pcm.clear();
            let ts = match p {
                Playout::Packet { payload, timestamp } => {
                    if let Err(e) = self.decoder.decode(&payload, &mut self.pcm) {
                        // A corrupt packet is concealed like a lost one, not fatal.
                        log::debug!("{}: undecodable packet ({e}); concealed", self.conn.label);
                        self.pcm.clear();
                        let n = self.decoder.ticks_to_samples(codec::OPUS_RTP_CLOCK / 50);
                        let _ = self.decoder.conceal(n, &mut self.pcm);
                        self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    timestamp
                }
                Playout::Missing { ticks, timestamp } => {
                    let n = self.decoder.ticks_to_samples(ticks);
                    if n > 0 {
                        self.decoder
                            .conceal(n, &mut self.pcm)
                            .map_err(|e| format!("concealment: {e}"))?;
                        self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    timestamp
                }
            };
            if !self.pcm.is_empty() {
                let now = self.conn.now_usec();
                let pos = self.position(ts);
                self.playout.on_packet(now, pos, &self.pcm);
            }
        }
        self.tick()
    }
}

/// The stream's side on the daemon's real-time thread: takes the engine's audio out of the
/// ring, plays silence where there is none, and reports what it took (and when) to the
/// connection thread. Lock-free and allocation-free.
pub struct Playback {
    conn: Arc<ConnShared>,
    ring: rtrb::Consumer<f32>,
    reports: rtrb::Producer<DeviceReport>,
    consumed: u64,
    missing: u64,
}

impl Playback {
    fn new(
        conn: Arc<ConnShared>,
        ring: rtrb::Consumer<f32>,
        reports: rtrb::Producer<DeviceReport>,
    ) -> Playback {
        Playback {
            conn,
            ring,
            reports,
            consumed: 0,
            missing: 0,
        }
    }

    /// Fills `out` (interleaved samples) completely, with silence where nothing is there.
    pub fn pop(&mut self, out: &mut [f32]) {
        self.pop_with(out.len(), |i, v| out[i] = v);
    }

    /// Fills `out` with float32 little-endian samples (PulseAudio's `float32le`).
    pub fn pop_bytes(&mut self, out: &mut [u8]) {
        let n = out.len() / 4;
        self.pop_with(n, |i, v| {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes())
        });
    }

    fn pop_with(&mut self, want: usize, mut put: impl FnMut(usize, f32)) {
        let ch = usize::from(self.conn.channels.max(1));
        if self.conn.flush.swap(false, Ordering::SeqCst) {
            let stale = self.ring.slots();
            if let Ok(c) = self.ring.read_chunk(stale) {
                c.commit_all();
            }
        }
        let want = (want / ch) * ch;
        let take = (self.ring.slots().min(want) / ch) * ch;
        if let Ok(chunk) = self.ring.read_chunk(take) {
            let (a, b) = chunk.as_slices();
            for (i, v) in a.iter().chain(b.iter()).enumerate() {
                put(i, *v);
            }
            chunk.commit_all();
        }
        (take..want).for_each(|i| put(i, 0.0));
        self.consumed += (take / ch) as u64;
        self.missing += ((want - take) / ch) as u64;
        // If the connection thread is behind, a report is dropped: the next one carries the
        // running totals anyway.
        let _ = self.reports.push(DeviceReport {
            now_usec: self.conn.now_usec(),
            consumed: self.consumed,
            missing: self.missing,
        });
        self.conn.set_fill(self.ring.slots());
    }

    /// The engine's resampling ratio (output frames per input frame) for a host that
    /// resamples itself ([`RecvConfig::external_resampler`]); 1 before the engine runs.
    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.conn.ratio_bits.load(Ordering::Relaxed))
    }

    /// Audio waiting in the ring, µs.
    pub fn queued_usec(&self) -> u64 {
        self.conn.samples_to_usec(self.ring.slots())
    }
}

/// The desktop end of a record tunnel (`module-tunnel-source-opus`).
pub struct RecordClientConfig {
    /// The capturing end (`module-opus-protocol-tcp`).
    pub addr: ServerAddr,
    /// The source to record there (`None`: its default source).
    pub remote_source: Option<String>,
    /// Our source's name (the far end names its recording stream after it).
    pub name: String,
    /// Our host name.
    pub host: String,
    /// Opus or L16.
    pub compression: Compression,
    /// Rate and channels.
    pub fmt: StreamFormat,
    /// Channel map, PulseAudio's text form.
    pub channel_map: String,
    /// Buffer target, µs (the playout engine holds it against drift).
    pub target_usec: u64,
    /// The most the target may grow to after underruns, µs.
    pub max_usec: u64,
    /// The cookie to prove when the far end asks.
    pub cookie: Option<Cookie>,
}

struct ClientShared {
    stop: AtomicBool,
    up: Arc<Upstream>,
    conn: Arc<ConnShared>,
    sock: Mutex<Option<Conn>>,
    reconnects: AtomicU64,
}

/// A running record tunnel, desktop end: a thread that connects (and reconnects with
/// back-off), asks the far end to record only while [`RecordClient::set_running`] says
/// someone reads, and plays what arrives through the drift-correcting engine into the ring
/// behind the [`Playback`]. Dropping it stops the thread.
pub struct RecordClient {
    shared: Arc<ClientShared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the desktop end of a record tunnel. The [`Playback`] is for the source's real-time
/// thread (it pops what the source posts).
pub fn start_record(
    cfg: RecordClientConfig,
    knobs: OpusKnobs,
) -> Result<(Playback, RecordClient), String> {
    let hello = Hello {
        version: crate::handshake::VERSION,
        direction: Direction::Record,
        name: cfg.name.clone(),
        host: cfg.host.clone(),
        device: cfg.remote_source.clone(),
        codec: cfg.compression,
        rate: cfg.fmt.rate,
        channels: cfg.fmt.channels,
        channel_map: cfg.channel_map.clone(),
        frame_usec: knobs.frame_size.usec(),
        target_latency_usec: None,
        fields: Default::default(),
    };
    let conn = new_conn(&hello, cfg.target_usec, cfg.addr.to_string());
    let rcfg = RecvConfig {
        anonymous: true,
        acl: None,
        cookie: None,
        sink: None,
        target_usec: cfg.target_usec,
        max_usec: cfg.max_usec.max(cfg.target_usec),
        max_connections: 1,
        external_resampler: false,
    };
    let decoder = Decoder::new(cfg.compression, cfg.fmt).map_err(|e| e.to_string())?;
    let engine = PlayoutEngine::new(PlayoutConfig {
        rate: cfg.fmt.rate,
        channels: cfg.fmt.channels,
        target_usec: rcfg.target_usec,
        max_usec: rcfg.max_usec,
    })
    .map_err(|e| e.to_string())?;
    let (producer, consumer, report_tx, report_rx) = playout_rings(&conn, &rcfg);
    let mut receive = Receive::new(
        conn.clone(),
        decoder,
        producer,
        report_rx,
        engine,
        codec::payload_type(cfg.compression),
        rcfg.max_usec,
    );
    let up = Arc::new(Upstream {
        running: AtomicBool::new(false),
        knobs: Mutex::new(knobs),
        knobs_gen: AtomicU64::new(0),
    });
    receive.upstream = Some(up.clone());
    let shared = Arc::new(ClientShared {
        stop: AtomicBool::new(false),
        up,
        conn: conn.clone(),
        sock: Mutex::new(None),
        reconnects: AtomicU64::new(0),
    });
    let s2 = shared.clone();
    let thread = thread::Builder::new()
        .name("opus-tunnel-rec".into())
        .spawn(move || record_client_loop(cfg, hello, receive, s2))
        .map_err(|e| format!("cannot start the tunnel's thread: {e}"))?;
    Ok((
        Playback::new(conn, consumer, report_tx),
        RecordClient {
            shared,
            thread: Some(thread),
        },
    ))
}

fn record_client_loop(
    cfg: RecordClientConfig,
    hello: Hello,
    mut receive: Receive,
    shared: Arc<ClientShared>,
) {
    let mut backoff = crate::params::Backoff::new();
    let mut failures = 0u32;
    let mut ever = false;
    let name = cfg.name.clone();
    while !shared.stop.load(Ordering::SeqCst) {
        shared.conn.stats.set_state(if ever {
            TunnelState::Reconnecting
        } else {
            TunnelState::Connecting
        });
        let mut h = hello.clone();
        let knobs = shared.up.knobs.lock().map(|k| *k).unwrap_or_default();
        for (k, v) in knobs.properties() {
            h.fields.insert(k.to_string(), v);
        }
        let gen = shared.up.knobs_gen.load(Ordering::SeqCst);
        match tx::client_handshake(&cfg.addr, h, cfg.cookie.clone(), &shared.sock, &name) {
            Ok((mut conn, reply, rest)) => {
                if ever {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ever = true;
                failures = 0;
                backoff.reset();
                let dev = reply.fields.get("Device").cloned().unwrap_or_default();
                log::info!(
                    "{name}: connected to {}, recording its source {dev}",
                    cfg.addr
                );
                match Decoder::new(cfg.compression, cfg.fmt) {
                    Ok(d) => receive.new_session(d),
                    Err(e) => {
                        log::error!("{name}: {e}");
                        break;
                    }
                }
                receive.up_gen = gen;
                shared.conn.stats.set_state(TunnelState::Streaming);
                let why = receive.run(&mut conn, rest, &shared.stop);
                conn.shutdown();
                if let Ok(mut s) = shared.sock.lock() {
                    *s = None;
                }
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                log::warn!("{name}: link to {} lost ({why}); reconnecting", cfg.addr);
            }
            Err(e) => {
                if let Ok(mut s) = shared.sock.lock() {
                    *s = None;
                }
                failures += 1;
                if failures == 1 {
                    log::warn!(
                        "{name}: cannot reach {}: {e}; retrying with back-off",
                        cfg.addr
                    );
                } else {
                    log::debug!("{name}: retry {failures} to {} failed: {e}", cfg.addr);
                }
            }
        }
        let until = Instant::now() + backoff.next_delay();
        while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    shared.conn.stats.set_state(TunnelState::Closed);
}

impl RecordClient {
    /// Whether someone records from the tunnel source (lock-free; the source's real-time
    /// thread calls it). The far end records only while this is true.
    pub fn set_running(&self, on: bool) {
        self.shared.up.running.store(on, Ordering::SeqCst);
    }

    /// A handle for the real-time thread to call [`RecordClient::set_running`] through.
    pub fn running_flag(&self) -> RunningFlag {
        RunningFlag(self.shared.clone())
    }

    /// The knobs the far end's encoder is asked to use.
    pub fn knobs(&self) -> OpusKnobs {
        self.shared.up.knobs.lock().map(|k| *k).unwrap_or_default()
    }

    /// Relays new knobs to the far end's encoder (live, no reconnect). Check them first.
    pub fn set_knobs(&self, knobs: OpusKnobs) {
        if let Ok(mut k) = self.shared.up.knobs.lock() {
            *k = knobs;
        }
        self.shared.up.knobs_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The statistics as `opus.tunnel.*` properties (call about once a second).
    pub fn stat_properties(&self) -> Vec<(String, String)> {
        let mut v = self.shared.conn.stat_properties();
        if !self.shared.up.running.load(Ordering::SeqCst) {
            for (k, val) in v.iter_mut() {
                // Nothing reads the tunnel source: the far end does not record, and the
                // engine waits for audio that will not come until a reader appears.
                if k == "opus.tunnel.state"
                    && matches!(val.as_str(), "streaming" | "buffering" | "slewing")
                {
                    *val = "idle".into();
                }
            }
        }
        v.push((
            "opus.tunnel.reconnects".into(),
            self.shared.reconnects.load(Ordering::Relaxed).to_string(),
        ));
        v
    }
}

/// Lets a real-time thread say whether the tunnel source has readers.
pub struct RunningFlag(Arc<ClientShared>);

impl RunningFlag {
    /// See [`RecordClient::set_running`].
    pub fn set(&self, on: bool) {
        self.0.up.running.store(on, Ordering::SeqCst);
    }
}

impl Drop for RecordClient {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A connect in progress can take up to 3 s; a blocked read or handshake ends when its
        // socket is shut down.
        if let Ok(s) = self.shared.sock.lock() {
            if let Some(c) = s.as_ref() {
                c.shutdown();
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
