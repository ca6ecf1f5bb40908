//! The decode path, independent of the sound server: read → deframe → RTP → jitter buffer
//! (gaps → PLC) → decode → the drift-correcting playout engine → a lock-free ring, on the
//! connection's thread; the daemon's real-time thread takes the audio out with
//! [`Playback::pop`] and reports what it took. When playout starts afresh is decided in one
//! place, [`RestartRules`]. Used by the receiver for play tunnels and by the tunnel source's
//! record client.
use crate::codec::{self, Decoder, StreamFormat};
use crate::connection::ConnShared;
use crate::framing::Deframer;
use crate::jitter::{JitterBuffer, Playout, PushResult};
use crate::link::{self, DEAD_AFTER, MAX_FRAME};
use crate::net::Conn;
use crate::params::Compression;
use crate::params::OpusKnobs;
use crate::playout::{Playout as PlayoutEngine, PlayoutConfig, Target};
use crate::rtp::{self, Control};
use crate::server::Host;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The rings between a playout engine and the real-time side: audio (room for the maximum
/// latency plus two device periods) and device reports.
#[allow(clippy::type_complexity)]
fn playout_rings(
    conn: &ConnShared,
    max_usec: u64,
) -> (
    rtrb::Producer<f32>,
    rtrb::Consumer<f32>,
    rtrb::Producer<DeviceReport>,
    rtrb::Consumer<DeviceReport>,
) {
    let cap_usec = max_usec + 250_000;
    let cap = (u64::from(conn.rate) * u64::from(conn.channels) * cap_usec / 1_000_000) as usize;
    let (producer, consumer) = rtrb::RingBuffer::<f32>::new(cap);
    let (report_tx, report_rx) = rtrb::RingBuffer::<DeviceReport>::new(256);
    (producer, consumer, report_tx, report_rx)
}

/// A decode path for `conn` (Opus or L16 at its rate and channels) and the real-time side that
/// takes its audio: the decoder, the playout engine holding `target_usec` (0: sized from what
/// it measures, within `min_usec..=max_usec`), and the rings between them.
pub(crate) fn decode_path(
    conn: &Arc<ConnShared>,
    compression: Compression,
    target_usec: u64,
    min_usec: u64,
    max_usec: u64,
    external_resampler: bool,
) -> Result<(Receive, Playback), String> {
    let fmt = StreamFormat {
        rate: conn.rate,
        channels: conn.channels,
    };
    let decoder =
        Decoder::with_map(compression, fmt, &conn.channel_map).map_err(|e| e.to_string())?;
    let max_usec = max_usec.max(target_usec).max(min_usec);
    let target = if target_usec == 0 {
        Target::Auto
    } else {
        Target::Fixed(target_usec)
    };
    let mut engine = PlayoutEngine::new(PlayoutConfig {
        rate: conn.rate,
        channels: conn.channels,
        target,
        min_usec,
        max_usec,
    })
    .map_err(|e| e.to_string())?;
    engine.set_external_resampler(external_resampler);
    let (producer, consumer, report_tx, report_rx) = playout_rings(conn, max_usec);
    let receive = Receive {
        conn: conn.clone(),
        decoder,
        ring: producer,
        reports: report_rx,
        playout: engine,
        base: DeviceReport::default(),
        last: DeviceReport::default(),
        restart: false,
        jitter: JitterBuffer::new(64),
        deframer: Deframer::new(MAX_FRAME),
        pcm: Vec::new(),
        out: Vec::new(),
        ssrc: None,
        payload_type: codec::payload_type(compression),
        trace: std::env::var_os("OPUS_TUNNEL_TRACE").is_some(),
        upstream: None,
        up_running: None,
        up_gen: 0,
        rules: RestartRules::new(max_usec),
        notify: None,
        idle_since: None,
    };
    Ok((receive, Playback::new(conn.clone(), consumer, report_tx)))
}

/// What the real-time side reports to the connection thread after every pop: when, and the
/// running totals of frames taken from the ring and frames that were missing (played as
/// silence).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeviceReport {
    now_usec: u64,
    consumed: u64,
    missing: u64,
}

/// A plain RTP datagram for a stream's thread ([`Receive::run_datagrams`]).
pub(crate) struct Datagram {
    /// The packet as it arrived.
    pub(crate) packet: Vec<u8>,
    /// The sender started a new sequence or timeline with this packet.
    pub(crate) restart: bool,
}

