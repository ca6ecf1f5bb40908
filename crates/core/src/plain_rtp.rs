//! Plain RTP/Opus (RFC 7587) for third-party tools, with no handshake, as PulseAudio's
//! `module-rtp-send` does: the tunnel sink's `server=rtp://HOST:PORT` sends one UDP datagram
//! an RTP packet and writes an SDP description of the stream ([`sdp`]); the receiver's
//! `rtp_port=` plays every plain RTP/Opus stream it admits as one more stream, one per sender
//! address and SSRC, through the same jitter buffer and playout engine as a tunnel.
//!
//! Plain RTP has no handshake, so it is always cleartext and unauthenticated: the receiver
//! admits senders by address only (`auth-ip-acl`, or anyone with `auth-anonymous=1`), and
//! drops and counts everything else. Nothing a sender puts in a datagram can end or disturb a
//! stream: packets that are not RTP of the expected payload type, or whose sequence number
//! and timestamp do not follow the stream's, are dropped and counted ([`SeqGuard`]); a sender
//! that really started afresh is followed from its second packet in the new sequence.
use crate::acl::IpAcl;
use crate::connection::{new_conn, ConnShared};
use crate::decode::{decode_path, Datagram, Receive};
use crate::encode::{feeder, Feeder, PacketOut, Shared, Worker, WorkerConfig};
use crate::handshake::Hello;
use crate::params::{Compression, OpusKnobs, ServerAddr};
use crate::rtp;
use crate::server::{request, Host};
use crate::stats::TunnelState;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The payload type of plain RTP/Opus unless `rtp_payload=` says otherwise.
pub const DEFAULT_PAYLOAD_TYPE: u8 = 96;

/// A stream ends after this long without packets.
pub const END_AFTER: Duration = Duration::from_secs(3);

/// A stream the daemon refused is offered again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Datagrams waiting for a stream's thread (about 5 s of 20 ms packets).
const QUEUE: usize = 256;

/// Log lines about dropped datagrams: at most one per this long for each kind.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Largest datagram read (a 120 ms Opus packet at 510 kbit/s is under 8 KB).
const MAX_DATAGRAM: usize = 65_536;

// ---- SDP -----------------------------------------------------------------------------------

/// What an SDP description of a plain RTP/Opus stream says.
#[derive(Debug, Clone, PartialEq)]
pub struct SdpInfo {
    /// `s=`: the session's name (the tunnel sink's name).
    pub name: String,
    /// `o=`: the sender's address.
    pub origin: IpAddr,
    /// `c=` and `m=`: where the stream goes.
    pub dest: SocketAddr,
    /// The RTP payload type.
    pub payload_type: u8,
    /// Channels sent (1 or 2): `sprop-stereo`.
    pub channels: u8,
    /// The sender's sample rate: `sprop-maxcapturerate`.
    pub rate: u32,
    /// The encoder's settings: `ptime`, `useinbandfec`, `usedtx`, `cbr`.
    pub knobs: OpusKnobs,
    /// `o=`'s session id (NTP-style seconds) and version (bumped by each change).
    pub session: (u64, u64),
}

/// The SDP description (RFC 4566, Opus per RFC 7587) of a plain RTP/Opus stream, lines ended
/// by `eol` (`"\r\n"` as RFC 4566 writes it, `"\n"` for a property). The RTP clock is 48 kHz
/// and the encoding `opus/48000/2` whatever is sent (RFC 7587 §7); `sprop-stereo` says
/// whether the sender sends stereo. An IPv4 multicast destination gets TTL 1 in `c=`.
pub fn sdp(i: &SdpInfo, eol: &str) -> String {
    let family = |ip: &IpAddr| if ip.is_ipv4() { "IP4" } else { "IP6" };
    let name: String = i
        .name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = if name.trim().is_empty() {
        "opus-tunnel".to_string()
    } else {
        name
    };
    let dest_ip = i.dest.ip();
    let ttl = match dest_ip {
        IpAddr::V4(v4) if v4.is_multicast() => "/1",
        _ => "",
    };
    let pt = i.payload_type;
    let mut fmtp = format!(
        "sprop-stereo={}; sprop-maxcapturerate={}",
        u8::from(i.channels >= 2),
        i.rate
    );
    if i.knobs.fec {
        fmtp.push_str("; useinbandfec=1");
    }
    if i.knobs.dtx {
        fmtp.push_str("; usedtx=1");
    }
    if !i.knobs.vbr {
        fmtp.push_str("; cbr=1");
    }
    let lines = [
        "v=0".to_string(),
        format!(
            "o=- {} {} IN {} {}",
            i.session.0,
            i.session.1,
            family(&i.origin),
            i.origin
        ),
        format!("s={name}"),
        format!("c=IN {} {dest_ip}{ttl}", family(&dest_ip)),
        "t=0 0".to_string(),
        format!("m=audio {} RTP/AVP {pt}", i.dest.port()),
        format!("a=rtpmap:{pt} opus/48000/2"),
        format!("a=fmtp:{pt} {fmtp}"),
        format!("a=ptime:{}", i.knobs.frame_size.as_str()),
    ];
    let mut s = lines.join(eol);
    s.push_str(eol);
    s
}

