//! The encode path, independent of the sound server: a [`Feeder`] that the daemon's real-time
//! thread pushes rendered or recorded audio into (lock-free, never blocking), and a worker that
//! does everything that may block or allocate — sample conversion, encoding, RTP, sending,
//! keepalives — and applies what the far end says (reports, goodbyes, and for a record tunnel
//! resume, pause and knobs). A second small thread per connection reads what the far end
//! sends. Connecting and reconnecting are the client's ([`crate::client`]); serving a record
//! tunnel is the server's ([`crate::server`]).
use crate::auth::Cookie;
use crate::codec::{Encoder, StreamFormat};
use crate::framing::{self, Deframer};
use crate::latency::{self, Steady};
use crate::link::{DEAD_AFTER, KEEPALIVE, WRITE_TIMEOUT};
use crate::net::Conn;
use crate::params::{Compression, OpusKnobs, ServerAddr};
use crate::report::{Counters, Report, Sent};
use crate::rtp::{self, Control, RtpSender};
use crate::samples::SampleFormat;
use crate::stats::{BitrateMeter, Stats, TunnelState};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// State shared between the main thread, the device's IO thread and the worker.
pub struct Shared {
    pub(crate) stop: AtomicBool,
    /// A stream plays into the sink (set by the IO thread).
    pub running: AtomicBool,
    /// Counters of this tunnel.
    pub stats: Stats,
    /// The receiver's buffer, as it last reported (held still while it moves by less than
    /// a millisecond), µs.
    pub remote_usec: AtomicU64,
    /// The receiving device's latency, as the receiver last reported it (held likewise), µs.
    pub remote_device_usec: AtomicU64,
    /// The network's one-way time (half the TCP connect's round trip), µs.
    pub net_usec: AtomicU64,
    /// What the codec adds beyond the sink's clock: the frame's wait and the look-ahead
    /// ([`crate::latency::codec_usec`]), µs; negative with a block much longer than the
    /// frame (the audio leaves ahead of the sink's clock).
    pub codec_usec: AtomicI64,
    /// Half the device's block: what it holds ahead of its clock on average, µs.
    half_block_usec: AtomicU64,
    worker: OnceLock<Thread>,
    bytes_per_sec: u64,
    knobs: Mutex<OpusKnobs>,
    /// Bumped by every knob change; the worker retunes its encoder when it sees a new value.
    pub(crate) knobs_gen: AtomicU64,
    last_bitrate: AtomicU64,
    meter: Mutex<BitrateMeter>,
    remote: Mutex<BTreeMap<String, String>>,
    /// A handle on the live connection, to unblock the worker at unload.
    pub(crate) sock: Mutex<Option<Conn>>,
    pub(crate) finished: AtomicBool,
}

impl Shared {
    /// Shared state for a tunnel whose device produces `bytes_per_sec`.
    pub fn new(bytes_per_sec: u64, knobs: OpusKnobs) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            running: AtomicBool::new(false),
            stats: Stats::new(),
            remote_usec: AtomicU64::new(0),
            remote_device_usec: AtomicU64::new(0),
            net_usec: AtomicU64::new(0),
            codec_usec: AtomicI64::new(0),
            half_block_usec: AtomicU64::new(0),
            worker: OnceLock::new(),
            bytes_per_sec: bytes_per_sec.max(1),
            knobs: Mutex::new(knobs),
            knobs_gen: AtomicU64::new(0),
            last_bitrate: AtomicU64::new(0),
            meter: Mutex::new(BitrateMeter::default()),
            remote: Mutex::new(BTreeMap::new()),
            sock: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    /// The worker thread to wake when audio arrives.
    pub fn set_worker(&self, t: Thread) {
        let _ = self.worker.set(t);
    }

    /// Wakes the worker; lock-free, safe on the IO thread.
    pub fn wake_worker(&self) {
        if let Some(t) = self.worker.get() {
            t.unpark();
        }
    }

    /// The knobs the encoder uses (or will use at its next frame).
    pub fn knobs(&self) -> OpusKnobs {
        self.knobs.lock().map(|k| *k).unwrap_or_default()
    }

    /// Retunes the encoder: the worker applies `knobs` between two frames (a frame-size change
    /// takes effect at the next packet boundary), without reconnecting. Check them first
    /// (e.g. with [`Encoder::new`]); a change the encoder refuses is logged and ignored.
    pub fn set_knobs(&self, knobs: OpusKnobs) {
        if let Ok(mut k) = self.knobs.lock() {
            *k = knobs;
        }
        self.knobs_gen.fetch_add(1, Ordering::SeqCst);
        self.wake_worker();
    }

