//! The desktop's side of a tunnel: one loop ([`keep_connected`]) that connects, runs the
//! handshake, serves the link until it is lost and reconnects with back-off. It serves both
//! the tunnel sink's sender ([`start_play`]: the encode path) and the tunnel source's record
//! client ([`start_record`]: the decode path, asking the far end to record only while
//! someone reads).
use crate::auth::Cookie;
use crate::codec::{Decoder, StreamFormat};
use crate::connection::{new_conn, ConnShared};
use crate::decode::{decode_path, Input, Playback, Receive, Upstream, UDP_QUEUE};
use crate::encode::{feeder, Ended, Feeder, Shared, UdpOut, Worker, WorkerConfig};
use crate::handshake::{Direction, Hello, Reply, VERSION};
use crate::latency::lookahead_usec;
use crate::latency::Steady;
use crate::link::{self, client_handshake};
use crate::net::Conn;
use crate::params::{Backoff, Compression, OpusKnobs, ServerAddr};
use crate::report::{Counters, Report, State};
use crate::secure::{self, Mode};
use crate::stats::{Stats, TunnelState};
use crate::udp::{self, Transport};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What one kind of tunnel does on each connection the loop makes.
pub(crate) trait Session {
    /// The hello for the next attempt.
    fn hello(&mut self) -> Hello;
    /// Serves a fresh connection until the link is lost or we stop.
    fn serve(&mut self, conn: Conn, reply: Reply, rest: Vec<u8>) -> Ended;
    /// Waits `d` before the next attempt; false: stop instead.
    fn wait(&mut self, d: Duration) -> bool;
}

/// Where and as whom the loop connects, and what it shares with the module.
pub(crate) struct Target<'a> {
    pub addr: &'a ServerAddr,
    pub cookie: Option<Cookie>,
    /// `encryption=`.
    pub encryption: Mode,
    /// Our device's name, for log lines.
    pub name: &'a str,
    pub stop: &'a AtomicBool,
    /// A handle on the live connection, to unblock the loop at unload.
    pub sock: &'a Mutex<Option<Conn>>,
    pub stats: &'a Stats,
    /// The network's one-way time, µs: half the TCP connect's round trip, held still across
    /// reconnects unless it moves by more than half a millisecond.
    pub net_usec: &'a AtomicU64,
}