/// Writes `text` to `path` through a temporary file beside it (a reader never sees half).
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Seconds since 1900 (NTP), as SDP session ids are customarily made.
fn ntp_seconds() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    unix + 2_208_988_800
}

// ---- sending -------------------------------------------------------------------------------

/// The plain RTP settings of a tunnel sink (`rtp_payload=`, `sdp_file=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendConfig {
    /// The RTP payload type (96–127).
    pub payload_type: u8,
    /// Where to write the SDP description (rewritten when the knobs change).
    pub sdp_file: Option<PathBuf>,
}

/// What a plain RTP sender shows besides the tunnel's statistics.
pub struct SendInfo {
    sdp: Mutex<String>,
    send_errors: AtomicU64,
}

impl SendInfo {
    /// The SDP description of the stream as sent now (LF line ends).
    pub fn sdp(&self) -> String {
        self.sdp.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Properties (beside the stream's statistics, whose `opus.tunnel.transport` is `rtp`):
    /// `opus.tunnel.send_errors` (datagrams
    /// the socket refused: buffer full, ICMP unreachable) and, with `sdp`, `opus.tunnel.sdp`
    /// (several lines: left out where answers are one `key=value` a line).
    pub fn properties(&self, sdp: bool) -> Vec<(String, String)> {
        let mut v = vec![(
            "opus.tunnel.send_errors".into(),
            self.send_errors.load(Ordering::Relaxed).to_string(),
        )];
        if sdp {
            v.push(("opus.tunnel.sdp".into(), self.sdp()));
        }
        v
    }
}

/// A UDP socket toward `host:port`, connected (so that only that address is written to), and
/// the addresses it sends from and to. Names are resolved here (once, at load).
pub fn open_socket(host: &str, port: u16) -> Result<(UdpSocket, SocketAddr, SocketAddr), String> {
    let dest = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("server: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("server: {host} has no address"))?;
    let any: SocketAddr = if dest.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock =
        UdpSocket::bind(any).map_err(|e| format!("server: cannot open a UDP socket: {e}"))?;
    sock.connect(dest)
        .map_err(|e| format!("server: cannot send to {dest}: {e}"))?;
    // Never wait for the kernel's buffer: a datagram that does not fit is dropped and counted.
    sock.set_nonblocking(true)
        .map_err(|e| format!("server: UDP socket: {e}"))?;
    let local = sock
        .local_addr()
        .map_err(|e| format!("server: UDP socket: {e}"))?;
    Ok((sock, local, dest))
}

/// Datagrams to the plain RTP destination; a send that fails is dropped and counted, never
/// fatal (a connected UDP socket reports an earlier ICMP "port unreachable" at the next send).
struct UdpOut {
    sock: UdpSocket,
    dest: SocketAddr,
    info: Arc<SendInfo>,
    name: String,
    last_log: Option<Instant>,
}

impl PacketOut for UdpOut {
    fn send_packet(&mut self, packet: &[u8], _scratch: &mut Vec<u8>) -> Result<usize, String> {
        match self.sock.send(packet) {
            Ok(n) => Ok(n),
            Err(e) => {
                let n = self.info.send_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if self.last_log.map_or(true, |t| t.elapsed() >= LOG_EVERY) {
                    self.last_log = Some(Instant::now());
                    log::warn!(
                        "{}: cannot send plain RTP to {}: {e} ({n} datagrams dropped so far)",
                        self.name,
                        self.dest
                    );
                }
                Ok(0)
            }
        }
    }
}

/// Starts a tunnel sink's plain RTP sender (`cfg.addr` is `rtp://HOST:PORT`): resolves and
/// opens the socket, writes the SDP file, and starts the worker that encodes what the
/// [`Feeder`] receives and sends it. Fails (the load fails) on what cannot work at all.
#[allow(clippy::type_complexity)]
pub fn start_play(
    cfg: WorkerConfig,
    knobs: OpusKnobs,
    ring_bytes: usize,
    rtp_cfg: SendConfig,
) -> Result<(Feeder, Arc<Shared>, JoinHandle<()>, Arc<SendInfo>), String> {
    let ServerAddr::Rtp { host, port } = &cfg.addr else {
        return Err("server: not an rtp:// address".into());
    };
    if cfg.compression != Compression::Opus || !(1..=2).contains(&cfg.fmt.channels) {
        return Err("plain RTP (server=rtp://) carries Opus with 1 or 2 channels".into());
    }
    let (sock, local, dest) = open_socket(host, *port)?;
    let mut info = SdpInfo {
        name: cfg.name.clone(),
        origin: local.ip(),
        dest,
        payload_type: rtp_cfg.payload_type,
        channels: cfg.fmt.channels,
        rate: cfg.fmt.rate,
        knobs,
        session: (ntp_seconds(), 1),
    };
    if info.origin.is_unspecified() {
        info.origin = if dest.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
    }
    if let Some(f) = &rtp_cfg.sdp_file {
        write_file(f, &sdp(&info, "\r\n"))
            .map_err(|e| format!("sdp_file: cannot write {}: {e}", f.display()))?;
    }
    let send_info = Arc::new(SendInfo {
        sdp: Mutex::new(sdp(&info, "\n")),
        send_errors: AtomicU64::new(0),
    });
    let (feeder, shared, consumer) = feeder(&cfg, knobs, ring_bytes);
    shared.stats.udp.set_transport(crate::udp::Transport::Rtp);
    let (s2, i2) = (shared.clone(), send_info.clone());
    let name = cfg.name.clone();
    let (log_name, pt) = (cfg.name.clone(), rtp_cfg.payload_type);
    let worker = thread::Builder::new()
        .name("opus-tunnel-rtp".into())
        .spawn(move || {
            let mut w = Worker::new(cfg, consumer, s2.clone());
            w.payload_type = Some(rtp_cfg.payload_type);
            // Real-time, as the tunnel sink's sending thread is once it streams: this one
            // sends from the start (there is no handshake to wait for).
            if let Some(raise) = w.cfg.realtime.take() {
                raise();
            }
            let mut out = UdpOut {
                sock,
                dest,
                info: i2.clone(),
                name,
                last_log: None,
            };
            let sdp_file = rtp_cfg.sdp_file;
            send_loop(&mut w, &mut out, |knobs| {
                if knobs == info.knobs {
                    return;
                }
                info.knobs = knobs;
                info.session.1 += 1;
                if let Ok(mut s) = i2.sdp.lock() {
                    *s = sdp(&info, "\n");
                }
                if let Some(f) = &sdp_file {
                    if let Err(e) = write_file(f, &sdp(&info, "\r\n")) {
                        log::warn!("sdp_file: cannot rewrite {}: {e}", f.display());
                    }
                }
            });
            s2.stats.set_state(TunnelState::Closed);
            s2.finished.store(true, Ordering::SeqCst);
        })
        .map_err(|e| format!("cannot start the worker thread: {e}"))?;
    shared.set_worker(worker.thread().clone());
    log::info!("{log_name}: plain RTP/Opus (payload type {pt}) from {local} to {dest}, cleartext");
    Ok((feeder, shared, worker, send_info))
}

/// The plain RTP sender's loop: encode and send while the sink renders, follow knob changes
/// (`retuned` gets the new knobs), and after a pause carry on with a timestamp that counts the
/// pause (so that a receiver's clock sees the time that passed) and the marker bit.
fn send_loop(w: &mut Worker, out: &mut UdpOut, mut retuned: impl FnMut(OpusKnobs)) {
    let shared = w.shared.clone();
    let mut sending = false;
    let mut paused_at: Option<Instant> = None;
    // When the last audio was taken (a stopped stream's last frame waits for its padding's
    // time from there).
    let mut last_audio = Instant::now();
    shared.stats.set_state(TunnelState::Idle);
    loop {
        if shared.stopped() {
            break;
        }
        if w.retune() {
            retuned(w.knobs());
        }
        let running = shared.running.load(Ordering::SeqCst);
        if w.has_audio() {
            if !sending {
                sending = true;
                shared.stats.set_state(TunnelState::Streaming);
                if let Some(t) = paused_at.take() {
                    let ticks = t.elapsed().as_micros() as u64 * 48 / 1000;
                    w.rtp.skip(ticks as u32);
                }
            }
            last_audio = Instant::now();
            if let Err(e) = w.pump(out) {
                log::error!("{}: {e}; audio dropped for a second", w.cfg.name);
                w.reset_encoder();
                if !w.idle_wait(Duration::from_secs(1)) {
                    break;
                }
                continue;
            }
        } else if sending && !running && w.last_frame_wait(last_audio).is_none() {
            // The last stream stopped: send what is left of the frame (in time), then nothing.
            if let Err(e) = w.flush_partial(out) {
                log::warn!("{}: {e}", w.cfg.name);
                w.reset_encoder();
            }
            sending = false;
            paused_at = Some(Instant::now());
            shared.stats.set_state(TunnelState::Idle);
        }
        if !w.has_audio() {
            thread::park_timeout(if sending && !running {
                w.last_frame_wait(last_audio)
                    .unwrap_or(Duration::from_micros(200))
            } else if sending {
                Duration::from_millis(20)
            } else {
                Duration::from_secs(1)
            });
        }
    }
}

// ---- receiving -----------------------------------------------------------------------------

/// Follows one sender's sequence numbers and timestamps, so that a stray or malformed
/// datagram (same address and SSRC, nonsense numbers) cannot move the stream: a packet more
/// than [`SeqGuard::MAX_STEP`] packets away from the last, or whose timestamp moved more than
/// 120 ms a packet, is held back as a candidate; if the next packet follows the candidate,
/// the sender really did start afresh and the stream restarts there.
#[derive(Debug, Clone, Default)]
pub struct SeqGuard {
    last: Option<(u16, u32)>,
    candidate: Option<(u16, u32)>,
}

/// What [`SeqGuard::check`] says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// It belongs to the stream (in order, a little late, a duplicate: the jitter buffer
    /// sorts those out).
    Follows,
    /// The sender started a new sequence with it: the stream starts afresh.
    Restart,
    /// It does not fit: dropped.
    Stray,
}

impl SeqGuard {
    /// Packets forward or back that still count as the same sequence.
    pub const MAX_STEP: i32 = 100;
    /// The longest packet Opus makes, in 48 kHz ticks (120 ms).
    const MAX_TICKS: i64 = 5_760;

    /// Checks a packet's sequence number and timestamp.
    pub fn check(&mut self, seq: u16, ts: u32) -> SeqVerdict {
        let Some((ls, lt)) = self.last else {
            self.last = Some((seq, ts));
            return SeqVerdict::Follows;
        };
        if Self::fits((ls, lt), (seq, ts)) {
            self.candidate = None;
            if (seq.wrapping_sub(ls) as i16) > 0 {
                self.last = Some((seq, ts));
            }
            return SeqVerdict::Follows;
        }
        match self.candidate {
            Some((cs, ct))
                if seq.wrapping_sub(cs) == 1
                    && (0..=Self::MAX_TICKS).contains(&i64::from(ts.wrapping_sub(ct) as i32)) =>
            {
                self.candidate = None;
                self.last = Some((seq, ts));
                SeqVerdict::Restart
            }
            _ => {
                self.candidate = Some((seq, ts));
                SeqVerdict::Stray
            }
        }
    }

    /// `(seq, ts)` is within reach of `last`: a step of at most MAX_STEP packets, and a
    /// timestamp that moved the same way by at most 120 ms a packet.
    fn fits(last: (u16, u32), (seq, ts): (u16, u32)) -> bool {
        let ds = i32::from(seq.wrapping_sub(last.0) as i16);
        let dt = i64::from(ts.wrapping_sub(last.1) as i32);
        if ds.abs() > Self::MAX_STEP {
            return false;
        }
        let reach = i64::from(ds.abs().max(1)) * Self::MAX_TICKS;
        match ds.signum() {
            1 => (0..=reach).contains(&dt),
            -1 => (-reach..=0).contains(&dt),
            _ => dt == 0,
        }
    }
}

/// The receiver's plain RTP settings (`rtp_port=`, `rtp_payload=`, and its admission rules).
#[derive(Debug, Clone)]
pub struct RecvConfig {
    /// Admit every sender (`auth-anonymous=1`).
    pub anonymous: bool,
    /// Senders admitted by address (`auth-ip-acl`).
    pub acl: Option<IpAcl>,
    /// The payload type to play (`rtp_payload=`); others are dropped.
    pub payload_type: u8,
    /// Receive buffer target, µs (0: sized from what the engine measures).
    pub target_usec: u64,
    /// The least the target may be, µs.
    pub min_usec: u64,
    /// The most the target may be, µs.
    pub max_usec: u64,
    /// Plain RTP streams at once; a new sender beyond is dropped and counted.
    pub max_streams: usize,
    /// The host resamples (see [`crate::server::RecvConfig::external_resampler`]).
    pub external_resampler: bool,
}

/// What the listener does with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From an address the rules do not admit: dropped, counted.
    NotAdmitted,
    /// RTCP (a sender report): ignored.
    Rtcp,
    /// Not RTP of the payload type, or out of the stream's sequence: dropped, counted.
    Malformed(&'static str),
    /// A new sender while `max_streams` play: dropped, counted.
    TooMany,
    /// Its stream was killed or refused, and is held off: dropped.
    Held,
    /// For the stream of this sender and SSRC; `restart`: it starts a new sequence.
    Deliver {
        /// Sender address and SSRC.
        key: (SocketAddr, u32),
        /// The sender started afresh.
        restart: bool,
    },
}

/// A stream thread's state, as the listener sees it.
const RUNNING: u8 = 0;
const ENDED: u8 = 1;
const KILLED: u8 = 2;
const REFUSED: u8 = 3;

struct Link {
    tx: mpsc::SyncSender<Datagram>,
    done: Arc<AtomicU8>,
    since_done: Option<Instant>,
    thread: Option<JoinHandle<()>>,
}

struct Source {
    guard: SeqGuard,
    last: Instant,
    link: Option<Link>,
}

/// The listener's sorting of datagrams into streams (no threads: [`RtpReceiver`] runs it,
/// and the fuzz target drives it directly).
pub struct Demux {
    anonymous: bool,
    acl: Option<IpAcl>,
    payload_type: u8,
    max_streams: usize,
    sources: HashMap<(SocketAddr, u32), Source>,
    /// Datagrams from addresses not admitted.
    pub not_admitted: u64,
    /// Datagrams that were not RTP of the payload type, or out of sequence.
    pub malformed: u64,
    /// Datagrams of new senders beyond `max_streams`.
    pub too_many: u64,
}

impl Demux {
    /// A demultiplexer with `cfg`'s rules.
    pub fn new(cfg: &RecvConfig) -> Demux {
        Demux {
            anonymous: cfg.anonymous,
            acl: cfg.acl.clone(),
            payload_type: cfg.payload_type,
            max_streams: cfg.max_streams,
            sources: HashMap::new(),
            not_admitted: 0,
            malformed: 0,
            too_many: 0,
        }
    }

    /// Whether the rules admit `ip`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.anonymous || self.acl.as_ref().is_some_and(|a| a.allows(ip))
    }

    /// Sorts one datagram from `from`.
    pub fn offer(&mut self, from: SocketAddr, pkt: &[u8], now: Instant) -> Verdict {
        if !self.admits(from.ip()) {
            self.not_admitted += 1;
            return Verdict::NotAdmitted;
        }
        if rtp::is_rtcp(pkt) {
            return Verdict::Rtcp;
        }
        let (h, payload) = match rtp::parse_rtp(pkt) {
            Ok(x) => x,
            Err(_) => return self.bad("not an RTP packet"),
        };
        if h.payload_type != self.payload_type {
            return self.bad("another payload type");
        }
        if payload.is_empty() {
            return self.bad("an empty payload");
        }
        let key = (from, h.ssrc);
        let live = self.sources.len();
        let max = self.max_streams;
        let src = match self.sources.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if live >= max {
                    self.too_many += 1;
                    return Verdict::TooMany;
                }
                v.insert(Source {
                    guard: SeqGuard::default(),
                    last: now,
                    link: None,
                })
            }
        };
        if let Some(l) = &mut src.link {
            match l.done.load(Ordering::SeqCst) {
                RUNNING => {}
                state => {
                    let since = *l.since_done.get_or_insert(now);
                    let held = match state {
                        // A stream the user killed stays off while its sender goes on.
                        KILLED => now.duration_since(src.last) < END_AFTER,
                        REFUSED => now.duration_since(since) < RETRY_AFTER,
                        _ => false,
                    };
                    if held {
                        src.last = now;
                        return Verdict::Held;
                    }
                    // A fresh stream from this packet on.
                    src.link = None;
                    src.guard = SeqGuard::default();
                }
            }
        }
        let restart = match src.guard.check(h.seq, h.timestamp) {
            SeqVerdict::Follows => false,
            SeqVerdict::Restart => true,
            SeqVerdict::Stray => {
                self.malformed += 1;
                return Verdict::Malformed("out of the stream's sequence");
            }
        };
        src.last = now;
        Verdict::Deliver { key, restart }
    }

    fn bad(&mut self, why: &'static str) -> Verdict {
        self.malformed += 1;
        Verdict::Malformed(why)
    }

    /// Senders silent for [`END_AFTER`] whose streams have ended are forgotten; returns the
    /// threads to join.
    fn sweep(&mut self, now: Instant) -> Vec<JoinHandle<()>> {
        let mut threads = Vec::new();
        self.sources.retain(|_, s| {
            let running = s
                .link
                .as_ref()
                .is_some_and(|l| l.done.load(Ordering::SeqCst) == RUNNING);
            let keep = running || now.duration_since(s.last) < END_AFTER + RETRY_AFTER;
            if !keep {
                if let Some(t) = s.link.as_mut().and_then(|l| l.thread.take()) {
                    threads.push(t);
                }
            }
            keep
        });
        threads
    }
}

