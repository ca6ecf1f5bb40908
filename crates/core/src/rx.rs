//! One accepted connection: handshake, then read → deframe → RTP → jitter buffer → decode →
//! ring, on its own thread. Anything a peer sends that we cannot use closes that connection
//! with a log line; nothing it sends can panic the daemon or grow memory without bound.
use crate::RecvShared;
use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::codec::{self, Decoder, StreamFormat};
use opus_tunnel_core::framing::{self, Deframer};
use opus_tunnel_core::handshake::{
    Direction, HandshakeError, HeadReader, Hello, Reply, STATUS_BAD_REQUEST, STATUS_FORBIDDEN,
    STATUS_TOO_MANY_CONNECTIONS, STATUS_UNSUPPORTED_FORMAT, STATUS_VERSION_NOT_SUPPORTED,
};
use opus_tunnel_core::jitter::{JitterBuffer, Playout, PushResult};
use opus_tunnel_core::rtp::{self, Control};
use opus_tunnel_core::stats::{BitrateMeter, Stats, TunnelState};
use opus_tunnel_pulse::Proplist;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver's settings from its module arguments.
pub struct RecvConfig {
    pub anonymous: bool,
    pub acl: Option<IpAcl>,
    pub sink: Option<String>,
    pub target_usec: u64,
    pub max_connections: usize,
}

/// Largest RFC 4571 frame a sender may send us (an Opus packet is at most a few KB; a 60 ms
/// L16 frame of 8 channels at 48 kHz is 46 KB).
const MAX_FRAME: usize = 65535;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A sender that is silent (no audio, no keepalive) for this long is considered gone.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How much decoded audio the ring between this thread and the sink can hold.
const RING_SECONDS: u64 = 2;

/// What the connection thread shares with the main thread and the sink's IO thread.
pub struct ConnShared {
    pub label: String,
    pub rate: u32,
    pub channels: u8,
    pub channel_map: String,
    pub device: Option<String>,
    pub target_usec: u64,
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
    peer: SocketAddr,
}

impl ConnShared {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub fn set_fill(&self, samples: usize) {
        self.fill.store(samples as u64, Ordering::Relaxed);
    }

    pub fn samples_to_usec(&self, samples: usize) -> u64 {
        let per_sec = u64::from(self.rate) * u64::from(self.channels);
        samples as u64 * 1_000_000 / per_sec.max(1)
    }

    fn latency_usec(&self) -> u64 {
        self.samples_to_usec(self.fill.load(Ordering::Relaxed) as usize)
    }

    /// The statistics as stream properties (main thread).
    pub fn stat_properties(&self) -> Proplist {
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
        let mut p = Proplist::new();
        p.set("opus.tunnel.state", state.as_str());
        p.set("opus.tunnel.peer", &self.peer.to_string());
        p.set("opus.tunnel.bitrate", &bitrate.to_string());
        p.set("opus.tunnel.latency_usec", &self.latency_usec().to_string());
        p.set(
            "opus.tunnel.target_latency_usec",
            &self.target_usec.to_string(),
        );
        p.set("opus.tunnel.underruns", &s.underruns.to_string());
        p.set("opus.tunnel.overruns", &s.overruns.to_string());
        p.set("opus.tunnel.plc_frames", &s.plc_frames.to_string());
        p.set("opus.tunnel.late_packets", &s.late_packets.to_string());
        p.set("opus.tunnel.bytes_received", &s.bytes_received.to_string());
        p
    }
}

/// A handshaken tunnel waiting for the main thread to create its stream.
pub struct Pending {
    pub conn: Arc<ConnShared>,
    pub ring: rtrb::Consumer<f32>,
    pub hello_name: String,
    pub props: Vec<(String, String)>,
    /// The sink's name, or a refusal (status, reason).
    pub reply: mpsc::Sender<Result<String, (u16, String)>>,
}

/// Counts this connection among the open ones for as long as it lives.
struct Slot<'a>(&'a RecvShared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
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

