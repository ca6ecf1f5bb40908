//! The decode path, independent of the sound server: read → deframe → RTP → jitter buffer
//! (gaps → PLC) → decode → the drift-correcting playout engine → a lock-free ring, on the
//! connection's thread; the daemon's real-time thread takes the audio out with
//! [`Playback::pop`] and reports what it took. When playout starts afresh is decided in one
//! place, [`RestartRules`]. Used by the receiver for play tunnels and by the tunnel source's
//! record client.
use crate::codec::{self, Decoder, StreamFormat};
use crate::connection::ConnShared;
use crate::framing::Deframer;
use crate::jitter::{self, JitterBuffer, Playout, PushResult};
use crate::link::{self, DEAD_AFTER, MAX_FRAME};
use crate::net::Conn;
use crate::params::Compression;
use crate::params::OpusKnobs;
use crate::playout::{Expander, Playout as PlayoutEngine, PlayoutConfig, Target};
use crate::rtp::{self, Control};
use crate::server::Host;
use crate::udp::{self, ParityDecoder};
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
        written: 0,
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
        traced_arrivals: 0,
        upstream: None,
        up_running: None,
        up_gen: 0,
        rules: RestartRules::new(max_usec),
        notify: None,
        idle_since: None,
        udp: None,
        probe: None,
        parity: ParityDecoder::new(),
        repairs: udp::Repairs::new(),
        nacks: Vec::new(),
        ask_repairs: false,
        repairs_out: None,
        gap_since: None,
        last_seq: None,
        paused_seq: None,
        loss_mark: (0, 0),
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
    /// Samples ever written into the ring.
    written: u64,
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
    /// Packets whose arrival the trace logged since the engine (re)started.
    traced_arrivals: u32,
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
    /// `transport=udp`: what the UDP thread and this connection's TCP reader deliver.
    pub(crate) udp: Option<(mpsc::SyncSender<Input>, mpsc::Receiver<Input>)>,
    /// The desktop end of a record tunnel over UDP: its probes to the far end's UDP port.
    pub(crate) probe: Option<udp::Prober>,
    /// Rebuilds lost packets from parity blocks (UDP).
    parity: ParityDecoder,
    /// Which lost packets to ask the sender for again, and the repairs' round trip (UDP).
    repairs: udp::Repairs,
    /// Sequence numbers to ask for, sent with the next turn of the loop.
    nacks: Vec<u16>,
    /// The sender takes part in repairs (`Udp-Repair: nack` in the handshake).
    pub(crate) ask_repairs: bool,
    /// A play tunnel's way back to its sender for repair requests (the receiver's UDP socket,
    /// to where the tunnel's datagrams come from); a record tunnel's go through its prober.
    pub(crate) repairs_out: Option<crate::encode::UdpOut>,
    /// Since when the jitter buffer's head is a gap (UDP: held a little for its parity).
    gap_since: Option<Instant>,
    /// The sequence number of the newest audio packet taken.
    last_seq: Option<u16>,
    /// UDP: the sender paused after this packet; older datagrams that arrive after the pause
    /// are stale and dropped.
    paused_seq: Option<u16>,
    /// Packets lost and received at the last report (for the loss rate it carries).
    loss_mark: (u64, u64),
}

/// Datagrams (and TCP reads) queued for one UDP tunnel's connection thread: 5 s of 20 ms
/// packets with their parity.
pub(crate) const UDP_QUEUE: usize = 320;

/// What a UDP tunnel's connection thread waits for: bytes from its TCP connection (control),
/// a datagram's inner message (from the receiver's UDP thread), or the end of the TCP side.
pub(crate) enum Input {
    /// Bytes read from the TCP connection.
    Tcp(Vec<u8>),
    /// A datagram's kind and body, authenticated and new.
    Udp(u8, Vec<u8>),
    /// The TCP connection ended (the reason).
    Closed(String),
}

