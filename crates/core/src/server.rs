//! The receiver's network side, independent of the sound server: a listener thread, a thread
//! per accepted connection (limits, authentication, the hello), and dispatch — a play tunnel
//! to the decode path ([`crate::decode`]), a record tunnel to the encode path
//! ([`crate::encode`]). The daemon's side is a [`Host`]: it creates the stream for a tunnel
//! and answers through a [`Replier`]; [`crate::session`] is the host logic both daemons
//! share. Anything a peer sends that we cannot use closes that connection with a log line.
use crate::acl::IpAcl;
use crate::auth::{Cookie, Verified};
use crate::codec::{self, StreamFormat};
use crate::connection::{new_conn, ConnShared};
use crate::decode::{decode_path, Input, Playback, UDP_QUEUE};
use crate::encode::{feeder, serve_record, Feeder, RemoteCapture, UdpOut, WorkerConfig};
use crate::handshake::{
    Direction, HandshakeError, Hello, Reply, STATUS_BAD_REQUEST, STATUS_FORBIDDEN,
    STATUS_TOO_MANY_CONNECTIONS, STATUS_UNSUPPORTED_FORMAT, STATUS_VERSION_NOT_SUPPORTED,
};
use crate::handshake::{STATUS_ENCRYPTION_NOT_ACCEPTED, STATUS_ENCRYPTION_REQUIRED};
use crate::link::{
    accept, authenticate, read_message, refuse, secure_responder, wants_encryption, wants_udp,
    ReadError, HANDSHAKE_TIMEOUT,
};
use crate::net::Conn;
use crate::params::{OpusKnobs, ServerAddr, KNOB_KEYS};
use crate::samples::SampleFormat;
use crate::secure::{self, Mode, Pattern};
use crate::stats::TunnelState;
use crate::surround;
use crate::udp::{self, DgramOpener, Transport};
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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
    /// Receive buffer target, µs; 0 = sized from what the engine measures
    /// (`target_latency_msec=auto`).
    pub target_usec: u64,
    /// The least the target may be, µs (`min_latency_msec`).
    pub min_usec: u64,
    /// The most the target may be, µs (`max_latency_msec`).
    pub max_usec: u64,
    /// Concurrent connections; one more is refused with 503.
    pub max_connections: usize,
    /// The host resamples: the engine passes the audio through at ratio 1 and the host's
    /// real-time side applies [`Playback::ratio`] (see
    /// [`crate::playout::Controller::set_external_resampler`]).
    pub external_resampler: bool,
    /// `encryption=`: auto encrypts whenever the tunnel asks; required answers a cleartext
    /// tunnel `426`; none answers a tunnel that asks for encryption `406`.
    pub encryption: Mode,
    /// `udp_port=`: where play tunnels with `transport=udp` send their audio (bound on the
    /// listener's address); `None`: no UDP, such tunnels are granted TCP.
    pub udp_port: Option<u16>,
    /// Called on each tunnel's thread once its stream is up: the host makes the thread
    /// real-time as its own audio threads are (that thread keeps the device's ring filled;
    /// a busy machine must not starve it). `None`: the thread stays as it was created.
    pub realtime: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Largest RFC 4571 frame a sender may send us (an Opus packet is at most a few KB; a 60 ms
/// What the sound server does for the receiver (implemented by each daemon's module).
pub trait Host: Send + Sync + 'static {
    /// A tunnel passed its handshake: create a playback stream fed by the request's
    /// [`Playback`] on `conn.device` (or the host's default), then answer through the
    /// [`Replier`] — from any thread, within 5 s.
    fn open(&self, req: StreamRequest);
    /// A record tunnel passed its handshake: create a recording stream, *corked*, on
    /// `conn.device` (or the host's default source), whose audio goes to the request's
    /// [`Feeder`]; keep it corked while [`ConnShared::recording`] is false (check on
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

/// A handshaken tunnel waiting for its stream: `io` is the real-time side to hand to the
/// stream's callback — a [`Playback`] for a play tunnel, a [`Feeder`] (float32le at the
/// connection's rate and channels) for a record tunnel.
pub struct Request<IO> {
    /// The connection's shared state (format, statistics, flags).
    pub conn: Arc<ConnShared>,
    /// The real-time side of the stream.
    pub io: IO,
    /// `<sender's device> on <sender's host>`.
    pub media_name: String,
    /// Properties for the stream (peer, remote name, codec).
    pub props: Vec<(String, String)>,
    reply: mpsc::Sender<Result<String, (u16, String)>>,
}

/// A play tunnel waiting for its playback stream.
pub type StreamRequest = Request<Playback>;
/// A record tunnel waiting for its recording stream.
pub type RecordRequest = Request<Feeder>;

impl<IO> Request<IO> {
    /// Splits the request; the [`Replier`] answers the peer.
    pub fn into_parts(self) -> (Arc<ConnShared>, IO, String, Vec<(String, String)>, Replier) {
        (
            self.conn,
            self.io,
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
    udp_thread: Option<JoinHandle<()>>,
}

struct RecvShared {
    stop: AtomicBool,
    connections: AtomicUsize,
    handshaking: AtomicUsize,
    cfg: RecvConfig,
    host: Arc<dyn Host>,
    live: Mutex<Vec<Arc<ConnShared>>>,
    /// The UDP socket, when `udp_port` could be bound.
    udp: Option<Arc<UdpIn>>,
}

/// The receiver's UDP socket and the play tunnels it feeds, by token.
struct UdpIn {
    /// Shared with the record tunnels that send from it.
    sock: Arc<UdpSocket>,
    port: u16,
    routes: Mutex<HashMap<u32, Route>>,
    /// Datagrams whose token names no tunnel (or too short to have one).
    unknown: AtomicU64,
}

/// Where the datagrams of one tunnel go.
struct Route {
    /// The handshaken peer's address: datagrams from any other are dropped.
    ip: IpAddr,
    opener: DgramOpener,
    to: RouteTo,
    conn: Arc<ConnShared>,
}

/// What a tunnel's datagrams are for.
enum RouteTo {
    /// A play tunnel's audio, for its connection thread; where its datagrams come from (where
    /// its repair requests go).
    Play(mpsc::SyncSender<Input>, Arc<Mutex<Option<SocketAddr>>>),
    /// A record tunnel's probes: where they come from is where its audio goes; and what its
    /// worker hears of the far end (its repair requests, [`udp::KIND_CONTROL`], and when it
    /// last spoke).
    Record(Arc<Mutex<Option<SocketAddr>>>, udp::Heard),
}

impl UdpIn {
    /// Binds `udp_port` on `ip`; `None` (logged) if it cannot.
    fn bind(ip: IpAddr, port: u16) -> Option<UdpIn> {
        let sock = match UdpSocket::bind((ip, port)) {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "cannot receive UDP on {}: {e}; tunnels asking for transport=udp are \
                     granted TCP",
                    SocketAddr::new(ip, port)
                );
                return None;
            }
        };
        // Idle, the thread wakes once a second to look at the stop flag.
        let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
        // Record tunnels' workers send from it: a full buffer loses a datagram, as the
        // network would, rather than hold a worker.
        let _ = sock.set_write_timeout(Some(Duration::from_millis(2)));
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(port);
        log::info!("receiving transport=udp audio on UDP port {port}");
        Some(UdpIn {
            sock: Arc::new(sock),
            port,
            routes: Mutex::new(HashMap::new()),
            unknown: AtomicU64::new(0),
        })
    }

    /// A fresh token, not 0 and not in use.
    fn new_token(&self) -> u32 {
        let routes = self
            .routes
            .lock()
            .map(|r| r.keys().copied().collect::<Vec<_>>());
        let used = routes.unwrap_or_default();
        loop {
            let t: u32 = rand::random();
            if t != 0 && !used.contains(&t) {
                return t;
            }
        }
    }

    /// Routes the datagrams named `token` from the handshaken `peer` of `stream`.
    fn add(
        &self,
        token: u32,
        peer: SocketAddr,
        stream: &Conn,
        conn: &Arc<ConnShared>,
        to: RouteTo,
    ) {
        let route = Route {
            ip: peer.ip().to_canonical(),
            opener: DgramOpener::new(stream.datagram_key()),
            to,
            conn: conn.clone(),
        };
        if let Ok(mut r) = self.routes.lock() {
            r.insert(token, route);
        }
    }

    fn remove(&self, token: u32) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(&token);
        }
    }
}