    /// Tells the worker to stop (it says goodbye to the receiver first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_worker();
    }

    /// Stops the worker and waits for it: it gets half a second to say goodbye to the
    /// receiver, then its connection is shut down under it so that a send blocked on a
    /// stalled link returns at once. (A connect in progress can take up to 3 s.)
    pub fn stop_and_join(&self, worker: JoinHandle<()>) {
        self.stop();
        let until = Instant::now() + Duration::from_millis(500);
        while !self.finished.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
        if let Ok(s) = self.sock.lock() {
            if let Some(c) = s.as_ref() {
                c.shutdown();
            }
        }
        if worker.join().is_err() {
            log::error!("the tunnel worker thread ended with a panic");
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The tunnel's end-to-end latency, µs: [`beyond_device_usec`](Self::beyond_device_usec)
    /// plus half our device's block (what it holds ahead of its clock on average); what the
    /// tunnel sink reports, and its `opus.tunnel.latency_usec`.
    pub fn end_to_end_usec(&self) -> u64 {
        self.half_block_usec.load(Ordering::Relaxed) + self.beyond_device_usec()
    }

    /// The tunnel's latency beyond our device's clock, µs: the codec (frame, look-ahead), the
    /// network one way, the receiver's buffer and its device, each part held still while it
    /// moves by less than a millisecond (see [`crate::latency`]). Lock-free.
    pub fn beyond_device_usec(&self) -> u64 {
        let rest = self.net_usec.load(Ordering::Relaxed)
            + self.remote_usec.load(Ordering::Relaxed)
            + self.remote_device_usec.load(Ordering::Relaxed);
        rest.saturating_add_signed(self.codec_usec.load(Ordering::Relaxed))
    }

    /// Sets the codec's part of the latency for a device block of `block_usec` and the
    /// encoder's `knobs`.
    pub(crate) fn set_codec_part(
        &self,
        block_usec: u64,
        compression: Compression,
        knobs: &OpusKnobs,
    ) {
        let frame = u64::from(knobs.frame_size.usec());
        let v = latency::codec_usec(
            block_usec,
            frame,
            latency::lookahead_usec(compression, knobs),
        );
        self.codec_usec.store(v, Ordering::Relaxed);
        self.half_block_usec
            .store(block_usec / 2, Ordering::Relaxed);
    }

    /// Bytes of device audio as a duration, µs.
    pub fn bytes_to_usec(&self, bytes: usize) -> u64 {
        bytes as u64 * 1_000_000 / self.bytes_per_sec
    }

    /// The statistics as `opus.tunnel.*` properties (call about once a second: the bitrate is
    /// measured between calls).
    pub fn stat_properties(&self) -> Vec<(String, String)> {
        self.report().properties()
    }

    /// The statistics (call about once a second: the bitrate is measured between calls).
    pub fn report(&self) -> Report {
        let bytes = self.stats.snapshot().bytes_sent;
        let bitrate = match self.meter.lock() {
            Ok(mut m) => m.sample(Instant::now(), bytes),
            Err(_) => 0,
        };
        self.last_bitrate.store(bitrate, Ordering::Relaxed);
        self.report_peek()
    }

    /// The statistics as of now, with the bitrate of the last [`stat_properties`] call
    /// (for on-demand queries that must not disturb the once-a-second measurement).
    ///
    /// [`stat_properties`]: Self::stat_properties
    pub fn stat_properties_peek(&self) -> Vec<(String, String)> {
        self.report_peek().properties()
    }

    fn report_peek(&self) -> Report {
        let s = self.stats.snapshot();
        Report {
            state: s.state.into(),
            peer: None,
            bitrate: self.last_bitrate.load(Ordering::Relaxed),
            reconnects: Some(s.reconnects),
            encryption: self.stats.encryption().as_str(),
            transport: self.stats.udp.transport().as_str(),
            counters: Counters::Sent(Sent {
                bytes_sent: s.bytes_sent,
                packets_sent: s.packets_sent,
                dropped_frames: s.dropped_frames,
                repairs_sent: self.stats.udp.repairs_sent.load(Ordering::Relaxed),
                overruns: s.overruns,
                latency_usec: self.end_to_end_usec(),
                network_usec: self.net_usec.load(Ordering::Relaxed),
                remote: self.remote.lock().map(|r| r.clone()).unwrap_or_default(),
            }),
        }
    }
}

/// What a play tunnel's worker needs to know.
pub struct WorkerConfig {
    /// The receiver.
    pub addr: ServerAddr,
    /// The device to play on at the receiver (`None`: its choice).
    pub remote_sink: Option<String>,
    /// Our device's name (the receiver names the stream after it).
    pub name: String,
    /// Our host name.
    pub host: String,
    /// Opus or L16.
    pub compression: Compression,
    /// Rate and channels.
    pub fmt: StreamFormat,
    /// The device's sample format (what the feeder receives).
    pub sample_format: SampleFormat,
    /// Channel map, PulseAudio's text form.
    pub channel_map: String,
    /// The device's block, µs (bounds how much audio the worker keeps queued).
    pub block_usec: u64,
    /// The cookie to prove when the receiver asks (`cookie=`).
    pub cookie: Option<Cookie>,
    /// `encryption=` (auto: encrypt whenever the receiver can).
    pub encryption: crate::secure::Mode,
    /// `transport=`: audio over TCP, or over UDP when the receiver grants it.
    pub transport: crate::udp::Transport,
    /// Makes the worker's thread real-time once it streams, as the receiver's are (a
    /// clean-clone CI run and 1 of 5 local runs of `tests/tests/hostile.rs` had a packet
    /// 20-40 ms late, and an underrun, while 1000 hostile connections loaded both cores);
    /// `None`: it runs as spawned.
    pub realtime: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// A tunnel's UDP path for its audio: the way out, the datagram sealer and the parity of the
/// open group.
pub(crate) struct UdpOut {
    way: UdpWay,
    sealer: crate::udp::DgramSealer,
    parity: crate::udp::ParityEncoder,
    /// The packets of the last second, for repairs the receiver asks for.
    history: crate::udp::History,
    /// What came back as datagrams: repair requests for the worker's next round, and when.
    heard: crate::udp::Heard,
    /// A play tunnel's reader of the datagrams its receiver sends back; stops when this goes.
    reader_stop: Option<Arc<AtomicBool>>,
    dgram: Vec<u8>,
    /// The loss the receiver reports, smoothed, percent.
    loss: f64,
    /// When the first datagram of audio left.
    first_sent: Option<Instant>,
    /// The receiver reported audio received: datagrams get through.
    confirmed: bool,
}

/// Where a tunnel's datagrams go.
enum UdpWay {
    /// A play tunnel: a socket of its own, connected to the receiver's UDP port.
    Connected(std::net::UdpSocket),
    /// A record tunnel served by the receiver: its UDP port's socket, to the address the
    /// tunnel's probes come from ([`crate::udp::KIND_PROBE`]; `None` before the first).
    Reply {
        sock: Arc<std::net::UdpSocket>,
        to: Arc<Mutex<Option<std::net::SocketAddr>>>,
    },
}

/// How long datagrams of audio may go unanswered by a report of received audio before the
/// tunnel takes them for blocked (a firewall on the receiver's UDP port) and sends its audio
/// over TCP instead.
const UDP_PROBE: Duration = Duration::from_secs(3);

impl UdpOut {
    /// A socket of our own, connected to `to`; datagrams named `token`, sealed with `key`. A
    /// thread reads what the receiver sends back on it (repair requests) and wakes the
    /// calling thread (the worker) for them.
    pub(crate) fn open(
        to: std::net::SocketAddr,
        token: u32,
        key: Option<Arc<snow::StatelessTransportState>>,
    ) -> std::io::Result<UdpOut> {
        let sock = crate::udp::connected_socket(to)?;
        let reader = sock.try_clone()?;
        // The reader looks at its stop flag this often.
        reader.set_read_timeout(Some(Duration::from_millis(200)))?;
        // A full socket buffer drops the datagram (as the network would), never waits.
        sock.set_nonblocking(true)?;
        let mut out = UdpOut::new(UdpWay::Connected(sock), token, key.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s, worker) = (out.heard.clone(), stop.clone(), thread::current());
        let opener = crate::udp::DgramOpener::new(key);
        thread::Builder::new()
            .name("opus-tunnel-udp-back".into())
            .spawn(move || read_requests(reader, token, opener, &q, &s, &worker))?;
        out.reader_stop = Some(stop);
        Ok(out)
    }

    /// Where what this tunnel's far end sends back goes (a record tunnel's comes through the
    /// receiver's UDP thread).
    pub(crate) fn heard(&self) -> crate::udp::Heard {
        self.heard.clone()
    }

    /// The repair requests waiting.
    fn take_requests(&mut self) -> Vec<u16> {
        self.heard.take_requests()
    }

    /// A record tunnel's audio, from the receiver's UDP socket to the address its far end's
    /// probes come from (which opened the way through NAT and firewalls there).
    pub(crate) fn reply(
        sock: Arc<std::net::UdpSocket>,
        to: Arc<Mutex<Option<std::net::SocketAddr>>>,
        token: u32,
        key: Option<Arc<snow::StatelessTransportState>>,
    ) -> UdpOut {
        UdpOut::new(UdpWay::Reply { sock, to }, token, key)
    }

    fn new(way: UdpWay, token: u32, key: Option<Arc<snow::StatelessTransportState>>) -> UdpOut {
        UdpOut {
            way,
            sealer: crate::udp::DgramSealer::new(token, key),
            parity: crate::udp::ParityEncoder::new(),
            history: crate::udp::History::new(),
            heard: crate::udp::Heard::default(),
            reader_stop: None,
            dgram: Vec::new(),
            loss: 0.0,
            first_sent: None,
            confirmed: false,
        }
    }

    /// Whether datagrams have somewhere to go (a record tunnel's: once its first probe came).
    fn ready(&self) -> bool {
        match &self.way {
            UdpWay::Connected(_) => true,
            UdpWay::Reply { to, .. } => to.lock().map(|t| t.is_some()).unwrap_or(false),
        }
    }

    /// Sends one datagram; returns its size on the wire (0: not sent).
    pub(crate) fn send(&mut self, kind: u8, body: &[u8]) -> usize {
        if self.sealer.seal(kind, body, &mut self.dgram).is_err() {
            return 0;
        }
        let sent = match &self.way {
            UdpWay::Connected(sock) => sock.send(&self.dgram),
            UdpWay::Reply { sock, to } => match to.lock().ok().and_then(|t| *t) {
                Some(a) => sock.send_to(&self.dgram, a),
                None => return 0,
            },
        };
        match sent {
            Ok(n) => n,
            Err(e) => {
                log::debug!("UDP send: {e}");
                0
            }
        }
    }
}

impl Drop for UdpOut {
    fn drop(&mut self) {
        if let Some(s) = &self.reader_stop {
            s.store(true, Ordering::SeqCst);
        }
    }
}

/// A play tunnel's datagrams back from its receiver (repair requests and keepalives,
/// [`crate::udp::KIND_CONTROL`]) until `stop`: those named `token` that open go to `heard`,
/// and requests wake `worker`; anything else is dropped.
fn read_requests(
    sock: std::net::UdpSocket,
    token: u32,
    mut opener: crate::udp::DgramOpener,
    heard: &crate::udp::Heard,
    stop: &AtomicBool,
    worker: &Thread,
) {
    let mut buf = vec![0u8; crate::udp::MAX_DATAGRAM + 1];
    while !stop.load(Ordering::SeqCst) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if crate::link::is_timeout(&e) => continue,
            Err(e) => {
                // ICMP errors (the receiver's port closed for a moment) and the like.
                log::debug!("UDP receive: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let dgram = &buf[..n];
        if crate::udp::token_of(dgram) != Some(token) {
            continue;
        }
        if let Ok((crate::udp::KIND_CONTROL, body)) = opener.open(dgram) {
            if heard.datagram(crate::udp::KIND_CONTROL, body) {
                worker.unpark();
            }
        }
    }
}

/// The real-time side of a play tunnel: the daemon's IO thread pushes every rendered block
/// here. Lock-free and allocation-free; when the worker is behind (link stalled) the block is
/// dropped and counted, never waited for.
pub struct Feeder {
    ring: rtrb::Producer<u8>,
    shared: Arc<Shared>,
    frame_bytes: usize,
}

impl Feeder {
    /// `data`: whole frames in the tunnel's sample format. `running`: a stream plays into the
    /// device (otherwise the data is silence and is not sent).
    pub fn push(&mut self, data: &[u8], running: bool) {
        if !running {
            return;
        }
        let fb = self.frame_bytes.max(1);
        let n = data.len() - data.len() % fb;
        // What does not fit is dropped (the worker is behind: link stalled), never waited for.
        let room = self.ring.slots() - self.ring.slots() % fb;
        let take = n.min(room);
        if take < n {
            self.shared.stats.overruns.fetch_add(1, Ordering::Relaxed);
        }
        if take > 0 {
            if let Ok(chunk) = self.ring.write_chunk_uninit(take) {
                chunk.fill_from_iter(data[..take].iter().copied());
            }
        }
        self.shared.wake_worker();
    }

    /// The knobs the encoder uses now (a record tunnel's far end may change them live).
    pub fn knobs(&self) -> OpusKnobs {
        self.shared.knobs()
    }

    /// The device started or stopped running.
    pub fn set_running(&mut self, running: bool) {
        self.shared.running.store(running, Ordering::SeqCst);
        self.shared.wake_worker();
    }

    /// The tunnel's latency beyond the device's clock, µs ([`Shared::beyond_device_usec`]).
    /// What sits in the ring and in the partial codec frame at the moment of the query is left
    /// out: it is a sawtooth that the figure counts on average.
    pub fn latency_usec(&self) -> u64 {
        self.shared.beyond_device_usec()
    }
}

/// Starts a play tunnel's worker. `ring_bytes` is the capacity between the device and the
pub trait RemoteCapture: Send + Sync {
    /// Start (`true`) or stop (`false`) recording: the far end has readers, or none.
    fn recording(&self, on: bool);
}

/// Serves a record tunnel on an accepted connection: encodes what the [`Feeder`] of `shared`
/// receives and sends it, following the far end's resume, pause and knob messages. Runs on
/// the calling thread until the link ends or `shared.stop()`; returns why it ended.
pub(crate) fn serve_record(
    cfg: WorkerConfig,
    ring: rtrb::Consumer<u8>,
    shared: Arc<Shared>,
    conn: Conn,
    remote: Arc<dyn RemoteCapture>,
    udp: Option<UdpOut>,
) -> String {
    shared.set_worker(thread::current());
    // The handshake left a short read timeout on the socket; the reader thread blocks.
    let _ = conn.set_timeouts(None, Some(WRITE_TIMEOUT));
    let mut w = Worker::new(cfg, ring, shared);
    w.remote = Some(remote);
    w.udp = udp;
    let why = match w.stream(conn) {
        Ended::Stop => "closed by the receiver".to_string(),
        Ended::Lost(why) => why,
    };
    w.shared.finished.store(true, Ordering::SeqCst);
    why
}

/// A [`Feeder`], the shared state and the worker's end of the ring between them, for a tunnel
/// sink's sender or a capture served by [`serve_record`].
pub(crate) fn feeder(
    cfg: &WorkerConfig,
    knobs: OpusKnobs,
    ring_bytes: usize,
) -> (Feeder, Arc<Shared>, rtrb::Consumer<u8>) {
    let frame_bytes = cfg.sample_format.bytes_per_sample() * usize::from(cfg.fmt.channels);
    let bytes_per_sec = frame_bytes as u64 * u64::from(cfg.fmt.rate);
    let (producer, consumer) = rtrb::RingBuffer::<u8>::new(ring_bytes);
    let shared = Arc::new(Shared::new(bytes_per_sec, knobs));
    shared.set_codec_part(cfg.block_usec, cfg.compression, &knobs);
    let feeder = Feeder {
        ring: producer,
        shared: shared.clone(),
        frame_bytes,
    };
    (feeder, shared, consumer)
}

/// What the reader thread passes back.
enum Incoming {
    Controls(Vec<Control>),
    Closed(String),
}

/// The encode path of one tunnel: ring → sample conversion → encoder → RTP → the wire, with
/// the far end's control messages applied between frames.
pub(crate) struct Worker {
    pub(crate) cfg: WorkerConfig,
    ring: rtrb::Consumer<u8>,
    pub(crate) shared: Arc<Shared>,
    encoder: Option<Encoder>,
    pub(crate) rtp: RtpSender,
    /// The RTP payload type, when not the codec's own (`rtp_payload=` of plain RTP).
    pub(crate) payload_type: Option<u8>,
    pcm: Vec<f32>,
    bytes: Vec<u8>,
    payload: Vec<u8>,
    packet: Vec<u8>,
    wire: Vec<u8>,
    knobs_gen: u64,
    /// Serving a record tunnel: the far end's resume/pause/knobs control the capture.
    remote: Option<Arc<dyn RemoteCapture>>,
    /// The receiver's reported buffer and device latency, held still (1 ms deadband).
    remote_latency: Steady,
    remote_device: Steady,
    /// `transport=udp` granted: where the audio goes.
    pub(crate) udp: Option<UdpOut>,
}

/// How a connection ended.
pub(crate) enum Ended {
    /// We stop (unload, or the far end closed a served tunnel).
    Stop,
    /// The link was lost, for this reason.
    Lost(String),
}

impl Worker {
    pub(crate) fn new(cfg: WorkerConfig, ring: rtrb::Consumer<u8>, shared: Arc<Shared>) -> Worker {
        Worker {
            cfg,
            ring,
            shared,
            encoder: None,
            rtp: RtpSender::new(),
            payload_type: None,
            pcm: Vec::new(),
            bytes: Vec::new(),
            payload: Vec::new(),
            packet: Vec::new(),
            wire: Vec::new(),
            knobs_gen: 0,
            remote: None,
            remote_latency: Steady::new(1_000.0),
            remote_device: Steady::new(1_000.0),
            udp: None,
        }
    }

    pub(crate) fn knobs(&self) -> OpusKnobs {
        self.shared.knobs()
    }

    /// Applies knob changes made since the last call (between frames); true if there were any.
    pub(crate) fn retune(&mut self) -> bool {
        let gen = self.shared.knobs_gen.load(Ordering::SeqCst);
        if gen == self.knobs_gen {
            return false;
        }
        self.knobs_gen = gen;
        let knobs = self.knobs();
        self.shared
            .set_codec_part(self.cfg.block_usec, self.cfg.compression, &knobs);
        if let Some(enc) = self.encoder.as_mut() {
            if let Err(e) = enc.apply(&knobs) {
                log::warn!(
                    "{}: the encoder refused the new settings: {e}",
                    self.cfg.name
                );
            }
        }
        true
    }

    /// The sink rendered audio that waits for the encoder.
    pub(crate) fn has_audio(&self) -> bool {
        self.ring.slots() > 0
    }

    /// Drops the encoder (a fresh one is made for the next audio).
    pub(crate) fn reset_encoder(&mut self) {
        self.pcm.clear();
        self.encoder = None;
    }

    /// Throws away what the sink rendered (link down: audio is dropped, never queued).
    pub(crate) fn discard_ring(&mut self) {
        let n = self.ring.slots();
        if n > 0 {
            if let Ok(c) = self.ring.read_chunk(n) {
                c.commit_all();
            }
        }
    }

    /// Sleeps up to `d`, waking early on stop; keeps the ring drained meanwhile.
    pub(crate) fn idle_wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            self.discard_ring();
            if self.shared.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            thread::park_timeout((until - now).min(Duration::from_millis(100)));
        }
    }

    /// Streams until the link fails or the module stops.
    pub(crate) fn stream(&mut self, mut conn: Conn) -> Ended {
        let (tx, rx) = mpsc::channel();
        let reader = match conn.try_clone() {
            Ok(r) => r,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let me = thread::current();
        let rthread = thread::Builder::new()
            .name("opus-tunnel-rx".into())
            .spawn(move || read_loop(reader, tx, me));
        let rthread = match rthread {
            Ok(t) => t,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let result = self.stream_loop(&mut conn, &rx);
        conn.shutdown();
        if let Ok(mut s) = self.shared.sock.lock() {
            *s = None;
        }
        let _ = rthread.join();
        self.pcm.clear();
        self.encoder = None;
        self.udp = None;
        result
    }

    fn stream_loop(&mut self, conn: &mut Conn, rx: &mpsc::Receiver<Incoming>) -> Ended {
        let mut sending = false;
        // While sending, when the last audio was taken (a stopped stream's last frame waits
        // for its padding's time from there).
        let mut last_sent = Instant::now();
        let mut last_heard = Instant::now();
        self.discard_ring();
        self.shared.stats.set_state(TunnelState::Idle);
        loop {
            if self.shared.stopped() {
                let mut bye = Vec::new();
                rtp::write_rtcp(
                    self.rtp.ssrc(),
                    &[Control::Bye("module unloaded".into())],
                    &mut bye,
                );
                let _ = self.send_packet(conn, &bye);
                return Ended::Stop;
            }
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    Incoming::Closed(why) => return Ended::Lost(why),
                    Incoming::Controls(c) => {
                        last_heard = Instant::now();
                        self.on_controls(c)
                    }
                }
            }
            let asked = self.udp.as_mut().map(UdpOut::take_requests);
            if let Some(seqs) = asked.filter(|s| !s.is_empty()) {
                self.repair(&seqs);
            }
            let _ = self.retune();
            let running = self.shared.running.load(Ordering::SeqCst);
            let had = self.ring.slots();
            if had > 0 {
                if !sending {
                    sending = true;
                    self.shared.stats.set_state(TunnelState::Streaming);
                    if let Some(raise) = self.cfg.realtime.take() {
                        raise();
                    }
                }
                if let Err(e) = self.pump(conn) {
                    return Ended::Lost(e);
                }
                self.check_udp();
                last_sent = Instant::now();
            } else if sending && !running && self.last_frame_wait(last_sent).is_none() {
                // The last stream stopped: flush (in time), tell the receiver, and go quiet.
                if let Err(e) = self.flush_partial(conn) {
                    return Ended::Lost(e);
                }
                let mut pkt = Vec::new();
                rtp::write_rtcp(self.rtp.ssrc(), &[Control::Pause], &mut pkt);
                if let Err(e) = self.send_packet(conn, &pkt) {
                    return Ended::Lost(e);
                }
                self.rtp.skip(0);
                if let Some(u) = self.udp.as_mut() {
                    u.parity.reset();
                    u.history.reset();
                }
                sending = false;
                last_sent = Instant::now();
                self.shared.stats.set_state(TunnelState::Idle);
            }
            // Over UDP the far end also speaks in datagrams, which TCP's backoff on a lossy
            // link does not hold back (asked only once TCP has been quiet that long).
            if last_heard.elapsed() > DEAD_AFTER {
                if let Some(at) = self.udp.as_ref().and_then(|u| u.heard.last()) {
                    last_heard = last_heard.max(at);
                }
            }
            if last_heard.elapsed() > DEAD_AFTER {
                return Ended::Lost(format!(
                    "nothing heard from the far end for {} s",
                    DEAD_AFTER.as_secs()
                ));
            }
            if !sending && last_sent.elapsed() >= KEEPALIVE {
                let mut pkt = Vec::new();
                rtp::write_rtcp(self.rtp.ssrc(), &[Control::Keepalive], &mut pkt);
                if let Err(e) = self.send_packet(conn, &pkt) {
                    return Ended::Lost(e);
                }
                last_sent = Instant::now();
            }
            // Idle, the worker sleeps until the next keepalive is due; audio, a knob change,
            // a stop or a lost link wakes it sooner.
            let wait = if sending && !running {
                self.last_frame_wait(last_sent)
                    .unwrap_or(Duration::from_micros(200))
            } else if sending {
                Duration::from_millis(20)
            } else {
                KEEPALIVE
                    .saturating_sub(last_sent.elapsed())
                    .max(Duration::from_millis(1))
            };
            if self.ring.slots() == 0 {
                thread::park_timeout(wait);
            }
        }
    }

    fn on_controls(&mut self, controls: Vec<Control>) {
        let mut loss = None;
        for c in controls {
            match c {
                Control::Report(kv) => {
                    // The receiver reports only once audio arrives (over UDP, once datagrams
                    // have somewhere to go).
                    if let Some(u) = self.udp.as_mut() {
                        u.confirmed |= u.ready();
                    }
                    if let Ok(mut r) = self.shared.remote.lock() {
                        for (k, v) in kv {
                            let us = v.parse::<u64>().ok();
                            match (k.as_str(), us) {
                                ("latency_usec", Some(us)) => {
                                    let held = self.remote_latency.update(us as f64);
                                    self.shared
                                        .remote_usec
                                        .store(held as u64, Ordering::Relaxed);
                                }
                                ("device_latency_usec", Some(us)) => {
                                    let held = self.remote_device.update(us as f64);
                                    self.shared
                                        .remote_device_usec
                                        .store(held as u64, Ordering::Relaxed);
                                }
                                ("loss_pct", Some(pct)) => loss = Some(pct),
                                _ => {}
                            }
                            r.insert(k, v);
                        }
                    }
                }
                Control::Bye(why) => {
                    log::info!("{}: the far end says goodbye: {why}", self.cfg.name)
                }
                Control::Resume | Control::Pause if self.remote.is_some() => {
                    let on = matches!(c, Control::Resume);
                    self.shared.running.store(on, Ordering::SeqCst);
                    if let Some(r) = &self.remote {
                        r.recording(on);
                    }
                }
                Control::Knobs(kv) if self.remote.is_some() => self.remote_knobs(kv),
                _ => {}
            }
        }
        if let Some(pct) = loss {
            self.follow_loss(pct);
        }
    }

    /// UDP: sends the packets the receiver asks for again, those still kept (the last
    /// second's, at most [`crate::udp::MAX_HISTORY`]), each once at most.
    fn repair(&mut self, seqs: &[u16]) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        let (mut wire, mut sent) = (0, 0);
        for &seq in seqs {
            let Some(p) = u.history.take(seq) else {
                continue;
            };
            wire += u.send(crate::udp::KIND_RTP, &p);
            sent += 1;
        }
        let st = &self.shared.stats;
        st.bytes_sent.fetch_add(wire as u64, Ordering::Relaxed);
        st.packets_sent.fetch_add(sent, Ordering::Relaxed);
        st.udp.repairs_sent.fetch_add(sent, Ordering::Relaxed);
    }

    /// UDP: datagrams that the receiver never reports as arriving (blocked on the way) give
    /// way to TCP, on the same connection (the receiver takes RTP from either).
    fn check_udp(&mut self) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        if u.confirmed {
            return;
        }
        let since = *u.first_sent.get_or_insert_with(Instant::now);
        if since.elapsed() > UDP_PROBE {
            let why = match u.way {
                UdpWay::Connected(_) => "is its udp_port blocked by a firewall?",
                UdpWay::Reply { .. } => "did its probes not reach our udp_port?",
            };
            log::warn!(
                "{}: no audio reached the far end over UDP in {} s ({why}); falling back to TCP",
                self.cfg.name,
                UDP_PROBE.as_secs()
            );
            self.udp = None;
            self.shared
                .stats
                .udp
                .set_transport(crate::udp::Transport::Tcp);
        }
    }

    /// UDP: the encoder's expected loss (`compression.opus.packet_loss`, which sizes its
    /// in-band FEC) follows the receiver's reports: quickly up, slowly down.
    fn follow_loss(&mut self, pct: u64) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        let pct = pct.min(100) as f64;
        let a = if pct > u.loss { 0.5 } else { 0.1 };
        u.loss += a * (pct - u.loss);
        let want = u.loss.ceil().clamp(0.0, 100.0) as u8;
        let mut knobs = self.knobs();
        if knobs.packet_loss != want && self.cfg.compression == Compression::Opus {
            log::debug!(
                "{}: the receiver reports {pct} % loss: packet_loss {} -> {want}",
                self.cfg.name,
                knobs.packet_loss
            );
            knobs.packet_loss = want;
            self.shared.set_knobs(knobs);
        }
    }

    /// Knob changes relayed by the far end of a record tunnel: applied if the encoder takes
    /// them, refused with a log line naming the key otherwise.
    fn remote_knobs(&mut self, kv: Vec<(String, String)>) {
        let mut knobs = self.knobs();
        for (k, v) in kv {
            let mut trial = knobs;
            match trial.set(&k, &v) {
                Ok(()) => match Encoder::new(self.cfg.compression, self.cfg.fmt, &trial) {
                    Ok(_) => knobs = trial,
                    Err(e) => log::warn!("{}: refused {k}={v}: {e}", self.cfg.name),
                },
                Err(e) => log::warn!("{}: refused {e}", self.cfg.name),
            }
        }
        if knobs != self.knobs() {
            log::info!("{}: the far end retuned the encoder", self.cfg.name);
            self.shared.set_knobs(knobs);
        }
    }

    fn ensure_encoder(&mut self) -> Result<(), String> {
        if self.encoder.is_none() {
            self.knobs_gen = self.shared.knobs_gen.load(Ordering::SeqCst);
            let knobs = self.knobs();
            self.shared
                .set_codec_part(self.cfg.block_usec, self.cfg.compression, &knobs);
            let enc = Encoder::with_map(
                self.cfg.compression,
                self.cfg.fmt,
                &knobs,
                &self.cfg.channel_map,
            )
            .map_err(|e| e.to_string())?;
            self.encoder = Some(enc);
        }
        Ok(())
    }

    /// Moves what the ring holds through the encoder onto the wire.
    pub(crate) fn pump(&mut self, conn: &mut impl PacketOut) -> Result<(), String> {
        self.ensure_encoder()?;
        let bps = self.cfg.sample_format.bytes_per_sample();
        let ch = usize::from(self.cfg.fmt.channels);
        let frame_bytes = bps * ch;
        // Keep the queue short: after a stall, older audio is dropped rather than delaying
        // everything that follows (at most ~3 blocks + one codec frame are kept).
        let frame_samples = self.frame_samples();
        let keep = (self.cfg.fmt.rate as u64 * (3 * self.cfg.block_usec) / 1_000_000) as usize
            + frame_samples;
        let avail = self.ring.slots() / frame_bytes;
        if avail > keep + frame_samples * 4 {
            let drop_frames = avail - keep;
            if let Ok(c) = self.ring.read_chunk(drop_frames * frame_bytes) {
                c.commit_all();
            }
            self.shared
                .stats
                .dropped_frames
                .fetch_add(drop_frames as u64, Ordering::Relaxed);
        }
        let n = (self.ring.slots() / frame_bytes) * frame_bytes;
        if n == 0 {
            return Ok(());
        }
        self.bytes.clear();
        if let Ok(c) = self.ring.read_chunk(n) {
            let (a, b) = c.as_slices();
            self.bytes.extend_from_slice(a);
            self.bytes.extend_from_slice(b);
            c.commit_all();
        }
        self.cfg.sample_format.to_f32(&self.bytes, &mut self.pcm);
        let per_frame = frame_samples * ch;
        let mut off = 0;
        while self.pcm.len() - off >= per_frame {
            self.encode_send(conn, off, per_frame)?;
            off += per_frame;
        }
        self.pcm.drain(..off);
        Ok(())
    }

    /// How long the silence that [`flush_partial`](Self::flush_partial) pads the last frame
    /// with lasts. A stream's last frame is sent once that long has passed since its last
    /// audio was taken:
    /// sent at once, it came early by that much, the receiver's line of earliest arrivals
    /// moved to it and every packet before it counted that much late (up to a frame: its
    /// target rose 9–13 ms at each stop, and kept that for the 10 s its window remembers).
    fn partial_pad(&self) -> Duration {
        let ch = usize::from(self.cfg.fmt.channels.max(1));
        if self.pcm.is_empty() {
            return Duration::ZERO;
        }
        let pad = self.frame_samples().saturating_sub(self.pcm.len() / ch) as u64;
        Duration::from_micros(pad * 1_000_000 / u64::from(self.cfg.fmt.rate.max(1)))
    }

    /// After the last stream stopped, `last_audio` being when its last audio was taken:
    /// `None` once its last, padded frame is due ([`partial_pad`](Self::partial_pad)), else
    /// how long to sleep before looking again (0.2–20 ms).
    pub(crate) fn last_frame_wait(&self, last_audio: Instant) -> Option<Duration> {
        let left = self.partial_pad().saturating_sub(last_audio.elapsed());
        (!left.is_zero()).then(|| left.clamp(Duration::from_micros(200), Duration::from_millis(20)))
    }

    /// Samples per channel in a frame of the encoder (20 ms until it exists).
    fn frame_samples(&self) -> usize {
        self.encoder
            .as_ref()
            .map(|e| e.frame_samples())
            .unwrap_or(960)
    }

    /// Pads what is left of a frame with silence and sends it (end of a stream; see
    /// [`partial_pad`](Self::partial_pad) for when).
    pub(crate) fn flush_partial(&mut self, conn: &mut impl PacketOut) -> Result<(), String> {
        if self.pcm.is_empty() {
            return Ok(());
        }
        self.ensure_encoder()?;
        let ch = usize::from(self.cfg.fmt.channels);
        let per_frame = self.frame_samples() * ch;
        self.pcm.resize(per_frame, 0.0);
        self.encode_send(conn, 0, per_frame)?;
        self.pcm.clear();
        Ok(())
    }

    fn encode_send(
        &mut self,
        conn: &mut impl PacketOut,
        off: usize,
        len: usize,
    ) -> Result<(), String> {
        let Some(enc) = self.encoder.as_mut() else {
            return Err("no encoder".into());
        };
        enc.encode(&self.pcm[off..off + len], &mut self.payload)
            .map_err(|e| format!("encoder: {e}"))?;
        let pt = self.payload_type.unwrap_or_else(|| enc.payload_type());
        let ticks = enc.rtp_ticks_per_frame();
        let mut packet = std::mem::take(&mut self.packet);
        self.rtp
            .packetize(pt, ticks, false, &self.payload, &mut packet);
        // A record tunnel's first packets go over TCP until its far end's probe opened the
        // way for datagrams.
        let r = if self.udp.as_ref().is_some_and(UdpOut::ready) {
            let rate = u64::from(self.cfg.fmt.rate.max(1));
            let frames = (len / usize::from(self.cfg.fmt.channels.max(1))) as u64;
            self.send_datagrams(&packet, frames * 1_000_000 / rate);
            Ok(())
        } else {
            self.send_packet(conn, &packet)
        };
        self.packet = packet;
        r
    }

    /// UDP: the RTP packet (of `packet_usec` of audio) as a datagram, and after every
    /// [`crate::udp::parity_group`] packets the group's parity block. A datagram that cannot
    /// be sent is lost, as on the network: never waited for.
    fn send_datagrams(&mut self, packet: &[u8], packet_usec: u64) {
        let Some(u) = self.udp.as_mut() else {
            return;
        };
        let seq = self.rtp.seq().wrapping_sub(1);
        u.history.keep(seq, packet, packet_usec);
        let mut wire = u.send(crate::udp::KIND_RTP, packet);
        let mut sent = 1;
        if let Some(block) = u
            .parity
            .add(seq, packet, crate::udp::parity_group(packet_usec))
        {
            wire += u.send(crate::udp::KIND_PARITY, &block);
            sent += 1;
        }
        self.shared
            .stats
            .bytes_sent
            .fetch_add(wire as u64, Ordering::Relaxed);
        self.shared
            .stats
            .packets_sent
            .fetch_add(sent, Ordering::Relaxed);
    }

    fn send_packet(&mut self, conn: &mut impl PacketOut, packet: &[u8]) -> Result<(), String> {
        let n = conn.send_packet(packet, &mut self.wire)?;
        if n > 0 {
            self.shared
                .stats
                .bytes_sent
                .fetch_add(n as u64, Ordering::Relaxed);
            self.shared
                .stats
                .packets_sent
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where a worker's packets go: a tunnel's connection (each packet framed as RFC 4571 asks),
/// or a plain RTP socket ([`crate::plain_rtp`]: one datagram a packet).
pub(crate) trait PacketOut {
    /// Sends one RTP or RTCP packet (`scratch`: a buffer to frame it in); returns the bytes it
    /// took on the wire, 0 for a packet that was dropped (counted by the sender itself). An
    /// `Err` ends the link.
    fn send_packet(&mut self, packet: &[u8], scratch: &mut Vec<u8>) -> Result<usize, String>;
}

impl PacketOut for Conn {
    fn send_packet(&mut self, packet: &[u8], scratch: &mut Vec<u8>) -> Result<usize, String> {
        scratch.clear();
        framing::frame(packet, scratch).map_err(|e| e.to_string())?;
        self.write_all(scratch).map_err(|e| format!("send: {e}"))?;
        Ok(scratch.len())
    }
}

/// Reads what the receiver sends (RTCP reports, keepalives, goodbyes) until the socket closes.
fn read_loop(mut conn: Conn, tx: mpsc::Sender<Incoming>, worker: Thread) {
    let mut deframer = Deframer::new(framing::MAX_FRAME_LEN);
    let mut buf = [0u8; 4096];
    let why = loop {
        match conn.read(&mut buf) {
            Ok(0) => break "the receiver closed the connection".to_string(),
            Ok(n) => {
                deframer.push(&buf[..n]);
                loop {
                    match deframer.next_frame() {
                        Ok(Some(f)) => {
                            if rtp::is_rtcp(&f) {
                                match rtp::parse_rtcp(&f) {
                                    Ok(c) => {
                                        // Reports and keepalives wait for the worker's next
                                        // round; what it must act on wakes it.
                                        let urgent = c.iter().any(|c| {
                                            !matches!(c, Control::Report(_) | Control::Keepalive)
                                        });
                                        if tx.send(Incoming::Controls(c)).is_err() {
                                            return;
                                        }
                                        if urgent {
                                            worker.unpark();
                                        }
                                    }
                                    Err(e) => log::debug!(
                                        "ignoring a bad RTCP packet from the receiver: {e}"
                                    ),
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Incoming::Closed(format!(
                                "bad framing from the receiver: {e}"
                            )));
                            worker.unpark();
                            return;
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Incoming::Closed(why));
    worker.unpark();
}