/// A plain RTP stream without packets for this long counts as paused.
pub(crate) const PLAIN_PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often the connection thread wakes at least (the engine wants ≤ 12 ms).
const WAKE: Duration = Duration::from_millis(10);

/// How long a stream has had nothing to play before it counts as quiet (and the host corks
/// it).
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// How often it wakes while the sender is paused: to notice a kill, or a reader of a record
/// tunnel's desktop end, within this.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// The receive pipeline of one connection: deframe, RTP, jitter buffer (gaps → PLC), decode,
/// then the drift-correcting playout engine, whose output goes into the ring.
pub(crate) struct Receive {
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
    /// The RTP payload type of the stream's packets.
    pub(crate) payload_type: u8,
    /// `OPUS_TUNNEL_TRACE` set in the daemon's environment: log the engine's state 10×/s.
    trace: bool,
    /// The desktop end of a record tunnel tells the far end when to record and how.
    pub(crate) upstream: Option<Arc<Upstream>>,
    up_running: Option<bool>,
    pub(crate) up_gen: u64,
    /// When playout starts afresh.
    rules: RestartRules,
    /// The receiver's host, told when the stream turns quiet or not
    /// ([`ConnShared::quiet`]); `None` for the tunnel source's own receive path.
    pub(crate) notify: Option<Arc<dyn Host>>,
    /// Since when nothing is to play and the ring is empty (for [`ConnShared::quiet`]).
    idle_since: Option<Instant>,
}

/// What the desktop end of a record tunnel relays to the capturing end.
pub(crate) struct Upstream {
    /// A stream records from the tunnel source.
    pub(crate) running: AtomicBool,
    pub(crate) knobs: Mutex<OpusKnobs>,
    pub(crate) knobs_gen: AtomicU64,
}