/// The UDP thread: each datagram goes to the tunnel its token names, if it comes from that
/// tunnel's peer, opens and is not a replay; anything else is dropped and counted.
fn udp_loop(udp: Arc<UdpIn>, stop: &AtomicBool) {
    let mut buf = vec![0u8; udp::MAX_DATAGRAM + 1];
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match udp.sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if crate::link::is_timeout(&e) => continue,
            Err(e) => {
                // ICMP errors and the like: nothing to do with a stream.
                log::debug!("UDP receive: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let dgram = &buf[..n];
        let Some(token) = udp::token_of(dgram) else {
            udp.unknown.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Ok(mut routes) = udp.routes.lock() else {
            return;
        };
        let Some(route) = routes.get_mut(&token) else {
            let k = udp.unknown.fetch_add(1, Ordering::Relaxed);
            if k.is_power_of_two() {
                log::debug!(
                    "dropped {} UDP datagrams naming no tunnel (last from {from})",
                    k + 1
                );
            }
            continue;
        };
        let why = if from.ip().to_canonical() != route.ip {
            udp::Drop::Foreign
        } else {
            match route.opener.open(dgram) {
                Ok((kind, body)) => {
                    route
                        .conn
                        .stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                    match &route.to {
                        // A connection thread that cannot keep up loses datagrams, as the
                        // network would: the queue is bounded.
                        RouteTo::Play(tx, back) => {
                            if let Ok(mut a) = back.lock() {
                                *a = Some(from);
                            }
                            if tx.try_send(Input::Udp(kind, body.to_vec())).is_ok() {
                                continue;
                            }
                            udp::Drop::Overflow
                        }
                        RouteTo::Record(_, heard) if kind == udp::KIND_CONTROL => {
                            heard.datagram(kind, body);
                            continue;
                        }
                        RouteTo::Record(reply_to, heard) if kind == udp::KIND_PROBE => {
                            heard.datagram(kind, body);
                            if let Ok(mut a) = reply_to.lock() {
                                if *a != Some(from) {
                                    log::info!(
                                        "record tunnel {}: its audio goes over UDP to {from}",
                                        route.conn.label
                                    );
                                    *a = Some(from);
                                }
                            }
                            continue;
                        }
                        RouteTo::Record(..) => udp::Drop::Malformed,
                    }
                }
                Err(e) => e,
            }
        };
        let k = route.conn.stats.udp.dropped.fetch_add(1, Ordering::Relaxed);
        if k.is_power_of_two() || k == 0 {
            log::info!(
                "tunnel {}: dropped a UDP datagram from {from} ({}); {} so far",
                route.conn.label,
                why.as_str(),
                k + 1
            );
        }
    }
}

impl Receiver {
    /// Serves tunnels arriving on `listener` (already bound) through `host`.
    pub fn start(
        listener: TcpListener,
        cfg: RecvConfig,
        host: Arc<dyn Host>,
    ) -> std::io::Result<Receiver> {
        let local = listener.local_addr()?;
        let listener = waiting_listener(listener)?;
        let udp = cfg
            .udp_port
            .and_then(|p| UdpIn::bind(local.ip(), p))
            .map(Arc::new);
        let shared = Arc::new(RecvShared {
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            cfg,
            host,
            live: Mutex::new(Vec::new()),
            udp,
        });
        let s2 = shared.clone();
        let listener = thread::Builder::new()
            .name("opus-tunnel-listen".into())
            .spawn(move || accept_loop(listener, s2))?;
        let mut udp_thread = None;
        if let Some(u) = shared.udp.clone() {
            let s3 = shared.clone();
            let t = thread::Builder::new()
                .name("opus-tunnel-udp".into())
                .spawn(move || udp_loop(u, &s3.stop))?;
            udp_thread = Some(t);
        }
        Ok(Receiver {
            shared,
            listener: Some(listener),
            local,
            udp_thread,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The UDP port `transport=udp` tunnels send to, if one is bound.
    pub fn udp_port(&self) -> Option<u16> {
        self.shared.udp.as_ref().map(|u| u.port)
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
        // The listener waits in accept (up to ACCEPT_WAIT): a connection of our own wakes
        // it at once; if that fails it notices the stop within ACCEPT_WAIT.
        let mut to = self.local;
        if to.ip().is_unspecified() {
            to.set_ip(match to {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200));
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        // The UDP thread waits in recv_from (up to a second): a datagram of our own wakes it.
        if let Some(u) = &self.shared.udp {
            if let Ok(mut at) = u.sock.local_addr() {
                if at.ip().is_unspecified() {
                    at.set_ip(match at {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                let _ = u.sock.send_to(&[], at);
            }
        }
        if let Some(t) = self.udp_thread.take() {
            let _ = t.join();
        }
    }
}

/// How long the listener waits in `accept` before it looks at the stop flag (an idle
/// receiver wakes once per ACCEPT_WAIT, not 20 times a second).
const ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// `listener` in blocking mode with a receive timeout, which Linux applies to `accept`: it
/// returns `WouldBlock` after [`ACCEPT_WAIT`] without a connection. (std has no
/// `set_read_timeout` on a listener; the socket option is the same, so the socket passes
/// through a `TcpStream` to set it.)
fn waiting_listener(listener: TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(false)?;
    let fd: std::os::fd::OwnedFd = listener.into();
    let s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(ACCEPT_WAIT))?;
    let fd: std::os::fd::OwnedFd = s.into();
    Ok(TcpListener::from(fd))
}

fn accept_loop(listener: TcpListener, shared: Arc<RecvShared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok(_) if shared.stop.load(Ordering::SeqCst) => break,
            Ok((stream, peer)) => {
                let s = shared.clone();
                let _ = stream.set_nonblocking(false);
                // An accepted socket inherits the listener's receive timeout: clear it.
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_nodelay(true);
                let stream = Conn::from(stream);
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
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
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
/// One accepted connection: limits, authentication, the hello, then the tunnel it asks for.
fn serve(mut stream: Conn, peer: SocketAddr, shared: Arc<RecvShared>) {
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
            .map_err(ReadError::Bad)
    });
    let (hello_text, hello, mut rest) = match parsed {
        Ok(h) => h,
        Err(ReadError::Bad(HandshakeError::Version { theirs })) => {
            let mut r = Reply::refuse(
                STATUS_VERSION_NOT_SUPPORTED,
                format!("protocol version {theirs} is not supported"),
            );
            r.fields
                .insert("Supported".into(), crate::handshake::SUPPORTED.to_string());
            log::warn!("refused a tunnel from {peer}: it speaks protocol version {theirs}");
            let _ = stream.write_all(r.to_text().as_bytes());
            return;
        }
        Err(ReadError::Bad(e)) => {
            refuse(
                &mut stream,
                peer,
                STATUS_BAD_REQUEST,
                &format!("bad handshake: {e}"),
            );
            return;
        }
        Err(ReadError::Closed) => {
            log::warn!(
                "closed a connection from {peer} without a handshake: closed before the handshake was complete"
            );
            return;
        }
        Err(ReadError::Io(e)) => {
            log::warn!("closed a connection from {peer} without a handshake: {e}");
            return;
        }
    };
    let wants = wants_encryption(&hello);
    match (cfg.encryption, wants) {
        (Mode::Required, false) => {
            let why = if hello.version < 2 {
                format!(
                    "this receiver requires encryption (encryption=required); the sender speaks \
                     protocol version {}, which cannot encrypt",
                    hello.version
                )
            } else {
                "this receiver requires encryption (encryption=required); the sender asked for \
                 none"
                    .to_string()
            };
            refuse(&mut stream, peer, STATUS_ENCRYPTION_REQUIRED, &why);
            return;
        }
        (Mode::None, true) => {
            refuse(
                &mut stream,
                peer,
                STATUS_ENCRYPTION_NOT_ACCEPTED,
                "this receiver does not encrypt (encryption=none); load the tunnel with \
                 encryption=none",
            );
            return;
        }
        _ => {}
    }
    let psk = cookie.as_ref().map(secure::psk_of);
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
    if let Err(e) = surround::check_hello(
        hello.codec,
        hello.channels,
        &hello.channel_map,
        &hello.fields,
    ) {
        refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e);
        return;
    }
    let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let slot = Slot(&shared.connections);
    drop(handshake_slot);
    if n > cfg.max_connections {
        drop(slot);
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
    // The cookie's pattern when the peer proved the cookie, else ephemeral keys only.
    let pattern = wants.then_some(if verified.is_some() {
        Pattern::NnPsk0
    } else {
        Pattern::Nn
    });
    let hs = Handshaken {
        slot: Some(slot),
        hello_text,
        verified,
        pattern,
        psk: psk.filter(|_| pattern == Some(Pattern::NnPsk0)),
        rest,
        grant: Vec::new(),
    };
    match hello.direction {
        Direction::Play => serve_play(stream, peer, &shared, &hello, conn, hs),
        Direction::Record => serve_capture(stream, peer, &shared, &hello, conn, hs),
    }
}

/// What the handshake settled, for the `200` and the encryption that follows it.
struct Handshaken<'a> {
    /// The tunnel's place among `max_connections`, held until it ends or is refused.
    slot: Option<Slot<'a>>,
    hello_text: String,
    verified: Option<Verified>,
    pattern: Option<Pattern>,
    psk: Option<[u8; 32]>,
    /// Bytes that followed the hello (or the auth message).
    rest: Vec<u8>,
    /// Headers the `200` adds (the transport granted).
    grant: Vec<(String, String)>,
}

/// The `200`'s headers for the transport granted.
fn transport_grant(udp: Option<(u16, u32)>) -> Vec<(String, String)> {
    match udp {
        Some((port, token)) => vec![
            (udp::HEADER_TRANSPORT.into(), "udp".into()),
            (udp::HEADER_PORT.into(), port.to_string()),
            (udp::HEADER_TOKEN.into(), token.to_string()),
        ],
        None => vec![(udp::HEADER_TRANSPORT.into(), "tcp".into())],
    }
}

impl Handshaken<'_> {
    /// Refuses the tunnel, giving up its place first: a peer that reads the refusal and
    /// connects again at once must not find its old connection still counted.
    fn refuse(&mut self, stream: &mut Conn, peer: SocketAddr, status: u16, reason: &str) {
        self.slot = None;
        refuse(stream, peer, status, reason);
    }
}

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

/// What a tunnel carries, for the log: `opus, 48000 Hz, 2 ch`.
fn format(hello: &Hello) -> String {
    format!(
        "{}, {} Hz, {} ch",
        hello.codec.as_str(),
        hello.rate,
        hello.channels
    )
}

/// The request for a tunnel's stream, and where its answer arrives. The stream's properties
/// say who is at the other end, and the codec.
#[allow(clippy::type_complexity)]
pub(crate) fn request<IO>(
    peer: SocketAddr,
    hello: &Hello,
    conn: &Arc<ConnShared>,
    io: IO,
    pattern: Option<Pattern>,
) -> (Request<IO>, mpsc::Receiver<Result<String, (u16, String)>>) {
    let (reply, rx) = mpsc::channel();
    let req = Request {
        conn: conn.clone(),
        io,
        media_name: format!("{} on {}", hello.name, hello.host),
        props: stream_props(peer, hello, pattern),
        reply,
    };
    (req, rx)
}

/// Properties of a tunnel's stream: who is at the other end, the codec, the encryption.
fn stream_props(
    peer: SocketAddr,
    hello: &Hello,
    pattern: Option<Pattern>,
) -> Vec<(String, String)> {
    vec![
        (
            "opus.tunnel.encryption".to_string(),
            pattern.map_or(secure::NONE, |p| p.name()).to_string(),
        ),
        ("opus.tunnel.peer".to_string(), peer.to_string()),
        ("opus.tunnel.remote_name".to_string(), hello.name.clone()),
        ("opus.tunnel.remote_host".to_string(), hello.host.clone()),
        ("compression".to_string(), hello.codec.as_str().to_string()),
    ]
}

/// Ends the handshake once the host has answered: the `200` with the device (and, when
/// chosen, the Noise handshake that encrypts the connection from then on), or the host's
/// refusal. `None` (connection marked closed, host told) if there is no tunnel.
fn conclude(
    stream: &mut Conn,
    peer: SocketAddr,
    rx: &mpsc::Receiver<Result<String, (u16, String)>>,
    shared: &RecvShared,
    conn: &ConnShared,
    hello: &Hello,
    hs: &mut Handshaken<'_>,
) -> Option<String> {
    match await_answer(rx, shared) {
        Ok(device) => {
            if let Some(reply_text) = accept(
                stream,
                &device,
                &hs.verified,
                hello.version,
                hs.pattern,
                &hs.grant,
            ) {
                let rest = std::mem::take(&mut hs.rest);
                let secured = match hs.pattern {
                    None => Ok(()),
                    Some(p) => secure_responder(
                        stream,
                        p,
                        hs.psk.as_ref(),
                        &hs.hello_text,
                        &reply_text,
                        &rest,
                        &shared.stop,
                    ),
                };
                match secured {
                    Ok(()) => {
                        if hs.pattern.is_none() {
                            hs.rest = rest;
                        }
                        let enc = hs.pattern.map_or(secure::State::None, secure::State::Noise);
                        conn.stats.set_encryption(enc);
                        return Some(device);
                    }
                    Err(e) => log::warn!("closed a tunnel from {peer}: {e}"),
                }
            }
        }
        Err((status, reason)) => hs.refuse(stream, peer, status, &reason),
    }
    conn.closed.store(true, Ordering::SeqCst);
    shared.host.changed();
    None
}

fn serve_play(
    mut stream: Conn,
    peer: SocketAddr,
    shared: &Arc<RecvShared>,
    hello: &Hello,
    conn: Arc<ConnShared>,
    mut hs: Handshaken<'_>,
) {
    let cfg = &shared.cfg;
    let label = conn.label.clone();
    let setup = decode_path(
        &conn,
        hello.codec,
        cfg.target_usec,
        cfg.min_usec,
        cfg.max_usec,
        cfg.external_resampler,
    );
    let (mut receive, playback) = match setup {
        Ok(x) => {
            let (mut r, p) = x;
            r.notify = Some(shared.host.clone());
            if let Some(usec) = crate::handshake::block_usec(&hello.fields) {
                r.set_sender_block_usec(usec);
            }
            (r, p)
        }
        Err(e) => {
            hs.refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e);
            conn.closed.store(true, Ordering::SeqCst);
            return;
        }
    };
    // transport=udp: a token names the tunnel in its datagrams.
    let udp = grant_udp(
        shared,
        hello,
        &mut hs,
        &format!("tunnel {label} from {peer}"),
    );
    let (req, rx) = request(peer, hello, &conn, playback, hs.pattern);
    shared.host.open(req);
    let Some(sink) = conclude(&mut stream, peer, &rx, shared, &conn, hello, &mut hs) else {
        return;
    };
    if let Some((u, token)) = &udp {
        let (tx, rx) = mpsc::sync_channel(UDP_QUEUE);
        let back = Arc::new(Mutex::new(None));
        u.add(
            *token,
            peer,
            &stream,
            &conn,
            RouteTo::Play(tx.clone(), back.clone()),
        );
        conn.stats.udp.set_transport(Transport::Udp);
        receive.udp = Some((tx, rx));
        if udp::offers_repair(&hello.fields) {
            receive.ask_repairs = true;
            // Repair requests go back as datagrams to where the tunnel's come from.
            receive.repairs_out = Some(UdpOut::reply(
                u.sock.clone(),
                back,
                *token,
                stream.datagram_key(),
            ));
        }
    }
    log::info!(
        "tunnel {label} from {peer} plays on {sink} ({}; encryption: {}; transport: {})",
        format(hello),
        conn.stats.encryption().as_str(),
        conn.stats.udp.transport().as_str()
    );
    conn.stats.set_state(TunnelState::Streaming);
    if let Some(raise) = &cfg.realtime {
        raise();
    }
    let why = receive.run(&mut stream, std::mem::take(&mut hs.rest), &shared.stop);
    if let Some((u, token)) = &udp {
        u.remove(*token);
    }
    log::info!("tunnel {label} from {peer} ended: {why}");
    conn.stats.set_state(TunnelState::Closed);
    conn.closed.store(true, Ordering::SeqCst);
    stream.shutdown();
    shared.host.changed();
}

/// transport=udp for a hello that asks for it: the receiver's UDP socket and a fresh token,
/// or `None` (logged, for `who`: TCP is granted). The `200`'s grant is set either way.
fn grant_udp(
    shared: &RecvShared,
    hello: &Hello,
    hs: &mut Handshaken<'_>,
    who: &str,
) -> Option<(Arc<UdpIn>, u32)> {
    if !wants_udp(hello) {
        return None;
    }
    let udp = shared.udp.as_ref().map(|u| (u.clone(), u.new_token()));
    if udp.is_none() {
        log::info!(
            "{who} asks for transport=udp; this receiver has no UDP socket (udp_port): granted TCP"
        );
    }
    hs.grant = transport_grant(udp.as_ref().map(|(u, t)| (u.port, *t)));
    if udp.is_some() && udp::offers_repair(&hello.fields) {
        hs.grant
            .push((udp::HEADER_REPAIR.into(), udp::REPAIR_NACK.into()));
    }
    udp
}

/// Tells the host when the far end of a record tunnel wants audio.
struct HostCapture {
    conn: Arc<ConnShared>,
    host: Arc<dyn Host>,
}

impl RemoteCapture for HostCapture {
    fn recording(&self, on: bool) {
        self.conn.recording.store(on, Ordering::SeqCst);
        self.host.changed();
    }
}

/// A record tunnel: we record a local source (only while the peer has readers), encode with
/// the knobs the peer asked for, and send.
fn serve_capture(
    mut stream: Conn,
    peer: SocketAddr,
    shared: &Arc<RecvShared>,
    hello: &Hello,
    conn: Arc<ConnShared>,
    mut hs: Handshaken<'_>,
) {
    let label = conn.label.clone();
    let fmt = StreamFormat {
        rate: hello.rate,
        channels: hello.channels,
    };
    let mut knobs = OpusKnobs {
        bitrate: surround::default_bitrate(hello.channels, OpusKnobs::default().bitrate),
        ..OpusKnobs::default()
    };
    for (k, v) in &hello.fields {
        if let Some(key) = KNOB_KEYS.iter().find(|key| key.eq_ignore_ascii_case(k)) {
            if let Err(e) = knobs.set(key, v) {
                hs.refuse(&mut stream, peer, STATUS_BAD_REQUEST, &e.to_string());
                conn.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
    if let Err(e) = codec::Encoder::with_map(hello.codec, fmt, &knobs, &hello.channel_map) {
        hs.refuse(&mut stream, peer, STATUS_UNSUPPORTED_FORMAT, &e.to_string());
        conn.closed.store(true, Ordering::SeqCst);
        return;
    }
    let wcfg = WorkerConfig {
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
        encryption: shared.cfg.encryption,
        transport: Transport::Tcp,
        // This thread is raised below, once the stream is up.
        realtime: None,
    };
    // transport=udp: a token names the tunnel in its probes and our datagrams.
    let udp = grant_udp(
        shared,
        hello,
        &mut hs,
        &format!("record tunnel {label} from {peer}"),
    );
    // Three seconds between the recording stream and the encoder (float32).
    let ring_bytes = 4 * usize::from(hello.channels) * hello.rate as usize * 3;
    let (feeder, tshared, consumer) = feeder(&wcfg, knobs, ring_bytes);
    let _ = conn.record.set(tshared.clone());
    let (req, rx) = request(peer, hello, &conn, feeder, hs.pattern);
    shared.host.open_record(req);
    let Some(source) = conclude(&mut stream, peer, &rx, shared, &conn, hello, &mut hs) else {
        return;
    };
    tshared.stats.set_encryption(conn.stats.encryption());
    let out = udp.as_ref().map(|(u, token)| {
        let reply_to = Arc::new(Mutex::new(None));
        let out = UdpOut::reply(
            u.sock.clone(),
            reply_to.clone(),
            *token,
            stream.datagram_key(),
        );
        u.add(
            *token,
            peer,
            &stream,
            &conn,
            RouteTo::Record(reply_to, out.heard()),
        );
        tshared.stats.udp.set_transport(Transport::Udp);
        out
    });
    log::info!(
        "record tunnel {label} from {peer} records {source} ({}; encryption: {}; transport: {}), \
         while it has readers",
        format(hello),
        conn.stats.encryption().as_str(),
        tshared.stats.udp.transport().as_str()
    );
    let remote: Arc<dyn RemoteCapture> = Arc::new(HostCapture {
        conn: conn.clone(),
        host: shared.host.clone(),
    });
    if let Some(raise) = &shared.cfg.realtime {
        raise();
    }
    let why = serve_record(wcfg, consumer, tshared, stream, remote, out);
    if let Some((u, token)) = &udp {
        u.remove(*token);
    }
    log::info!("record tunnel {label} from {peer} ended: {why}");
    conn.recording.store(false, Ordering::SeqCst);
    conn.closed.store(true, Ordering::SeqCst);
    shared.host.changed();
}

/// Every address on `port`: dual-stack `::` where the machine has IPv6, else all IPv4
/// addresses (try them in this order with [`bind`]).
pub fn any_address(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(std::net::IpAddr::from([0u16; 8]), port),
        SocketAddr::new(std::net::IpAddr::from([0u8; 4]), port),
    ]
}

/// Listens on the first of `addrs` that can be bound; the error names the last that failed.
pub fn bind(addrs: &[SocketAddr]) -> Result<TcpListener, String> {
    let mut last = "no address to listen on".to_string();
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a}: {e}"),
        }
    }
    Err(last)
}