/// Connects, serves, reconnects with back-off, until `target.stop`. The tunnel's state is
/// `connecting` before the first link and `reconnecting` between links; every link after
/// the first is counted in `reconnects`. The first failure in a row is logged as a warning,
/// the rest at debug level (a log stays readable while a receiver is down for hours).
pub(crate) fn keep_connected(target: Target<'_>, session: &mut impl Session) {
    let Target {
        addr,
        cookie,
        encryption,
        name,
        stop,
        sock,
        stats,
        net_usec,
    } = target;
    let mut net = Steady::new(500.0);
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    let mut ever = false;
    let forget = || {
        if let Ok(mut s) = sock.lock() {
            *s = None;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        stats.set_state(if ever {
            TunnelState::Reconnecting
        } else {
            TunnelState::Connecting
        });
        let hello = session.hello();
        match client_handshake(addr, hello, cookie.clone(), encryption, sock, stop, name) {
            Ok((conn, reply, rest, rtt)) => {
                let enc = conn
                    .pattern()
                    .map_or(secure::State::None, secure::State::Noise);
                stats.set_encryption(enc);
                log::info!("{name}: encryption: {}", enc.as_str());
                let one_way = net.update(rtt.as_micros() as f64 / 2.0);
                net_usec.store(one_way as u64, Ordering::Relaxed);
                log::debug!(
                    "{name}: connect round trip {:.2} ms; network one way {:.2} ms",
                    rtt.as_secs_f64() * 1000.0,
                    one_way / 1000.0
                );
                if ever {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ever = true;
                failures = 0;
                backoff.reset();
                let ended = session.serve(conn, reply, rest);
                forget();
                match ended {
                    Ended::Stop => break,
                    Ended::Lost(_) if stop.load(Ordering::SeqCst) => break,
                    Ended::Lost(why) => {
                        log::warn!("{name}: link to {addr} lost ({why}); reconnecting")
                    }
                }
            }
            Err(e) => {
                forget();
                failures += 1;
                if failures == 1 {
                    log::warn!("{name}: cannot reach {addr}: {e}; retrying with back-off");
                } else {
                    log::debug!("{name}: retry {failures} to {addr} failed: {e}");
                }
            }
        }
        if !session.wait(backoff.next_delay()) {
            break;
        }
    }
    stats.set_state(TunnelState::Closed);
}

// ---- the tunnel sink's sender -----------------------------------------------------------------

/// Starts a play tunnel's sender. `ring_bytes` is the capacity between the device and the
/// worker (half a second is plenty). Returns the real-time side, the shared state and the
/// worker's handle (stop it with [`Shared::stop_and_join`]).
pub fn start_play(
    cfg: WorkerConfig,
    knobs: OpusKnobs,
    ring_bytes: usize,
) -> std::io::Result<(Feeder, Arc<Shared>, JoinHandle<()>)> {
    let (feeder, shared, consumer) = feeder(&cfg, knobs, ring_bytes);
    let s2 = shared.clone();
    let worker = thread::Builder::new()
        .name("opus-tunnel-tx".into())
        .spawn(move || {
            let (addr, name, cookie) = (cfg.addr.clone(), cfg.name.clone(), cfg.cookie.clone());
            let encryption = cfg.encryption;
            let mut w = Worker::new(cfg, consumer, s2.clone());
            let target = Target {
                addr: &addr,
                cookie,
                encryption,
                name: &name,
                stop: &s2.stop,
                sock: &s2.sock,
                stats: &s2.stats,
                net_usec: &s2.net_usec,
            };
            keep_connected(target, &mut w);
            s2.finished.store(true, Ordering::SeqCst);
        })?;
    shared.set_worker(worker.thread().clone());
    Ok((feeder, shared, worker))
}

impl Session for Worker {
    fn hello(&mut self) -> Hello {
        Hello {
            version: VERSION,
            direction: Direction::Play,
            name: self.cfg.name.clone(),
            host: self.cfg.host.clone(),
            device: self.cfg.remote_sink.clone(),
            codec: self.cfg.compression,
            rate: self.cfg.fmt.rate,
            channels: self.cfg.fmt.channels,
            channel_map: self.cfg.channel_map.clone(),
            frame_usec: self.knobs().frame_size.usec(),
            target_latency_usec: None,
            fields: {
                let mut f = crate::surround::hello_fields(
                    self.cfg.compression,
                    self.cfg.fmt.channels,
                    &self.cfg.channel_map,
                );
                if self.cfg.transport == Transport::Udp {
                    f.insert(udp::HEADER_TRANSPORT.into(), "udp".into());
                    f.insert(udp::HEADER_REPAIR.into(), udp::REPAIR_NACK.into());
                }
                f.insert(
                    crate::handshake::HEADER_BLOCK_USEC.into(),
                    self.cfg.block_usec.to_string(),
                );
                f
            },
        }
    }

    fn serve(&mut self, conn: Conn, reply: Reply, _rest: Vec<u8>) -> Ended {
        if let Some(dev) = reply.fields.get("Device") {
            log::info!("{}: the receiver plays on its sink {dev}", self.cfg.name);
        }
        self.udp = None;
        if self.cfg.transport == Transport::Udp {
            self.udp = open_udp(&self.cfg.name, &conn, &reply);
        }
        let t = if self.udp.is_some() {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        self.shared.stats.udp.set_transport(t);
        log::info!(
            "{}: connected to {} (transport: {})",
            self.cfg.name,
            self.cfg.addr,
            t.as_str()
        );
        self.stream(conn)
    }

    fn wait(&mut self, d: Duration) -> bool {
        self.idle_wait(d)
    }
}

/// The UDP path a `200` granted, or `None` (logged: the tunnel falls back to TCP).
fn open_udp(name: &str, conn: &Conn, reply: &Reply) -> Option<UdpOut> {
    let Some((port, token)) = link::granted_udp(reply) else {
        log::warn!(
            "{name}: the receiver did not grant transport=udp (an older receiver, no UDP port, \
             or a record tunnel); falling back to TCP"
        );
        return None;
    };
    let Some(peer) = conn.peer_addr() else {
        log::warn!("{name}: transport=udp needs a TCP connection; falling back to TCP");
        return None;
    };
    let to = std::net::SocketAddr::new(peer.ip(), port);
    match UdpOut::open(to, token, conn.datagram_key()) {
        Ok(u) => {
            log::info!("{name}: audio goes over UDP to {to}");
            Some(u)
        }
        Err(e) => {
            log::warn!("{name}: cannot open a UDP socket to {to}: {e}; falling back to TCP");
            None
        }
    }
}

// ---- the tunnel source's record client --------------------------------------------------------

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
    /// Buffer target, µs; 0 = sized from what the engine measures.
    pub target_usec: u64,
    /// The least the target may be, µs.
    pub min_usec: u64,
    /// The most the target may be, µs.
    pub max_usec: u64,
    /// The cookie to prove when the far end asks.
    pub cookie: Option<Cookie>,
    /// `encryption=`.
    pub encryption: Mode,
    /// `transport=`: the far end's audio over TCP, or over UDP when it grants it (else TCP,
    /// logged).
    pub transport: Transport,
    /// Called on the tunnel's thread once its stream is up: the host makes the thread
    /// real-time as its own audio threads are (it keeps the source's ring filled, as a
    /// receiver's tunnel thread keeps its sink's). `None`: the thread stays as it was created.
    pub realtime: Option<Arc<dyn Fn() + Send + Sync>>,
}

struct ClientShared {
    stop: AtomicBool,
    up: Arc<Upstream>,
    conn: Arc<ConnShared>,
    sock: Mutex<Option<Conn>>,
    /// The network's one-way time, µs (half the TCP connect's round trip).
    net_usec: AtomicU64,
    /// The end-to-end latency the source reports, µs (refreshed by [`RecordClient::report`]).
    latency_usec: AtomicU64,
    /// The far end's frame and the codec's look-ahead, µs.
    codec_usec: AtomicU64,
}

/// A running record tunnel, desktop end: a thread that connects (and reconnects with
/// back-off), asks the far end to record only while [`RecordClient::set_running`] says
/// someone reads, and plays what arrives through the drift-correcting engine into the ring
/// behind the [`Playback`]. Dropping it stops the thread.
pub struct RecordClient {
    shared: Arc<ClientShared>,
    thread: Option<JoinHandle<()>>,
    compression: Compression,
}

/// Starts the desktop end of a record tunnel. The [`Playback`] is for the source's real-time
/// thread (it pops what the source posts).
pub fn start_record(
    cfg: RecordClientConfig,
    knobs: OpusKnobs,
) -> Result<(Playback, RecordClient), String> {
    let hello = Hello {
        version: VERSION,
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
        fields: {
            let mut f =
                crate::surround::hello_fields(cfg.compression, cfg.fmt.channels, &cfg.channel_map);
            if cfg.transport == Transport::Udp {
                f.insert(udp::HEADER_TRANSPORT.into(), "udp".into());
                f.insert(udp::HEADER_REPAIR.into(), udp::REPAIR_NACK.into());
            }
            f
        },
    };
    let compression = cfg.compression;
    let conn = new_conn(&hello, cfg.target_usec, cfg.addr.to_string());
    let (mut receive, playback) = decode_path(
        &conn,
        cfg.compression,
        cfg.target_usec,
        cfg.min_usec,
        cfg.max_usec,
        false,
    )?;
    let up = Arc::new(Upstream {
        running: AtomicBool::new(false),
        knobs: Mutex::new(knobs),
        knobs_gen: AtomicU64::new(0),
    });
    receive.upstream = Some(up.clone());
    let shared = Arc::new(ClientShared {
        stop: AtomicBool::new(false),
        up,
        conn,
        sock: Mutex::new(None),
        net_usec: AtomicU64::new(0),
        latency_usec: AtomicU64::new(0),
        codec_usec: AtomicU64::new(codec_usec(cfg.compression, &knobs)),
    });
    let s2 = shared.clone();
    let thread = thread::Builder::new()
        .name("opus-tunnel-rec".into())
        .spawn(move || {
            let mut session = Recorder {
                cfg: &cfg,
                hello,
                receive,
                shared: &s2,
                gen: 0,
            };
            let target = Target {
                addr: &cfg.addr,
                cookie: cfg.cookie.clone(),
                encryption: cfg.encryption,
                name: &cfg.name,
                stop: &s2.stop,
                sock: &s2.sock,
                stats: &s2.conn.stats,
                net_usec: &s2.net_usec,
            };
            keep_connected(target, &mut session);
        })
        .map_err(|e| format!("cannot start the tunnel's thread: {e}"))?;
    Ok((
        playback,
        RecordClient {
            shared,
            thread: Some(thread),
            compression,
        },
    ))
}

/// The record client's session: the hello carries the knobs; each link starts a fresh decode
/// session.
struct Recorder<'a> {
    cfg: &'a RecordClientConfig,
    hello: Hello,
    receive: Receive,
    shared: &'a ClientShared,
    /// The knob generation the last hello carried.
    gen: u64,
}

impl Session for Recorder<'_> {
    fn hello(&mut self) -> Hello {
        let mut h = self.hello.clone();
        let knobs = self.shared.up.knobs.lock().map(|k| *k).unwrap_or_default();
        for (k, v) in knobs.properties() {
            h.fields.insert(k.to_string(), v);
        }
        self.gen = self.shared.up.knobs_gen.load(Ordering::SeqCst);
        h
    }

    fn serve(&mut self, mut conn: Conn, reply: Reply, rest: Vec<u8>) -> Ended {
        let name = &self.cfg.name;
        let dev = reply.fields.get("Device").cloned().unwrap_or_default();
        log::info!(
            "{name}: connected to {}, recording its source {dev}",
            self.cfg.addr
        );
        let udp = match self.cfg.transport {
            Transport::Udp => open_record_udp(name, &conn, &reply, &self.shared.conn),
            _ => None,
        };
        let reader = udp.map(|(reader, prober, queue)| {
            self.receive.udp = Some(queue);
            self.receive.probe = Some(prober);
            self.receive.ask_repairs = udp::offers_repair(&reply.fields);
            reader
        });
        let t = if reader.is_some() {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        self.shared.conn.stats.udp.set_transport(t);
        match Decoder::with_map(self.cfg.compression, self.cfg.fmt, &self.cfg.channel_map) {
            Ok(d) => self.receive.new_session(d),
            Err(e) => {
                log::error!("{name}: {e}");
                return Ended::Stop;
            }
        }
        self.receive.up_gen = self.gen;
        self.shared.conn.stats.set_state(TunnelState::Streaming);
        if let Some(raise) = &self.cfg.realtime {
            raise();
        }
        let why = self.receive.run(&mut conn, rest, &self.shared.stop);
        conn.shutdown();
        self.receive.probe = None;
        drop(reader);
        Ended::Lost(why)
    }

    fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.shared.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
        !self.shared.stop.load(Ordering::SeqCst)
    }
}