impl Receive {
    pub(crate) fn run(&mut self, stream: &mut Conn, rest: Vec<u8>, stop: &AtomicBool) -> String {
        let _ = stream.set_timeouts(Some(WAKE), Some(Duration::from_secs(4)));
        // The writing side. A receiver's play connection keeps it in its ConnShared too, so
        // that a kill wakes this thread out of a long read (shutdown_read), with no extra
        // descriptor.
        let conn = self.conn.clone();
        let own;
        let mut reporter: &Conn = match stream.try_clone() {
            Ok(s) if self.notify.is_some() => match conn.sock.set(s) {
                Ok(()) => match conn.sock.get() {
                    Some(s) => s,
                    None => return "no connection".into(),
                },
                Err(_) => return "the connection was served twice".into(),
            },
            Ok(s) => {
                own = s;
                &own
            }
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
                let bye = Control::Bye("stream closed by the receiver".into());
                let _ = link::send_controls(&mut reporter, 0, &[bye]);
                return "closed by the receiver".into();
            }
            // Wake up when the engine must look again (a late packet: concealment), or at
            // the latest after WAKE; while the sender is paused, the engine has nothing to
            // do: only the next report (a keepalive) is due.
            let wake = if self.idle() {
                let next = Duration::from_secs(1).saturating_sub(last_report.elapsed());
                // A record tunnel's desktop end looks for readers every IDLE_WAKE; a play
                // tunnel's thread is woken by a kill (shutdown_read).
                let most = if self.upstream.is_some() {
                    IDLE_WAKE
                } else {
                    Duration::from_secs(1)
                };
                (next.as_micros() as u64).clamp(1_000, most.as_micros() as u64)
            } else {
                self.playout
                    .wake_in_usec(self.conn.now_usec())
                    .clamp(1_000, 10_000)
            };
            let _ = stream.set_read_timeout(Duration::from_micros(wake));
            match stream.read(&mut buf) {
                Ok(0) if self.conn.killed() || stop.load(Ordering::SeqCst) => continue,
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
                Err(e) if link::is_timeout(&e) => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        return format!("nothing heard for {} s", DEAD_AFTER.as_secs());
                    }
                }
                Err(e) => return e.to_string(),
            }
            if let Err(e) = self.tick() {
                return e;
            }
            self.follow_quiet();
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
                        "trace {} dev at={} consumed={} missing={} skew_ppm={:.1} ring={} fifo={} produced={} {:?}",
                        self.conn.now_usec(),
                        self.last.now_usec,
                        self.last.consumed.saturating_sub(self.base.consumed),
                        self.last.missing.saturating_sub(self.base.missing),
                        c.skew_ppm(),
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
                    // The buffer's mean fill, as the sender's sum counts it (its frame's wait
                    // already covers the packet's first half: crates/core/src/latency.rs).
                    (
                        "latency_usec".to_string(),
                        p.latency_usec.saturating_sub(p.packet_usec / 2).to_string(),
                    ),
                    ("target_latency_usec".to_string(), p.target_usec.to_string()),
                    ("drift_ppm".to_string(), format!("{:.1}", p.drift_ppm)),
                    ("underruns".to_string(), p.underruns.to_string()),
                    ("plc_frames".to_string(), s.plc_frames.to_string()),
                    (
                        "device_latency_usec".to_string(),
                        self.conn.device_latency_usec().to_string(),
                    ),
                ];
                // While the sender is paused (or before its first audio) a bare keepalive says we
                // are alive (14 bytes).
                let msg = if self.ssrc.is_none() || self.conn.paused.load(Ordering::Relaxed) {
                    Control::Keepalive
                } else {
                    Control::Report(kv)
                };
                if link::send_controls(&mut reporter, 0, &[msg]).is_err() {
                    return "cannot send reports to the sender".into();
                }
            }
        }
    }

    /// Marks the stream quiet once nothing is to play and its ring has run dry (the tail of
    /// the last sound played out), not quiet at the first packet; tells the host on a change.
    fn follow_quiet(&mut self) {
        let Some(host) = &self.notify else {
            return;
        };
        let idle = self.idle() && self.conn.fill.load(Ordering::Relaxed) == 0;
        let since = match (idle, self.idle_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, Some(t)) => Some(t),
        };
        self.idle_since = since;
        // Quiet only after QUIET_AFTER: a new connection whose first packet is on its way,
        // or a short pause between sounds, keeps its stream running.
        let quiet = since.is_some_and(|t| t.elapsed() >= QUIET_AFTER);
        if self.conn.quiet.swap(quiet, Ordering::SeqCst) != quiet {
            host.changed();
        }
    }

    /// Nothing to play: no audio yet, the sender paused, or a restart waits for its next
    /// packet; and no
    /// reader of a record tunnel's desktop end waits to be relayed.
    fn idle(&self) -> bool {
        let paused =
            self.restart || self.ssrc.is_none() || self.conn.paused.load(Ordering::Relaxed);
        let relay = self
            .upstream
            .as_ref()
            .is_some_and(|u| self.up_running != Some(u.running.load(Ordering::SeqCst)));
        paused && !relay
    }

    /// Desktop end of a record tunnel: tells the far end to record (or stop) as readers come
    /// and go, and relays knob changes.
    fn relay_upstream(&mut self, w: &mut impl std::io::Write) -> Result<(), String> {
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
        link::send_controls(w, 0, &msgs)
            .map(|_| ())
            .map_err(|e| format!("cannot reach the far end: {e}"))
    }

    /// A new connection of a record tunnel: everything but the ring and the device counters
    /// starts afresh.
    pub(crate) fn new_session(&mut self, decoder: Decoder) {
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
        // Each concealment covers what the engine asked for; a second round is rare.
        for _ in 0..4 {
            let Some(n) = self.playout.conceal_needed(now) else {
                break;
            };
            self.pcm.clear();
            self.decoder
                .conceal(n, &mut self.pcm)
                .map_err(|e| format!("concealment: {e}"))?;
            self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
            self.playout.on_conceal(&self.pcm);
        }
        // The engine holds the audio until the device pulls (and cuts what passes the maximum
        // latency: a sink that never pulls, e.g. PulseAudio mixes at most 32 streams).
        self.playout.produce(&mut self.out);
        self.conn.ratio_bits.store(
            self.playout.controller().ratio().to_bits(),
            Ordering::Relaxed,
        );
        self.flush();
        let out_usec = self.conn.samples_to_usec(self.out.len());
        if let Some(why) = self.rules.after_produce(out_usec) {
            self.restart(why);
        }
        Ok(())
    }

    /// A restart the rules call for: counted as an overrun, logged, done.
    fn restart(&mut self, why: Restart) {
        self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
        log::debug!("{}: {}; restarting playout", self.conn.label, why.as_str());
        self.restart_engine();
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
            self.on_rtp(&h, payload)?;
        }
    }

    /// One RTP packet of the stream's payload type, into the jitter buffer and on.
    fn on_rtp(&mut self, h: &rtp::RtpHeader, payload: &[u8]) -> Result<(), String> {
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
        self.drain_jitter()
    }

    /// Plays a plain RTP stream (no handshake, no control: [`crate::plain_rtp`]) whose
    /// packets arrive on `rx`, already checked by the listener, until `stop`, a kill, or
    /// `end_after` without packets. After [`PLAIN_PAUSE_AFTER`] without packets the stream
    /// counts as paused: it goes quiet, and starts afresh at the next packet.
    pub(crate) fn run_datagrams(
        &mut self,
        rx: &mpsc::Receiver<Datagram>,
        stop: &AtomicBool,
        end_after: Duration,
    ) -> String {
        let mut last_heard = Instant::now();
        let mut last_stats = Instant::now();
        loop {
            if self.conn.killed() || stop.load(Ordering::SeqCst) {
                return "closed by the receiver".into();
            }
            let wake = if self.idle() {
                IDLE_WAKE
            } else {
                let us = self
                    .playout
                    .wake_in_usec(self.conn.now_usec())
                    .clamp(1_000, 10_000);
                Duration::from_micros(us)
            };
            let mut next = rx.recv_timeout(wake);
            loop {
                match next {
                    Ok(d) => {
                        last_heard = Instant::now();
                        self.conn
                            .stats
                            .bytes_received
                            .fetch_add(d.packet.len() as u64, Ordering::Relaxed);
                        if let Err(e) = self.on_datagram(&d) {
                            return e;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return "the receiver stopped".into()
                    }
                }
                next = rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
                });
            }
            let silent = last_heard.elapsed();
            if silent > end_after {
                return format!("no packets for {:.1} s", silent.as_secs_f64());
            }
            if silent > PLAIN_PAUSE_AFTER && !self.conn.paused.load(Ordering::Relaxed) {
                self.conn.paused.store(true, Ordering::Relaxed);
                self.restart = true;
            }
            if let Err(e) = self.tick() {
                return e;
            }
            self.follow_quiet();
            if last_stats.elapsed() >= Duration::from_millis(100) {
                last_stats = Instant::now();
                if let Ok(mut st) = self.conn.playout.lock() {
                    *st = Some(self.playout.stats());
                }
            }
        }
    }

    /// One plain RTP datagram. Anything but an RTP packet of the stream's payload type with a
    /// payload is ignored (the listener counts those); an `Err` ends the stream.
    pub(crate) fn on_datagram(&mut self, d: &Datagram) -> Result<(), String> {
        if rtp::is_rtcp(&d.packet) {
            return Ok(());
        }
        let Ok((h, payload)) = rtp::parse_rtp(&d.packet) else {
            return Ok(());
        };
        if h.payload_type != self.payload_type || payload.is_empty() {
            return Ok(());
        }
        if d.restart {
            // The sender started afresh (a new sequence or timeline): no concealment of
            // the "gap" in between.
            self.jitter.reset();
            self.restart = true;
        }
        self.on_rtp(&h, payload)
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
    pub(crate) fn new(
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

/// Why playout starts afresh (besides a pause or a new sender, which restart at the next
/// packet). Each restart is counted as an overrun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// More produced audio waits outside the ring than the maximum latency: the device
    /// stopped pulling (suspended, moved, stalled) and what waits is stale.
    DeviceStopped,
}

impl Restart {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::DeviceStopped => "the device stopped taking audio",
        }
    }
}

/// The rule that starts playout afresh when the device does not take the audio (the engine
/// itself handles everything about the stream and the latency); fed after each step.
pub struct RestartRules {
    max_usec: u64,
}

impl RestartRules {
    /// Rules for a buffer whose latency may reach `max_usec`.
    pub fn new(max_usec: u64) -> RestartRules {
        RestartRules { max_usec }
    }

    /// After the engine produced: `out_usec` of audio waits outside the ring.
    pub fn after_produce(&mut self, out_usec: u64) -> Option<Restart> {
        (out_usec > self.max_usec).then_some(Restart::DeviceStopped)
    }
}