/// Reads the hello, with a deadline and a size limit.
/// Gives up at the deadline, or within 200 ms when the module unloads.
fn read_hello(stream: &mut TcpStream, stop: &AtomicBool) -> Result<(Hello, Vec<u8>), HelloError> {
    let mut reader = HeadReader::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        if Instant::now() >= deadline {
            return Err(HelloError::Io("no complete hello within 5 s".into()));
        }
        if stop.load(Ordering::SeqCst) {
            return Err(HelloError::Io("the receiver is unloading".into()));
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return Err(HelloError::Io(
                    "closed before the hello was complete".into(),
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
        if let Some((text, rest)) = reader.push(&buf[..n]).map_err(HelloError::Bad)? {
            return Ok((Hello::parse(&text).map_err(HelloError::Bad)?, rest));
        }
    }
}

pub fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<RecvShared>) {
    let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = Slot(&shared);
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(4)));
    if !cfg.anonymous {
        let ok = cfg.acl.as_ref().is_some_and(|a| a.allows(peer.ip()));
        if !ok {
            refuse(
                &mut stream,
                peer,
                STATUS_FORBIDDEN,
                "address not allowed by auth-ip-acl",
            );
            return;
        }
    }
    if n > cfg.max_connections {
        refuse(
            &mut stream,
            peer,
            STATUS_TOO_MANY_CONNECTIONS,
            &format!("max_connections={} reached", cfg.max_connections),
        );
        return;
    }
    let (hello, rest) = match read_hello(&mut stream, &shared.stop) {
        Ok(h) => h,
        Err(HelloError::Bad(HandshakeError::Version { theirs })) => {
            let mut r = Reply::refuse(
                STATUS_VERSION_NOT_SUPPORTED,
                format!("protocol version {theirs} is not supported"),
            );
            r.fields.insert(
                "Supported".into(),
                opus_tunnel_core::handshake::VERSION.to_string(),
            );
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
    if hello.direction != Direction::Play {
        refuse(
            &mut stream,
            peer,
            STATUS_UNSUPPORTED_FORMAT,
            "record tunnels are not supported by this receiver yet",
        );
        return;
    }
    let fmt = StreamFormat {
        rate: hello.rate,
        channels: hello.channels,
    };
    if let Err(e) = codec::validate(hello.codec, &fmt) {
        refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e.to_string());
        return;
    }
    let decoder = match Decoder::new(hello.codec, fmt) {
        Ok(d) => d,
        Err(e) => {
            refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e.to_string());
            return;
        }
    };
    let label = format!("{}@{}", hello.name, hello.host);
    let conn = Arc::new(ConnShared {
        label: label.clone(),
        rate: hello.rate,
        channels: hello.channels,
        channel_map: hello.channel_map.clone(),
        device: hello.device.clone(),
        target_usec: cfg.target_usec,
        stats: Stats::new(),
        closed: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        fill: AtomicU64::new(0),
        meter: Mutex::new(BitrateMeter::default()),
        peer,
    });
    let cap = (u64::from(hello.rate) * u64::from(hello.channels) * RING_SECONDS) as usize;
    let (producer, consumer) = rtrb::RingBuffer::<f32>::new(cap);
    let (tx, rx) = mpsc::channel();
    let props = vec![
        ("opus.tunnel.peer".to_string(), peer.to_string()),
        ("opus.tunnel.remote_name".to_string(), hello.name.clone()),
        ("opus.tunnel.remote_host".to_string(), hello.host.clone()),
        ("compression".to_string(), hello.codec.as_str().to_string()),
    ];
    let pending = Pending {
        conn: conn.clone(),
        ring: consumer,
        hello_name: format!("{} on {}", hello.name, hello.host),
        props,
        reply: tx,
    };
    match shared.pending.lock() {
        Ok(mut q) => q.push_back(pending),
        Err(_) => return,
    }
    shared.wake_main();
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let answer = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => break a,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break Err((503, "the receiver is busy or shutting down".into()));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err((503, "the receiver is shutting down".into()))
            }
        }
    };
    let sink = match answer {
        Ok(s) => s,
        Err((status, reason)) => {
            refuse(&mut stream, peer, status, &reason);
            conn.closed.store(true, Ordering::SeqCst);
            shared.wake_main();
            return;
        }
    };
    let mut ok = Reply::ok();
    ok.fields.insert("Device".into(), sink.clone());
    if stream.write_all(ok.to_text().as_bytes()).is_err() {
        conn.closed.store(true, Ordering::SeqCst);
        shared.wake_main();
        return;
    }
    log::info!(
        "tunnel {label} from {peer} plays on {sink} ({}, {} Hz, {} ch)",
        hello.codec.as_str(),
        hello.rate,
        hello.channels
    );
    conn.stats.set_state(TunnelState::Streaming);
    let why = Receive::new(
        conn.clone(),
        decoder,
        producer,
        codec::payload_type(hello.codec),
    )
    .run(&mut stream, rest, &shared);
    log::info!("tunnel {label} from {peer} ended: {why}");
    conn.stats.set_state(TunnelState::Closed);
    conn.closed.store(true, Ordering::SeqCst);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    shared.wake_main();
}