/// A record tunnel's UDP path at the desktop end, from a `200` that granted it (else `None`,
/// logged: the tunnel falls back to TCP): the reader of our socket (connected to the far
/// end's UDP port), the prober that opens the way for the far end's audio, and the queue to
/// the connection thread.
fn open_record_udp(
    name: &str,
    conn: &Conn,
    reply: &Reply,
    cs: &Arc<ConnShared>,
) -> Option<(UdpReader, udp::Prober, UdpQueue)> {
    let Some((port, token)) = link::granted_udp(reply) else {
        log::warn!(
            "{name}: the far end did not grant transport=udp (an older receiver, or no UDP \
             port); falling back to TCP"
        );
        return None;
    };
    let Some(peer) = conn.peer_addr() else {
        log::warn!("{name}: transport=udp needs a TCP connection; falling back to TCP");
        return None;
    };
    let to = std::net::SocketAddr::new(peer.ip(), port);
    let opened = udp::connected_socket(to).and_then(|s| {
        // The reader looks at its stop flag this often.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let probes = s.try_clone()?;
        Ok((s, probes))
    });
    let (sock, probes) = match opened {
        Ok(x) => x,
        Err(e) => {
            log::warn!("{name}: cannot open a UDP socket to {to}: {e}; falling back to TCP");
            return None;
        }
    };
    let (tx, rx) = mpsc::sync_channel(UDP_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, tx2, cs2) = (stop.clone(), tx.clone(), cs.clone());
    let opener = udp::DgramOpener::new(conn.datagram_key());
    let thread = thread::Builder::new()
        .name("opus-tunnel-udp".into())
        .spawn(move || udp_read_loop(sock, token, opener, tx2, &cs2, &s2));
    match thread {
        Ok(t) => {
            log::info!("{name}: the far end's audio comes over UDP from {to}");
            Some((
                UdpReader {
                    stop,
                    thread: Some(t),
                },
                udp::Prober::new(probes, token, conn.datagram_key()),
                (tx, rx),
            ))
        }
        Err(e) => {
            log::warn!("{name}: cannot start a thread for UDP: {e}; falling back to TCP");
            None
        }
    }
}