/// Reads the TCP side of a UDP tunnel and hands the bytes to its connection thread, until the
/// connection ends (or is shut down for reading).
fn tcp_reader(mut conn: Conn, tx: mpsc::SyncSender<Input>) {
    let _ = conn.set_timeouts(None, Some(Duration::from_secs(4)));
    let mut buf = vec![0u8; 16 * 1024];
    let why = loop {
        match conn.read(&mut buf) {
            Ok(0) => break "the sender closed the connection".to_string(),
            Ok(n) => {
                if tx.send(Input::Tcp(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if link::is_timeout(&e) => {}
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Input::Closed(why));
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
        // UDP: a thread reads the TCP side, and this one waits on both through a channel.
        let udp = self.udp.take();
        let mut reader = None;
        if let Some((tx, _)) = &udp {
            let r = match stream.try_clone() {
                Ok(r) => r,
                Err(e) => return e.to_string(),
            };
            let tx = tx.clone();
            match std::thread::Builder::new()
                .name("opus-tunnel-ctl".into())
                .spawn(move || tcp_reader(r, tx))
            {
                Ok(t) => reader = Some(t),
                Err(e) => return e.to_string(),
            }
        }
        let why = self.serve(
            stream,
            &mut reporter,
            rest,
            stop,
            udp.as_ref().map(|u| &u.1),
            &mut buf,
            &mut last_heard,
            &mut last_report,
            &mut last_stats,
        );
        // The reader may wait on a full queue: dropping its receiving end frees it.
        drop(udp);
        if let Some(t) = reader {
            stream.shutdown_read();
            let _ = t.join();
        }
        why
    }

    #[allow(clippy::too_many_arguments)]
    fn serve(
        &mut self,
        stream: &mut Conn,
        reporter: &mut &Conn,
        rest: Vec<u8>,
        stop: &AtomicBool,
        udp: Option<&mpsc::Receiver<Input>>,
        buf: &mut [u8],
        last_heard: &mut Instant,
        last_report: &mut Instant,
        last_stats: &mut Instant,
    ) -> String {
        let reporter = &mut *reporter;
        if let Err(e) = self.consume(&rest) {
            return e;
        }
        loop {
            if self.conn.killed() || stop.load(Ordering::SeqCst) {
                let bye = Control::Bye("stream closed by the receiver".into());
                let _ = link::send_controls(reporter, 0, &[bye]);
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
            if let Some(rx) = udp {
                match rx.recv_timeout(Duration::from_micros(wake)) {
                    Ok(Input::Tcp(bytes)) => {
                        *last_heard = Instant::now();
                        self.conn
                            .stats
                            .bytes_received
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if let Err(e) = self.consume(&bytes) {
                            return e;
                        }
                    }
                    Ok(Input::Udp(kind, body)) => {
                        *last_heard = Instant::now();
                        self.datagram(kind, &body);
                    }
                    Ok(Input::Closed(_)) if self.conn.killed() || stop.load(Ordering::SeqCst) => {
                        continue
                    }
                    Ok(Input::Closed(why)) => return why,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if last_heard.elapsed() > DEAD_AFTER {
                            return format!("nothing heard for {} s", DEAD_AFTER.as_secs());
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return "the connection's reader ended".into()
                    }
                }
                // A gap held for its parity block (or a repair) may be due.
                if self.jitter.gap_at_head() {
                    if let Err(e) = self.drain_jitter() {
                        return e;
                    }
                }
                if !self.nacks.is_empty() {
                    self.send_repair_requests();
                }
            } else {
                let _ = stream.set_read_timeout(Duration::from_micros(wake));
                match stream.read(buf) {
                    Ok(0) if self.conn.killed() || stop.load(Ordering::SeqCst) => continue,
                    Ok(0) => return "the sender closed the connection".into(),
                    Ok(n) => {
                        *last_heard = Instant::now();
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
            }
            if let Err(e) = self.tick() {
                return e;
            }
            self.follow_quiet();
            if let Err(e) = self.relay_upstream(reporter) {
                return e;
            }
            if last_stats.elapsed() >= Duration::from_millis(100) {
                *last_stats = Instant::now();
                self.publish_stats();
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                *last_report = Instant::now();
                let p = self.playout.stats();
                let s = self.conn.stats.snapshot();
                let mut kv = vec![
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
                if self.conn.stats.udp.transport() == udp::Transport::Udp {
                    kv.extend(self.loss_report(s.packets_received));
                }
                // While the sender is paused (or before its first audio) a bare keepalive says we
                // are alive (14 bytes).
                let msg = if self.ssrc.is_none() || self.conn.paused.load(Ordering::Relaxed) {
                    Control::Keepalive
                } else {
                    Control::Report(kv)
                };
                if link::send_controls(reporter, 0, &[msg]).is_err() {
                    return "cannot send reports to the sender".into();
                }
                // Over UDP a keepalive goes back as a datagram too: TCP's backoff on a lossy
                // link can hold the report back for seconds, and the sender would take us for
                // gone (`udp::Heard`).
                if let Some(out) = self.repairs_out.as_mut() {
                    let mut rtcp = Vec::new();
                    rtp::write_rtcp(0, &[Control::Keepalive], &mut rtcp);
                    out.send(udp::KIND_CONTROL, &rtcp);
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
            // UDP: a probe ahead of the resume gives the far end's audio its way.
            if let (true, Some(p)) = (running, self.probe.as_mut()) {
                p.probe();
            }
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
        if let Some(p) = self.probe.as_mut() {
            p.tick(running);
        }
        if msgs.is_empty() {
            return Ok(());
        }
        link::send_controls(w, 0, &msgs)
            .map(|_| ())
            .map_err(|e| format!("cannot reach the far end: {e}"))
    }

    /// The sender posts its audio in blocks of `usec` µs (its hello's `Block-Usec`).
    pub(crate) fn set_sender_block_usec(&mut self, usec: u64) {
        self.playout.set_sender_block_usec(usec);
    }

    /// A new connection of a record tunnel: everything but the ring and the device counters
    /// starts afresh.
    pub(crate) fn new_session(&mut self, decoder: Decoder) {
        self.decoder = decoder;
        self.jitter.reset();
        self.parity.reset();
        self.repairs.reset();
        self.nacks.clear();
        self.last_seq = None;
        self.paused_seq = None;
        self.gap_since = None;
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
        // Only what is in the ring now is stale: the audio of the new start, written before
        // the device's next pull, stays.
        self.conn
            .discard_until
            .store(self.written, Ordering::SeqCst);
        self.playout.reset();
        self.out.clear();
        self.base = self.last;
        self.traced_arrivals = 0;
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
            self.written += n as u64;
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
                            self.paused_seq = self.last_seq;
                            self.parity.reset();
                            self.repairs.reset();
                            self.nacks.clear();
                        }
                        Control::Bye(why) => return Err(format!("the sender said goodbye: {why}")),
                        _ => {}
                    }
                }
                continue;
            }
            self.on_rtp(&frame)?;
        }
    }

    /// A datagram's inner message (UDP): an RTP packet or a parity block. Nothing in it can
    /// end the connection: what cannot be used is dropped and counted.
    fn datagram(&mut self, kind: u8, body: &[u8]) {
        let rebuilt = match kind {
            udp::KIND_RTP => match rtp::parse_rtp(body) {
                Ok((h, _)) if h.payload_type == self.payload_type && !rtp::is_rtcp(body) => {
                    self.parity.on_packet(h.seq, body)
                }
                _ => {
                    self.conn.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            udp::KIND_PARITY => self.parity.on_block(body),
            _ => {
                self.conn.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // The rebuilt packet is older: it goes in first.
        if let Some(p) = rebuilt {
            if let Ok(Some(PushResult::Accepted)) = self.take_rtp(&p, None) {
                let u = &self.conn.stats.udp;
                u.parity_frames.fetch_add(1, Ordering::Relaxed);
                u.packets_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        if kind == udp::KIND_RTP {
            let _ = self.take_rtp(body, Some(self.conn.now_usec()));
        }
        if let Err(e) = self.drain_jitter() {
            log::debug!("{}: {e}", self.conn.label);
        }
    }

    /// An RTP packet from a datagram (`arrived`: when; `None` for one rebuilt from parity):
    /// into the jitter buffer unless it is stale (sent before a pause that has overtaken it).
    /// `None`: dropped.
    fn take_rtp(&mut self, pkt: &[u8], arrived: Option<u64>) -> Result<Option<PushResult>, String> {
        let Ok((h, _)) = rtp::parse_rtp(pkt) else {
            return Ok(None);
        };
        if let (Some(p), true) = (self.paused_seq, self.conn.paused.load(Ordering::Relaxed)) {
            if h.seq.wrapping_sub(p) as i16 <= 0 && self.ssrc == Some(h.ssrc) {
                return Ok(None);
            }
        }
        self.push_rtp(pkt, arrived)
    }

    /// One RTP packet, arrived now (from the TCP stream: an error closes the connection).
    fn on_rtp(&mut self, frame: &[u8]) -> Result<(), String> {
        self.push_rtp(frame, Some(self.conn.now_usec()))?;
        self.drain_jitter()
    }

    /// Checks an RTP packet against the handshake and pushes it into the jitter buffer.
    fn push_rtp(
        &mut self,
        frame: &[u8],
        arrived: Option<u64>,
    ) -> Result<Option<PushResult>, String> {
        {
            let (h, payload) = rtp::parse_rtp(frame).map_err(|e| format!("bad RTP: {e}"))?;
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
            let repair = match arrived {
                Some(_) if self.udp_mode() => self.repairs.on_arrival(h.seq, Instant::now()),
                _ => None,
            };
            // A repair from far behind what plays now is too late (and must not read as a
            // restart of the sequence).
            let behind = self.jitter.next_seq().is_some_and(|n| {
                (h.seq.wrapping_sub(n) as i16) < -(jitter::MAX_MISORDER as i16) / 2
            });
            // A repair held up on the way is handed over as rebuilt audio, not as an arrival:
            // it says nothing about how late the next will be.
            let sizes = repair.map_or(true, |rt| self.repairs.sizes_buffer(rt));
            let r = if repair.is_some() && behind {
                PushResult::Late
            } else {
                let arrived = arrived.filter(|_| sizes);
                self.jitter
                    .push_at(h.seq, h.timestamp, payload.to_vec(), arrived)
            };
            match r {
                PushResult::Late => {
                    self.conn.stats.late_packets.fetch_add(1, Ordering::Relaxed);
                    // Too late to play, but a measure of how late the link delivers: it sizes
                    // the target (a repair only as udp::Repairs::sizes_buffer says).
                    if let Some(now) = arrived {
                        if sizes {
                            let frames = self.playout.stats().packet_usec
                                * u64::from(self.conn.rate)
                                / 1_000_000;
                            let pos = self.position(h.timestamp);
                            self.playout.on_too_late(now, pos, frames);
                        }
                    }
                }
                PushResult::Duplicate => {
                    self.conn.stats.late_packets.fetch_add(1, Ordering::Relaxed);
                }
                PushResult::Overflow => {
                    self.conn.stats.overruns.fetch_add(1, Ordering::Relaxed);
                }
                PushResult::Accepted => {
                    if repair.is_some() {
                        // Lost, and back in time to play.
                        let u = &self.conn.stats.udp;
                        u.repaired_frames.fetch_add(1, Ordering::Relaxed);
                        u.packets_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    let newer = match self.last_seq {
                        None => true,
                        Some(l) => h.seq.wrapping_sub(l) as i16 > 0,
                    };
                    if let (true, Some(l), Some(_)) = (newer, self.last_seq, arrived) {
                        let missing = h.seq.wrapping_sub(l).wrapping_sub(1);
                        if missing > 0 && self.udp_mode() && self.ask_repairs {
                            let packet_usec = self.playout.stats().packet_usec;
                            let spare = self.gap_spare();
                            let ask = self.repairs.on_gap(
                                l.wrapping_add(1),
                                missing,
                                packet_usec,
                                spare,
                                Instant::now(),
                            );
                            self.nacks.extend(ask);
                        }
                    }
                    if newer {
                        self.last_seq = Some(h.seq);
                    }
                }
            }
            Ok(Some(r))
        }
    }

    /// Asks the sender for the packets in `nacks` again, in a datagram (a lost one costs only
    /// that repair; on the TCP connection a lost segment holds back everything after it).
    fn send_repair_requests(&mut self) {
        let mut rtcp = Vec::new();
        rtp::write_rtcp(
            0,
            &[Control::Nack(std::mem::take(&mut self.nacks))],
            &mut rtcp,
        );
        if let Some(out) = self.repairs_out.as_mut() {
            out.send(udp::KIND_CONTROL, &rtcp);
        } else if let Some(p) = self.probe.as_mut() {
            p.send_control(&rtcp);
        }
    }

    /// The loss since the last report (UDP), for the sender's encoder: `loss_pct` (packets
    /// that did not arrive, recovered or not, per hundred sent), and the running counts.
    fn loss_report(&mut self, received: u64) -> Vec<(String, String)> {
        let u = &self.conn.stats.udp;
        let lost = u.packets_lost.load(Ordering::Relaxed);
        let (l0, r0) = self.loss_mark;
        self.loss_mark = (lost, received);
        let (dl, dr) = (lost.saturating_sub(l0), received.saturating_sub(r0));
        let pct = if dl + dr == 0 {
            0
        } else {
            (dl * 100).div_ceil(dl + dr)
        };
        vec![
            ("loss_pct".to_string(), pct.to_string()),
            ("packets_lost".to_string(), lost.to_string()),
            (
                "fec_frames".to_string(),
                u.fec_frames.load(Ordering::Relaxed).to_string(),
            ),
            (
                "parity_frames".to_string(),
                u.parity_frames.load(Ordering::Relaxed).to_string(),
            ),
            (
                "repaired_frames".to_string(),
                u.repaired_frames.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }

    /// How long a gap at the jitter buffer's head may wait for the parity block that could
    /// rebuild it (UDP): what the receive buffer holds beyond two packets, at most a parity
    /// group's span. Over TCP, and with a short buffer, nothing: the gap is concealed at once.
    /// (A gap asked for again waits for its repair instead: [`udp::Repairs::wait_until`].)
    fn gap_hold(&self) -> Duration {
        if !self.udp_mode() {
            return Duration::ZERO;
        }
        self.gap_spare()
            .min(Duration::from_micros(udp::PARITY_SPAN_USEC))
    }

    /// What the receive buffer holds beyond two packets: how long a gap may wait.
    fn gap_spare(&self) -> Duration {
        let p = self.playout.stats();
        Duration::from_micros(p.latency_usec.saturating_sub(2 * p.packet_usec))
    }

    fn udp_mode(&self) -> bool {
        self.conn.stats.udp.transport() == udp::Transport::Udp
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
                self.publish_stats();
            }
        }
    }

    /// Hands the engine's figures to the connection's readers (properties, `status`), and
    /// with `OPUS_TUNNEL_TRACE` logs the engine's state; every 100 ms.
    fn publish_stats(&mut self) {
        if let Ok(mut st) = self.conn.playout.lock() {
            *st = Some(self.playout.stats());
        }
        if self.trace {
            let c = self.playout.controller();
            log::info!(
                "trace {} dev at={} consumed={} missing={} skew_ppm={:.1} ring={} fifo={} produced={} {:?} {}",
                self.conn.now_usec(),
                self.last.now_usec,
                self.last.consumed.saturating_sub(self.base.consumed),
                self.last.missing.saturating_sub(self.base.missing),
                c.skew_ppm(),
                self.conn.fill.load(Ordering::Relaxed),
                c.fifo_frames(),
                c.produced(),
                self.playout.stats(),
                c.skew_lines()
            );
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
        self.on_rtp(&d.packet)
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
        loop {
            if self.jitter.gap_at_head() {
                let now = Instant::now();
                let repair = self
                    .jitter
                    .next_seq()
                    .and_then(|s| self.repairs.wait_until(s));
                if let Some(until) = repair {
                    if now < until {
                        break;
                    }
                } else {
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.gap_hold() {
                        break;
                    }
                }
            }
            let Some(p) = self.jitter.pop() else {
                break;
            };
            // The hold is the gap's, not each lost packet's: the rest of a burst goes at once
            // (held a hold each, a burst of ten kept the packets behind it ~100 ms while the
            // engine concealed their time, and they came late).
            if matches!(p, Playout::Packet { .. }) {
                self.gap_since = None;
            }
            self.pcm.clear();
            let (ts, arrived) = match p {
                Playout::Packet {
                    payload,
                    timestamp,
                    arrived,
                } => {
                    if let Err(e) = self.decoder.decode(&payload, &mut self.pcm) {
                        // A corrupt packet is concealed like a lost one, not fatal.
                        log::debug!("{}: undecodable packet ({e}); concealed", self.conn.label);
                        self.pcm.clear();
                        let n = self.decoder.ticks_to_samples(codec::OPUS_RTP_CLOCK / 50);
                        let _ = self.decoder.conceal_lost(n, 0, &mut self.pcm);
                        self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    (self.position(timestamp), arrived)
                }
                Playout::Missing { ticks, timestamp } => {
                    let n = self.decoder.ticks_to_samples(ticks);
                    let mut pos = self.position(timestamp);
                    if n > 0 {
                        self.conn
                            .stats
                            .udp
                            .packets_lost
                            .fetch_add(1, Ordering::Relaxed);
                        // The next packet's in-band FEC, when it carries some (Opus SILK or
                        // hybrid frames from a sender with FEC on), else concealment.
                        let fec = self
                            .jitter
                            .head_payload()
                            .filter(|p| {
                                self.payload_type == codec::payload_type(Compression::Opus)
                                    && self.conn.channels <= 2
                                    && udp::opus_has_fec(p)
                            })
                            .map(<[u8]>::to_vec);
                        let recovered = fec.is_some_and(|p| {
                            let ok = self.decoder.decode_fec(&p, n, &mut self.pcm).is_ok();
                            if !ok {
                                self.pcm.clear();
                            }
                            ok
                        });
                        if recovered {
                            self.conn
                                .stats
                                .udp
                                .fec_frames
                                .fetch_add(1, Ordering::Relaxed);
                        } else {
                            // The engine may have concealed the start of it already (as
                            // late audio): the decoder conceals the whole packet, now known
                            // lost, and what follows that start is played.
                            // (Opus conceals in 2.5 ms steps: an odd overlap is skipped
                            // by the engine.)
                            let step = (self.conn.rate as usize / 400).max(1);
                            let covered = (self.playout.covered_from(pos) as usize).min(n);
                            let covered = covered - covered % step;
                            pos = pos.wrapping_add(covered as u32);
                            self.decoder
                                .conceal_lost(n, covered, &mut self.pcm)
                                .map_err(|e| format!("concealment: {e}"))?;
                            self.conn.stats.plc_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    (pos, None)
                }
            };
            // (A lost packet whose time the engine has concealed already is still told: the
            // packet after it is then no later than the loss made it.)
            if !self.pcm.is_empty() || arrived.is_none() {
                let now = self.conn.now_usec();
                self.playout.on_audio(now, arrived, ts, &self.pcm);
                if self.trace && self.traced_arrivals < 40 {
                    // A start's first packets: when each came, and the target after it.
                    self.traced_arrivals += 1;
                    let st = self.playout.stats();
                    log::info!(
                        "trace arrival ts={ts} arrived={arrived:?} now={now} frames={} target_usec={} state={:?}",
                        self.pcm.len() / usize::from(self.conn.channels.max(1)),
                        st.target_usec,
                        st.state
                    );
                }
            }
        }
        self.tick()
    }
}

/// The stream's side on the daemon's real-time thread: takes the engine's audio out of the
/// ring, plays the [`Expander`]'s continuation where there is none, and reports what it took
/// (and when) to the connection thread. Lock-free and allocation-free.
pub struct Playback {
    conn: Arc<ConnShared>,
    expander: Expander,
    ring: rtrb::Consumer<f32>,
    reports: rtrb::Producer<DeviceReport>,
    consumed: u64,
    missing: u64,
    /// Samples ever taken (or dropped as stale) from the ring.
    read: u64,
}

impl Playback {
    pub(crate) fn new(
        conn: Arc<ConnShared>,
        ring: rtrb::Consumer<f32>,
        reports: rtrb::Producer<DeviceReport>,
    ) -> Playback {
        Playback {
            expander: Expander::new(conn.rate, usize::from(conn.channels)),
            conn,
            ring,
            reports,
            consumed: 0,
            missing: 0,
            read: 0,
        }
    }

    /// Fills `out` (interleaved samples) completely, with the expander's continuation where
    /// nothing is there.
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
        let stale = self.stale_samples();
        if stale > 0 {
            if let Ok(c) = self.ring.read_chunk(stale) {
                c.commit_all();
                self.read += stale as u64;
            }
        }
        let want = (want / ch) * ch;
        let take = (self.ring.slots().min(want) / ch) * ch;
        if let Ok(chunk) = self.ring.read_chunk(take) {
            let (a, b) = chunk.as_slices();
            for (i, v) in a.iter().chain(b.iter()).enumerate() {
                put(i, self.expander.real(*v));
            }
            chunk.commit_all();
        }
        (take..want).for_each(|i| put(i, self.expander.missing()));
        self.read += take as u64;
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

    /// Samples at the front of the ring that a restart made stale: the next pop throws them
    /// away.
    fn stale_samples(&self) -> usize {
        let until = self.conn.discard_until.load(Ordering::SeqCst);
        (until.saturating_sub(self.read) as usize).min(self.ring.slots())
    }

    /// Samples waiting in the ring that the next pop would take (stale ones not counted).
    pub fn ready_samples(&self) -> usize {
        // The worker may add to the ring between the two reads: never below zero.
        let stale = self.stale_samples();
        self.ring.slots().saturating_sub(stale)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoder;
    use crate::connection::new_conn;
    use crate::handshake::Hello;
    use crate::params::Signal;
    use crate::rtp::RtpSender;
    use crate::udp::{ParityEncoder, Transport, KIND_PARITY, KIND_RTP};

    fn hello() -> Hello {
        Hello::opus_stereo_play("t".to_string(), "h".into())
    }

    /// Voiced syllables, 20 ms frame `f`.
    fn speech_frame(f: usize) -> Vec<f32> {
        (0..960 * 2)
            .map(|i| {
                let t = (f * 960 + i / 2) as f32 / 48_000.0;
                let on = if t % 0.3 < 0.2 { 1.0 } else { 0.0 };
                let f0 = 120.0 + 40.0 * (t * 2.0).sin();
                on * (0.3 * (t * 2.0 * std::f32::consts::PI * f0).sin().powi(15)
                    + 0.05 * (t * 2.0 * std::f32::consts::PI * 700.0).sin())
            })
            .collect()
    }

    /// The UDP receive path at real-time pace with every 7th packet lost: each loss is
    /// counted, and rebuilt from parity (when its block comes before the gap must be played:
    /// here, with no device pulling, at once) or decoded from the next packet's FEC, not
    /// concealed; junk datagrams are counted and change nothing.
    #[test]
    fn udp_losses_are_recovered_by_parity_or_fec() {
        let conn = new_conn(&hello(), 0, "peer".into());
        conn.stats.udp.set_transport(Transport::Udp);
        let (mut rx, _playback) =
            decode_path(&conn, Compression::Opus, 0, 0, 1_000_000, false).unwrap();
        let knobs = OpusKnobs {
            bitrate: 24_000,
            signal: Signal::Voice,
            fec: true,
            packet_loss: 15,
            ..OpusKnobs::default()
        };
        let fmt = StreamFormat {
            rate: 48_000,
            channels: 2,
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
        let mut rtp = RtpSender::new();
        let mut parity = ParityEncoder::new();
        let (mut payload, mut pkt) = (Vec::new(), Vec::new());
        let mut dropped = 0;
        for f in 0..60 {
            enc.encode(&speech_frame(f), &mut payload).unwrap();
            rtp.packetize(96, 960, false, &payload, &mut pkt);
            let seq = rtp.seq().wrapping_sub(1);
            let block = parity.add(seq, &pkt, 4);
            if f % 7 == 3 {
                dropped += 1;
            } else {
                rx.datagram(KIND_RTP, &pkt);
            }
            // Junk: never fatal, counted.
            rx.datagram(KIND_RTP, &[0x80, 0x60, 0, 0]);
            rx.datagram(9, b"what");
            if let Some(b) = block {
                rx.datagram(KIND_PARITY, &b);
            }
            std::thread::sleep(Duration::from_millis(20));
            rx.drain_jitter().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        rx.drain_jitter().unwrap();
        let u = &conn.stats.udp;
        let lost = u.packets_lost.load(Ordering::Relaxed);
        let fec = u.fec_frames.load(Ordering::Relaxed);
        let par = u.parity_frames.load(Ordering::Relaxed);
        let plc = conn.stats.plc_frames.load(Ordering::Relaxed);
        let junk = u.dropped.load(Ordering::Relaxed);
        println!("{dropped} lost: rebuilt from parity {par}, decoded from FEC {fec}, PLC {plc}");
        assert_eq!(lost, dropped);
        assert!(par > 0, "parity rebuilt nothing (fec {fec}, plc {plc})");
        // What parity did not rebuild in time was a gap: FEC or PLC.
        assert_eq!(
            fec + plc + par,
            lost,
            "fec {fec} plc {plc} parity {par} of {lost}"
        );
        assert_eq!(junk, 120);
        let report = rx.loss_report(conn.stats.snapshot().packets_received);
        assert!(report.contains(&("parity_frames".to_string(), par.to_string())));
    }

    /// A burst of lost packets waits for its parity once, not once per packet: the packets
    /// behind it are handed over soon after they come. (Each lost packet held a hold of its
    /// own: over the WAN table's bursty link a burst of eleven kept the packets behind it
    /// ~95 ms while the engine concealed their time, and they were played late, the
    /// latency growing by 45 ms.) Here a device pulls 20 ms at a time from a buffer held at
    /// 80 ms or more: a gap may wait what it holds beyond two packets, up to a parity
    /// group's span (120 ms). Held once per lost packet, 5 of the 10 were given up by the
    /// end.
    #[test]
    fn a_burst_of_losses_is_held_once() {
        let conn = new_conn(&hello(), 0, "peer".into());
        conn.stats.udp.set_transport(Transport::Udp);
        let (mut rx, mut playback) =
            decode_path(&conn, Compression::Opus, 80_000, 0, 1_000_000, false).unwrap();
        let mut device = vec![0.0f32; 960 * 2];
        let fmt = StreamFormat {
            rate: 48_000,
            channels: 2,
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &OpusKnobs::default()).unwrap();
        let mut rtp = RtpSender::new();
        let (mut payload, mut pkt) = (Vec::new(), Vec::new());
        let burst = 20..30;
        let mut lost_by = None;
        let start = std::time::Instant::now();
        for f in 0..60 {
            enc.encode(&speech_frame(f), &mut payload).unwrap();
            rtp.packetize(96, 960, false, &payload, &mut pkt);
            if !burst.contains(&f) {
                rx.datagram(KIND_RTP, &pkt);
            }
            std::thread::sleep(Duration::from_millis(20));
            playback.pop(&mut device);
            rx.drain_jitter().unwrap();
            let lost = conn.stats.udp.packets_lost.load(Ordering::Relaxed);
            if lost == 10 && lost_by.is_none() {
                lost_by = Some(f);
            }
        }
        let lost = conn.stats.udp.packets_lost.load(Ordering::Relaxed);
        assert_eq!(lost, 10, "after {:?}", start.elapsed());
        // The packet after the burst (30) came; one hold (at most 120 ms: six packets) later
        // the whole burst was given up.
        let by = lost_by.unwrap_or(usize::MAX);
        println!("the burst was given up at packet {by}");
        assert!(by <= 30 + 7, "the burst was given up only at packet {by}");
    }

    /// A burst of lost packets (60 ms) is asked for again at once. The first burst's repair
    /// comes after its time: the gap waits for it while the engine conceals, and it plays
    /// late, whole: the latency and the target grow by its lateness. The next burst's repair,
    /// as late, is then in time: nothing more is concealed.
    #[test]
    fn a_burst_is_asked_for_and_its_repair_plays() {
        let conn = new_conn(&hello(), 0, "peer".into());
        conn.stats.udp.set_transport(Transport::Udp);
        let (mut rx, mut playback) =
            decode_path(&conn, Compression::Opus, 0, 0, 1_000_000, false).unwrap();
        rx.ask_repairs = true;
        let mut device = vec![0.0f32; 960 * 2];
        let fmt = StreamFormat {
            rate: 48_000,
            channels: 2,
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &OpusKnobs::default()).unwrap();
        let mut rtp = RtpSender::new();
        let (mut payload, mut pkt) = (Vec::new(), Vec::new());
        let mut kept = Vec::new();
        let mut asked = Vec::new();
        let mut target_before = 0;
        let mut plc_before = 0;
        // The device pulls at its nominal rate (against the clock, not after each turn's
        // work: a device a few per cent slow reads as a ring emptier than it is).
        let start = Instant::now();
        for f in 0..90 {
            enc.encode(&speech_frame(f), &mut payload).unwrap();
            rtp.packetize(96, 960, false, &payload, &mut pkt);
            match f {
                20..=22 | 60..=62 => kept.push(pkt.clone()),
                _ => rx.datagram(KIND_RTP, &pkt),
            }
            match f {
                19 => target_before = rx.playout.stats().target_usec,
                23 => asked = std::mem::take(&mut rx.nacks),
                59 => plc_before = conn.stats.plc_frames.load(Ordering::Relaxed),
                63 => assert_eq!(rx.nacks.len(), 3, "the second burst is asked for"),
                // The repairs, three packets (60 ms) after the request.
                26 | 66 => {
                    for p in kept.drain(..) {
                        rx.datagram(KIND_RTP, &p);
                    }
                }
                _ => {}
            }
            let due = start + Duration::from_millis(20 * (f as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            playback.pop(&mut device);
            rx.drain_jitter().unwrap();
        }
        let first = rtp.seq().wrapping_sub(90);
        assert_eq!(
            asked,
            (20..23).map(|k| first.wrapping_add(k)).collect::<Vec<_>>()
        );
        let u = &conn.stats.udp;
        let repaired = u.repaired_frames.load(Ordering::Relaxed);
        let lost = u.packets_lost.load(Ordering::Relaxed);
        let plc = conn.stats.plc_frames.load(Ordering::Relaxed);
        let p = rx.playout.stats();
        println!(
            "lost {lost}, repaired {repaired}, concealed {plc} (before the second burst \
             {plc_before}); target {target_before} µs → {} µs, latency {} µs",
            p.target_usec, p.latency_usec
        );
        assert_eq!(repaired, 6);
        assert_eq!(lost, 6);
        assert!(
            p.target_usec > target_before + 80_000,
            "target {target_before} µs → {} µs",
            p.target_usec
        );
        assert_eq!(plc, plc_before, "the second burst was concealed");
        assert_eq!(conn.stats.late_packets.load(Ordering::Relaxed), 0);
        let report = rx.loss_report(conn.stats.snapshot().packets_received);
        assert!(report.contains(&("repaired_frames".to_string(), "6".to_string())));
    }
}