/// The receive pipeline of one connection.
struct Receive {
    conn: Arc<ConnShared>,
    decoder: Decoder,
    ring: rtrb::Producer<f32>,
    jitter: JitterBuffer,
    deframer: Deframer,
    pcm: Vec<f32>,
    ssrc: Option<u32>,
    payload_type: u8,
}

impl Receive {
    fn new(
        conn: Arc<ConnShared>,
        decoder: Decoder,
        ring: rtrb::Producer<f32>,
        payload_type: u8,
    ) -> Receive {
        Receive {
            conn,
            decoder,
            ring,
            jitter: JitterBuffer::new(64),
            deframer: Deframer::new(MAX_FRAME),
            pcm: Vec::new(),
            ssrc: None,
            payload_type,
        }
    }

    fn run(mut self, stream: &mut TcpStream, rest: Vec<u8>, shared: &RecvShared) -> String {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reporter = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => return e.to_string(),
        };
        let mut last_heard = Instant::now();
        let mut last_report = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        if let Err(e) = self.consume(&rest) {
            return e;
        }
        loop {
            if self.conn.killed() || shared.stop.load(Ordering::SeqCst) {
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
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let s = self.conn.stats.snapshot();
                let kv = vec![
                    (
                        "latency_usec".to_string(),
                        self.conn.latency_usec().to_string(),
                    ),
                    ("underruns".to_string(), s.underruns.to_string()),
                    ("plc_frames".to_string(), s.plc_frames.to_string()),
                ];
                let mut pkt = Vec::new();
                rtp::write_rtcp(0, &[Control::Report(kv)], &mut pkt);
                let mut w = Vec::new();
                if framing::frame(&pkt, &mut w).is_ok() && reporter.write_all(&w).is_err() {
                    return "cannot send reports to the sender".into();
                }
            }
        }
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
                        Control::Pause => self.conn.paused.store(true, Ordering::Relaxed),
                        Control::Resume => self.conn.paused.store(false, Ordering::Relaxed),
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
                }
                self.ssrc = Some(h.ssrc);
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

    fn drain_jitter(&mut self) -> Result<(), String> {
        while let Some(p) = self.jitter.pop() {
            self.pcm.clear();
            match p {
                Playout::Packet { payload, .. } => {
                    if let Err(e) = self.decoder.decode(&payload, &mut self.pcm) {
                        // A corrupt packet is concealed like a lost one, not fatal.
                        log::debug!("{}: undecodable packet ({e}); concealed", self.conn.label);
                        self.pcm.clear();
                        let n = self.decoder.ticks_to_samples(codec::OPUS_RTP_CLOCK / 50);
                        let _ = self.decoder.conceal(n, &mut self.pcm);
                        self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Playout::Missing { ticks, .. } => {
                    let n = self.decoder.ticks_to_samples(ticks);
                    if n > 0 {
                        self.decoder
                            .conceal(n, &mut self.pcm)
                            .map_err(|e| format!("concealment: {e}"))?;
                        self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.push_pcm();
        }
        Ok(())
    }

    /// Hands decoded audio to the sink's IO thread; what does not fit is dropped and counted.
    fn push_pcm(&mut self) {
        let n = self.pcm.len().min(self.ring.slots());
        if n < self.pcm.len() {
            self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(chunk) = self.ring.write_chunk_uninit(n) {
            chunk.fill_from_iter(self.pcm[..n].iter().copied());
        }
    }
}