struct RecvShared {
    stop: AtomicBool,
    cfg: RecvConfig,
    host: Arc<dyn Host>,
    live: Mutex<Vec<Arc<ConnShared>>>,
    not_admitted: AtomicU64,
    malformed: AtomicU64,
}

/// The receiver's plain RTP side: a listener thread on the UDP port, and a thread per stream
/// (sender address and SSRC) that plays it through the decode path into a stream the host
/// creates ([`Host::open`], as for a tunnel). Dropping it ends every stream.
pub struct RtpReceiver {
    shared: Arc<RecvShared>,
    listener: Option<JoinHandle<()>>,
    local: SocketAddr,
}

impl RtpReceiver {
    /// Plays the plain RTP/Opus streams arriving on `sock` (bound) through `host`.
    pub fn start(
        sock: UdpSocket,
        cfg: RecvConfig,
        host: Arc<dyn Host>,
    ) -> std::io::Result<RtpReceiver> {
        let local = sock.local_addr()?;
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let shared = Arc::new(RecvShared {
            stop: AtomicBool::new(false),
            cfg,
            host,
            live: Mutex::new(Vec::new()),
            not_admitted: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let listener = thread::Builder::new()
            .name("opus-tunnel-rtp-in".into())
            .spawn(move || listen(sock, s2))?;
        Ok(RtpReceiver {
            shared,
            listener: Some(listener),
            local,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Datagrams dropped because their sender is not admitted.
    pub fn not_admitted(&self) -> u64 {
        self.shared.not_admitted.load(Ordering::Relaxed)
    }

    /// Datagrams dropped as malformed or out of sequence.
    pub fn malformed(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }
}

impl Drop for RtpReceiver {
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

/// Rate-limited log lines for dropped datagrams.
#[derive(Default)]
struct DropLog {
    last: HashMap<&'static str, Instant>,
}

impl DropLog {
    fn ready(&mut self, kind: &'static str) -> bool {
        match self.last.get(kind) {
            Some(t) if t.elapsed() < LOG_EVERY => false,
            _ => {
                self.last.insert(kind, Instant::now());
                true
            }
        }
    }
}

fn listen(sock: UdpSocket, shared: Arc<RecvShared>) {
    let mut demux = Demux::new(&shared.cfg);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut logs = DropLog::default();
    let mut last_sweep = Instant::now();
    let mut joins: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let pkt = &buf[..n];
                let now = Instant::now();
                match demux.offer(from, pkt, now) {
                    Verdict::Deliver { key, restart } => {
                        deliver(&mut demux, &shared, key, pkt, restart);
                    }
                    Verdict::NotAdmitted => {
                        let n = shared.not_admitted.fetch_add(1, Ordering::Relaxed) + 1;
                        if logs.ready("acl") {
                            log::warn!(
                                "dropped plain RTP from {from}: not admitted by auth-ip-acl \
                                 ({n} datagrams dropped so far)"
                            );
                        }
                    }
                    Verdict::Malformed(why) => {
                        let n = shared.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        if logs.ready("malformed") {
                            log::info!(
                                "dropped a datagram from {from} on the plain RTP port: {why} \
                                 ({n} dropped so far)"
                            );
                        }
                    }
                    Verdict::TooMany => {
                        if logs.ready("too many") {
                            log::warn!(
                                "dropped plain RTP from {from}: {} streams play already",
                                shared.cfg.max_streams
                            );
                        }
                    }
                    Verdict::Rtcp | Verdict::Held => {}
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // ICMP errors and the like: nothing to do but go on.
                if logs.ready("socket") {
                    log::debug!("plain RTP socket: {e}");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            joins.extend(demux.sweep(last_sweep));
            joins.retain(|t| !t.is_finished());
            if let Ok(mut live) = shared.live.lock() {
                live.retain(|c| !c.is_closed());
            }
        }
    }
    // Every stream thread ends: its channel closes with the demultiplexer.
    for (_, s) in demux.sources.drain() {
        if let Some(mut l) = s.link {
            drop(l.tx);
            if let Some(t) = l.thread.take() {
                joins.push(t);
            }
        }
    }
    for t in joins {
        let _ = t.join();
    }
}

/// Hands a datagram to its stream's thread, starting the thread for a new stream.
fn deliver(
    demux: &mut Demux,
    shared: &Arc<RecvShared>,
    key: (SocketAddr, u32),
    pkt: &[u8],
    restart: bool,
) {
    let Some(src) = demux.sources.get_mut(&key) else {
        return;
    };
    if src.link.is_none() {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let done = Arc::new(AtomicU8::new(RUNNING));
        let (s2, d2) = (shared.clone(), done.clone());
        let t = thread::Builder::new()
            .name("opus-tunnel-rtp".into())
            .spawn(move || serve_stream(key, rx, s2, d2));
        match t {
            Ok(t) => {
                src.link = Some(Link {
                    tx,
                    done,
                    since_done: None,
                    thread: Some(t),
                })
            }
            Err(e) => {
                log::error!("cannot start a thread for plain RTP from {}: {e}", key.0);
                return;
            }
        }
    }
    if let Some(l) = &src.link {
        let d = Datagram {
            packet: pkt.to_vec(),
            restart,
        };
        // A stream thread far behind loses datagrams (concealed), never the listener's time;
        // one that is gone (it cannot be, short of a bug) is started again at the next packet.
        if let Err(mpsc::TrySendError::Disconnected(_)) = l.tx.try_send(d) {
            src.link = None;
            src.guard = SeqGuard::default();
        }
    }
}

/// The hello a plain RTP stream would have sent: Opus, 48 kHz stereo (RFC 7587 decodes any
/// Opus packet, mono or stereo, to stereo), the receiver's default sink.
fn plain_hello(from: SocketAddr, ssrc: u32) -> Hello {
    Hello::opus_stereo_play(format!("RTP/Opus {ssrc:08x}"), from.to_string())
}

/// A plain RTP stream's decode path: the connection state and the receive pipeline with the
/// real-time side (for the host's stream).
fn plain_path(
    from: SocketAddr,
    ssrc: u32,
    cfg: &RecvConfig,
) -> Result<(Hello, Arc<ConnShared>, Receive, crate::decode::Playback), String> {
    let hello = plain_hello(from, ssrc);
    let conn = new_conn(&hello, cfg.target_usec, from.to_string());
    let (mut receive, playback) = decode_path(
        &conn,
        Compression::Opus,
        cfg.target_usec,
        cfg.min_usec,
        cfg.max_usec,
        cfg.external_resampler,
    )?;
    receive.payload_type = cfg.payload_type;
    Ok((hello, conn, receive, playback))
}

fn serve_stream(
    key: (SocketAddr, u32),
    rx: mpsc::Receiver<Datagram>,
    shared: Arc<RecvShared>,
    done: Arc<AtomicU8>,
) {
    let (from, ssrc) = key;
    let (hello, conn, mut receive, playback) = match plain_path(from, ssrc, &shared.cfg) {
        Ok(x) => x,
        Err(e) => {
            log::error!("plain RTP from {from}: {e}");
            done.store(REFUSED, Ordering::SeqCst);
            return;
        }
    };
    receive.notify = Some(shared.host.clone());
    if let Ok(mut live) = shared.live.lock() {
        live.push(conn.clone());
    }
    conn.stats.udp.set_transport(crate::udp::Transport::Rtp);
    let (mut req, answer) = request(from, &hello, &conn, playback, None);
    req.props
        .push(("opus.tunnel.ssrc".into(), format!("{ssrc:08x}")));
    shared.host.open(req);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match answer.recv_timeout(Duration::from_millis(100)) {
            Ok(a) => break a,
            Err(mpsc::RecvTimeoutError::Timeout)
                if !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline => {}
            Err(_) => break Err((503, "the receiver is busy or shutting down".into())),
        }
    };
    let sink = match answer {
        Ok(sink) => sink,
        Err((status, reason)) => {
            log::warn!(
                "plain RTP stream from {from} (SSRC {ssrc:08x}) not played: {status} {reason}; \
                 offered again in {} s",
                RETRY_AFTER.as_secs()
            );
            conn.closed.store(true, Ordering::SeqCst);
            shared.host.changed();
            done.store(REFUSED, Ordering::SeqCst);
            return;
        }
    };
    log::info!(
        "plain RTP/Opus stream from {from} (SSRC {ssrc:08x}, payload type {}) plays on {sink} \
         (cleartext, unauthenticated)",
        shared.cfg.payload_type
    );
    conn.stats.set_encryption(crate::secure::State::None);
    conn.stats.set_state(TunnelState::Streaming);
    let why = receive.run_datagrams(&rx, &shared.stop, END_AFTER);
    log::info!("plain RTP stream from {from} (SSRC {ssrc:08x}) ended: {why}");
    let state = if conn.killed() { KILLED } else { ENDED };
    conn.stats.set_state(TunnelState::Closed);
    conn.closed.store(true, Ordering::SeqCst);
    shared.host.changed();
    done.store(state, Ordering::SeqCst);
}

/// Binds the receiver's plain RTP port on `ip` (`None`: every address, IPv6 and IPv4).
pub fn bind(ip: Option<IpAddr>, port: u16) -> Result<UdpSocket, String> {
    let addrs = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => crate::server::any_address(port),
    };
    let mut last = "no address to listen on".to_string();
    for a in addrs {
        match UdpSocket::bind(a) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("rtp_port: cannot listen on UDP {a}: {e}"),
        }
    }
    Err(last)
}

/// For the fuzz target: feeds `data`, cut into datagrams (a byte naming one of four senders,
/// a byte of length, the datagram), through the demultiplexer and each admitted stream's
/// decode path, with a device pulling 10 ms at a time; checks that every sample played is
/// finite.
#[doc(hidden)]
pub fn fuzz_datagrams(data: &[u8]) {
    let cfg = RecvConfig {
        anonymous: false,
        acl: IpAcl::parse("acl", "10.0.0.0/31").ok(),
        payload_type: DEFAULT_PAYLOAD_TYPE,
        target_usec: 0,
        min_usec: 0,
        max_usec: 200_000,
        max_streams: 3,
        external_resampler: false,
    };
    let mut demux = Demux::new(&cfg);
    let mut paths: HashMap<(SocketAddr, u32), (Receive, crate::decode::Playback)> = HashMap::new();
    let start = Instant::now();
    let mut out = vec![0f32; 960];
    let mut rest = data;
    let mut i = 0u64;
    while rest.len() >= 2 {
        let sender = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let pkt = &rest[2..2 + len];
        rest = &rest[2 + len..];
        i += 1;
        let from = SocketAddr::from(([10, 0, 0, sender % 4], 5000));
        // The listener's clock: 20 ms a datagram.
        let now = start + Duration::from_millis(20 * i);
        if let Verdict::Deliver { key, restart } = demux.offer(from, pkt, now) {
            let (r, p) = match paths.entry(key) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match plain_path(key.0, key.1, &cfg) {
                        Ok((_, _, r, p)) => v.insert((r, p)),
                        Err(_) => continue,
                    }
                }
            };
            let d = Datagram {
                packet: pkt.to_vec(),
                restart,
            };
            if r.on_datagram(&d).is_err() {
                paths.remove(&key);
                continue;
            }
            p.pop(&mut out);
            assert!(out.iter().all(|s| s.is_finite()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::FrameSize;

    fn info() -> SdpInfo {
        SdpInfo {
            name: "speakers".into(),
            origin: "192.168.1.5".parse().unwrap(),
            dest: "192.168.1.20:5004".parse().unwrap(),
            payload_type: 96,
            channels: 2,
            rate: 48_000,
            knobs: OpusKnobs::default(),
            session: (3_900_000_000, 1),
        }
    }

    #[test]
    fn sdp_text() {
        let s = sdp(&info(), "\r\n");
        assert_eq!(
            s,
            "v=0\r\n\
             o=- 3900000000 1 IN IP4 192.168.1.5\r\n\
             s=speakers\r\n\
             c=IN IP4 192.168.1.20\r\n\
             t=0 0\r\n\
             m=audio 5004 RTP/AVP 96\r\n\
             a=rtpmap:96 opus/48000/2\r\n\
             a=fmtp:96 sprop-stereo=1; sprop-maxcapturerate=48000\r\n\
             a=ptime:20\r\n"
        );
        let mut i = info();
        i.channels = 1;
        i.rate = 16_000;
        i.payload_type = 111;
        i.name = "a\nb".into();
        i.dest = "[ff0e::1]:6000".parse().unwrap();
        i.origin = "::1".parse().unwrap();
        i.knobs.fec = true;
        i.knobs.dtx = true;
        i.knobs.vbr = false;
        i.knobs.frame_size = FrameSize::parse("10").unwrap();
        let s = sdp(&i, "\n");
        assert!(s.contains("o=- 3900000000 1 IN IP6 ::1\n"), "{s}");
        assert!(s.contains("s=a b\n"), "{s}");
        assert!(s.contains("c=IN IP6 ff0e::1\n"), "{s}");
        assert!(s.contains("m=audio 6000 RTP/AVP 111\n"), "{s}");
        assert!(s.contains("a=rtpmap:111 opus/48000/2\n"), "{s}");
        assert!(
            s.contains(
                "a=fmtp:111 sprop-stereo=0; sprop-maxcapturerate=16000; useinbandfec=1; usedtx=1; cbr=1\n"
            ),
            "{s}"
        );
        assert!(s.ends_with("a=ptime:10\n"), "{s}");
        let mut m = info();
        m.dest = "239.1.2.3:5004".parse().unwrap();
        assert!(sdp(&m, "\n").contains("c=IN IP4 239.1.2.3/1\n"));
    }

    #[test]
    fn seq_guard() {
        let mut g = SeqGuard::default();
        assert_eq!(g.check(65_530, 1000), SeqVerdict::Follows);
        // In order across the wrap, a little late, a duplicate.
        for k in 1..10u16 {
            let seq = 65_530u16.wrapping_add(k);
            let ts = 1000 + 960 * u32::from(k);
            assert_eq!(g.check(seq, ts), SeqVerdict::Follows, "{k}");
        }
        assert_eq!(g.check(65_535, 1000 + 960 * 5), SeqVerdict::Follows);
        assert_eq!(g.check(3, 1000 + 960 * 9), SeqVerdict::Follows);
        // A loss of 5 packets is fine.
        assert_eq!(g.check(9, 1000 + 960 * 15), SeqVerdict::Follows);
        // Strays: far sequence numbers, timestamps that do not fit, backwards time.
        assert_eq!(g.check(5000, 1000 + 960 * 16), SeqVerdict::Stray);
        assert_eq!(g.check(10, 99_999_999), SeqVerdict::Stray);
        assert_eq!(g.check(11, 1000), SeqVerdict::Stray);
        // ... and the stream goes on.
        assert_eq!(g.check(10, 1000 + 960 * 16), SeqVerdict::Follows);
        // A sender that starts afresh: the first packet is held, the second restarts.
        assert_eq!(g.check(40_000, 7), SeqVerdict::Stray);
        assert_eq!(g.check(40_001, 967), SeqVerdict::Restart);
        assert_eq!(g.check(40_002, 1927), SeqVerdict::Follows);
        // A pause (same sequence, the timestamp jumped): the same.
        assert_eq!(g.check(40_003, 500_000), SeqVerdict::Stray);
        assert_eq!(g.check(40_004, 500_960), SeqVerdict::Restart);
    }

    fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let h = rtp::RtpHeader {
            marker: false,
            payload_type: pt,
            seq,
            timestamp: ts,
            ssrc,
        };
        rtp::write_rtp(&h, payload, &mut out);
        out
    }

    #[test]
    fn demux_sorts_and_refuses() {
        let cfg = RecvConfig {
            anonymous: false,
            acl: Some(IpAcl::parse("acl", "127.0.0.1").unwrap()),
            payload_type: 96,
            target_usec: 0,
            min_usec: 0,
            max_usec: 1_000_000,
            max_streams: 2,
            external_resampler: false,
        };
        let mut d = Demux::new(&cfg);
        let now = Instant::now();
        let ok: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "10.1.1.1:4000".parse().unwrap();
        let p = rtp_packet(96, 1, 960, 7, &[0xfc, 1, 2]);
        assert_eq!(d.offer(other, &p, now), Verdict::NotAdmitted);
        assert_eq!(d.not_admitted, 1);
        assert_eq!(
            d.offer(ok, &p, now),
            Verdict::Deliver {
                key: (ok, 7),
                restart: false
            }
        );
        assert!(matches!(
            d.offer(ok, &rtp_packet(97, 2, 1920, 7, &[1]), now),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            d.offer(ok, &rtp_packet(96, 2, 1920, 7, &[]), now),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            d.offer(ok, &[0x80, 96, 1], now),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            d.offer(ok, &[0x40; 40], now),
            Verdict::Malformed(_)
        ));
        // RTCP (a sender report) is not counted.
        assert_eq!(
            d.offer(ok, &[0x80, 200, 0, 6, 0, 0, 0, 7], now),
            Verdict::Rtcp
        );
        assert_eq!(d.malformed, 4);
        // Another SSRC is another stream; a third is one too many.
        assert!(matches!(
            d.offer(ok, &rtp_packet(96, 9, 0, 8, &[1]), now),
            Verdict::Deliver { .. }
        ));
        assert_eq!(
            d.offer(ok, &rtp_packet(96, 9, 0, 9, &[1]), now),
            Verdict::TooMany
        );
        // A stray in the first stream is dropped, the stream goes on.
        assert!(matches!(
            d.offer(ok, &rtp_packet(96, 30_000, 5, 7, &[1]), now),
            Verdict::Malformed(_)
        ));
        assert!(matches!(
            d.offer(ok, &rtp_packet(96, 2, 1920, 7, &[1]), now),
            Verdict::Deliver { restart: false, .. }
        ));
    }

    #[test]
    fn fuzz_entry_survives_noise() {
        let mut data = Vec::new();
        for i in 0..50u16 {
            let p = rtp_packet(96, i, u32::from(i) * 960, 1, &[0xfc, 0xff, 0xfe]);
            data.push(0);
            data.push(p.len() as u8);
            data.extend_from_slice(&p);
            data.push(1);
            data.push(20);
            data.extend((0..20).map(|k| (k * 37 + i) as u8));
        }
        fuzz_datagrams(&data);
    }
}