/// The queue of what reaches a UDP tunnel's connection thread.
type UdpQueue = (mpsc::SyncSender<Input>, mpsc::Receiver<Input>);

/// The thread that reads a record tunnel's datagrams; dropping it stops it (within 200 ms).
struct UdpReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for UdpReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes the far end's datagrams (the socket is connected: the kernel passes no other
/// sender's) and hands those that name the connection, open and are new to the connection
/// thread; everything else is dropped and counted.
fn udp_read_loop(
    sock: std::net::UdpSocket,
    token: u32,
    mut opener: udp::DgramOpener,
    tx: mpsc::SyncSender<Input>,
    cs: &ConnShared,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; udp::MAX_DATAGRAM + 1];
    while !stop.load(Ordering::SeqCst) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if link::is_timeout(&e) => continue,
            Err(e) => {
                // An ICMP error for a probe, and the like: nothing to do with the stream.
                log::debug!("UDP receive: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let dgram = &buf[..n];
        let why = if udp::token_of(dgram) != Some(token) {
            udp::Drop::UnknownToken
        } else {
            match opener.open(dgram) {
                Ok((kind, body)) => {
                    cs.stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                    match tx.try_send(Input::Udp(kind, body.to_vec())) {
                        Ok(()) => continue,
                        Err(mpsc::TrySendError::Full(_)) => udp::Drop::Overflow,
                        Err(mpsc::TrySendError::Disconnected(_)) => return,
                    }
                }
                Err(e) => e,
            }
        };
        let k = cs.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
        if k == 0 || k.is_power_of_two() {
            log::info!(
                "{}: dropped a UDP datagram ({}); {} so far",
                cs.label,
                why.as_str(),
                k + 1
            );
        }
    }
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
        self.shared
            .codec_usec
            .store(codec_usec(self.compression, &knobs), Ordering::Relaxed);
        self.shared.up.knobs_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The statistics as `opus.tunnel.*` properties (call about once a second).
    pub fn stat_properties(&self) -> Vec<(String, String)> {
        self.report().properties()
    }

    /// The statistics (call about once a second: the bitrate is measured between calls).
    pub fn report(&self) -> Report {
        let mut r = self.shared.conn.report();
        // Nothing reads the tunnel source: the far end does not record, and the engine waits
        // for audio that will not come until a reader appears.
        if !self.shared.up.running.load(Ordering::SeqCst) && r.state.is_active() {
            r.state = State::Idle;
        }
        r.reconnects = Some(self.shared.conn.stats.snapshot().reconnects);
        if let Counters::Received(c) = &r.counters {
            let sh = &self.shared;
            // The receive buffer's mean fill: its latency counts from a packet's end.
            let packet = sh.conn.playout_stats().map_or(0, |p| p.packet_usec);
            let e2e = sh.codec_usec.load(Ordering::Relaxed)
                + sh.net_usec.load(Ordering::Relaxed)
                + c.latency_usec.saturating_sub(packet / 2);
            let held = match sh.latency_usec.load(Ordering::Relaxed) {
                0 => e2e,
                v => Steady::holding(v as f64, 1_000.0).update(e2e as f64) as u64,
            };
            sh.latency_usec.store(held, Ordering::Relaxed);
        }
        r
    }
}

/// What the far end's encoder adds to a record tunnel's latency, µs: half a frame on average
/// (a frame leaves when its last sample is captured; the receive buffer's mean fill counts
/// the other half) and the codec's look-ahead.
fn codec_usec(compression: Compression, knobs: &OpusKnobs) -> u64 {
    u64::from(knobs.frame_size.usec()) / 2 + lookahead_usec(compression, knobs)
}

/// Lets a real-time thread say whether the tunnel source has readers.
pub struct RunningFlag(Arc<ClientShared>);

impl RunningFlag {
    /// See [`RecordClient::set_running`].
    pub fn set(&self, on: bool) {
        self.0.up.running.store(on, Ordering::SeqCst);
    }

    /// The source's end-to-end latency, µs (lock-free, for the source's real-time thread):
    /// the far end's half frame and the codec's look-ahead, the network one way and the
    /// receive buffer, each held still while it moves by less than a millisecond; refreshed
    /// once a second by [`RecordClient::report`] (0 before the first refresh).
    pub fn latency_usec(&self) -> u64 {
        self.0.latency_usec.load(Ordering::Relaxed)
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
