//! The link between the two ends of a tunnel, whichever way the audio goes: both sides of the
//! handshake and its cookie authentication, the one reader of handshake messages, the
//! timeouts, and sending control (RTCP) packets on an established connection.
//!
//! The client side ([`client_handshake`]) is used by the tunnel sink's sender and by the tunnel
//! source's record client; the server side ([`authenticate`], [`refuse`], [`accept`]) by the
//! receiver. Nothing a peer sends can panic or grow memory without bound: a handshake
//! message is capped by [`HeadReader`], and every wait has a deadline.
use crate::auth::{ClientAuth, ClientStep, Cookie, ServerAuth, Verified};
use crate::framing::{self, Deframer};
use crate::handshake::{
    HandshakeError, HeadReader, Hello, Reply, MIN_VERSION, STATUS_BAD_REQUEST, STATUS_UNAUTHORIZED,
    STATUS_VERSION_NOT_SUPPORTED, VERSION,
};
use crate::net::Conn;
use crate::params::ServerAddr;
use crate::rtp::{self, Control};
use crate::secure::{self, Handshake, Mode, Pattern};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the handshake may take, from either end.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A send that cannot make progress for this long means the link is dead.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(4);
/// While idle, a keepalive this often (a 16-byte RTCP packet on the wire).
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// Both ends speak at least once a second (audio, reports or keepalives); this long without a
/// word from the other end means it is gone (a dead host or a cut link that TCP has not
/// noticed).
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// Largest RFC 4571 frame a peer may send us (an Opus packet is at most a few KB; a 60 ms L16
/// frame of 8 channels at 48 kHz is 46 KB).
pub const MAX_FRAME: usize = 65535;
/// How often a blocked handshake read looks at its deadline and stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Why a handshake message could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before the message was complete.
    Closed,
    /// The connection failed or timed out, or we are stopping (the text says which).
    Io(String),
    /// What arrived is not a handshake message.
    Bad(HandshakeError),
}

/// Reads one handshake message (after `pending`, bytes already received), returning its text
/// and what followed it. Gives up at `deadline`, or within 200 ms once `stop` is set. Sets
/// a short read timeout on `conn`.
pub(crate) fn read_message(
    conn: &mut Conn,
    pending: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(String, Vec<u8>), ReadError> {
    let mut reader = HeadReader::new();
    if !pending.is_empty() {
        if let Some(m) = reader.push(pending).map_err(ReadError::Bad)? {
            return Ok(m);
        }
    }
    let mut buf = [0u8; 2048];
    let _ = conn.set_timeouts(Some(POLL), Some(WRITE_TIMEOUT));
    loop {
        if Instant::now() >= deadline {
            return Err(ReadError::Io(format!(
                "the handshake did not complete within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )));
        }
        if stop.load(Ordering::SeqCst) {
            return Err(ReadError::Io("stopping".into()));
        }
        let n = match conn.read(&mut buf) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(ReadError::Io(e.to_string())),
        };
        if let Some(m) = reader.push(&buf[..n]).map_err(ReadError::Bad)? {
            return Ok(m);
        }
    }
}

/// A read or write that only timed out (or was interrupted): try again.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Frames control messages as one RTCP packet (RFC 4571) and sends it.
pub(crate) fn send_controls(
    conn: &mut impl Write,
    ssrc: u32,
    msgs: &[Control],
) -> std::io::Result<usize> {
    let mut pkt = Vec::new();
    rtp::write_rtcp(ssrc, msgs, &mut pkt);
    let mut w = Vec::new();
    framing::frame(&pkt, &mut w)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    conn.write_all(&w)?;
    Ok(w.len())
}

// ---- the server's side ----------------------------------------------------------------------

/// Refuses a tunnel: the peer gets `status` and `reason`, the log says why.
pub(crate) fn refuse(conn: &mut Conn, peer: SocketAddr, status: u16, reason: &str) {
    log::warn!("refused a tunnel from {peer}: {reason}");
    let _ = conn.write_all(Reply::refuse(status, reason).to_text().as_bytes());
}

/// Sends the `200` (signed when the peer proved the cookie) at the hello's `version`, naming
/// the chosen encryption (version 2 on); returns its text (the Noise prologue covers it), or
/// `None` if the peer is gone.
pub(crate) fn accept(
    conn: &mut Conn,
    device: &str,
    verified: &Option<Verified>,
    version: u32,
    pattern: Option<Pattern>,
    extra: &[(String, String)],
) -> Option<String> {
    let mut ok = Reply::ok();
    ok.version = version;
    ok.fields.insert("Device".into(), device.to_string());
    for (k, v) in extra {
        ok.fields.insert(k.clone(), v.clone());
    }
    if version >= 2 {
        ok.fields.insert(
            secure::HEADER.into(),
            pattern.map_or(secure::NONE, |p| p.name()).into(),
        );
    }
    if let Some(v) = verified {
        v.sign(&mut ok);
    }
    let text = ok.to_text();
    conn.write_all(text.as_bytes()).ok().map(|_| text)
}

/// Whether a hello asks for the UDP transport (`Transport: udp`).
pub(crate) fn wants_udp(hello: &Hello) -> bool {
    hello.fields.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case(crate::udp::HEADER_TRANSPORT) && v.trim().eq_ignore_ascii_case("udp")
    })
}

/// What a `200` granted: `Some((port, token))` for UDP, `None` for TCP (also from a receiver
/// that does not know the header, or a grant that does not parse).
pub(crate) fn granted_udp(reply: &Reply) -> Option<(u16, u32)> {
    let get = |name: &str| {
        reply
            .fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    if !get(crate::udp::HEADER_TRANSPORT)?.eq_ignore_ascii_case("udp") {
        return None;
    }
    let port = get(crate::udp::HEADER_PORT)?.parse::<u16>().ok()?;
    let token = get(crate::udp::HEADER_TOKEN)?.parse::<u32>().ok()?;
    (port != 0).then_some((port, token))
}

/// Whether a hello asks for encryption (`Encryption: noise`; version 1 hellos never do).
pub(crate) fn wants_encryption(hello: &Hello) -> bool {
    hello.version >= 2
        && hello.fields.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case(secure::HEADER)
                && v.split(',')
                    .any(|w| w.trim().eq_ignore_ascii_case(secure::REQUEST_NOISE))
        })
}

/// Reads one RFC 4571 frame of the Noise handshake (after `pending`), with the handshake's
/// deadline; returns it and the bytes that followed.
fn read_frame(
    conn: &mut Conn,
    pending: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut d = Deframer::new(1024);
    d.push(pending);
    let mut buf = [0u8; 1024];
    let _ = conn.set_timeouts(Some(POLL), Some(WRITE_TIMEOUT));
    loop {
        match d.next_frame() {
            // Whatever followed the message is the first records: handed back as bytes.
            Ok(Some(f)) => return Ok((f, d.take_rest())),
            Ok(None) => {}
            Err(e) => return Err(format!("bad encryption handshake framing: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the encryption handshake did not complete within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ));
        }
        if stop.load(Ordering::SeqCst) {
            return Err("stopping".into());
        }
        match conn.read(&mut buf) {
            Ok(0) => {
                return Err(
                    "the peer closed the connection during the encryption handshake \
                            (a different cookie?)"
                        .into(),
                )
            }
            Ok(n) => d.push(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn send_frame(conn: &mut Conn, msg: &[u8]) -> Result<(), String> {
    let mut w = Vec::new();
    framing::frame(msg, &mut w).map_err(|e| e.to_string())?;
    conn.write_all(&w).map_err(|e| e.to_string())
}

/// The receiver's half of the Noise handshake, right after its `200`: reads the tunnel's
/// message, answers, and turns `conn` into an encrypted connection.
#[allow(clippy::too_many_arguments)]
pub(crate) fn secure_responder(
    conn: &mut Conn,
    pattern: Pattern,
    psk: Option<&[u8; 32]>,
    hello_text: &str,
    reply_text: &str,
    pending: &[u8],
    stop: &AtomicBool,
) -> Result<(), String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let prologue = secure::prologue(hello_text, reply_text);
    let mut hs = Handshake::new(pattern, false, psk, &prologue).map_err(|e| e.to_string())?;
    let (m1, rest) = read_frame(conn, pending, deadline, stop)?;
    hs.read(&m1).map_err(|e| e.to_string())?;
    let m2 = hs.write().map_err(|e| e.to_string())?;
    send_frame(conn, &m2)?;
    let (sealer, opener) = hs.into_transport().map_err(|e| e.to_string())?;
    conn.encrypt(sealer, opener, &rest);
    Ok(())
}

/// The tunnel's half of the Noise handshake, right after the `200`.
#[allow(clippy::too_many_arguments)]
fn secure_initiator(
    conn: &mut Conn,
    pattern: Pattern,
    psk: Option<&[u8; 32]>,
    hello_text: &str,
    reply_text: &str,
    pending: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(), String> {
    let prologue = secure::prologue(hello_text, reply_text);
    let mut hs = Handshake::new(pattern, true, psk, &prologue).map_err(|e| e.to_string())?;
    let m1 = hs.write().map_err(|e| e.to_string())?;
    send_frame(conn, &m1)?;
    let (m2, rest) = read_frame(conn, pending, deadline, stop)?;
    hs.read(&m2).map_err(|e| e.to_string())?;
    let (sealer, opener) = hs.into_transport().map_err(|e| e.to_string())?;
    conn.encrypt(sealer, opener, &rest);
    Ok(())
}

/// The cookie challenge: sends the `401` with our nonce, checks the peer's proof. On failure
/// the peer has been sent the refusal and the reason is returned for the log.
pub(crate) fn authenticate(
    conn: &mut Conn,
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
            let _ = conn.write_all(e.reply().to_text().as_bytes());
            return Err(e.to_string());
        }
    };
    conn.write_all(challenge.to_text().as_bytes())
        .map_err(|e| e.to_string())?;
    let (text, more) = match read_message(conn, rest, deadline, stop) {
        Ok(m) => m,
        Err(ReadError::Closed) => {
            return Err("no answer to the cookie challenge: the peer closed the connection".into())
        }
        Err(ReadError::Io(e)) => return Err(format!("no answer to the cookie challenge: {e}")),
        Err(ReadError::Bad(e)) => {
            let _ = conn.write_all(
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
            let _ = conn.write_all(e.reply().to_text().as_bytes());
            Err(e.to_string())
        }
    }
}

// ---- the client's side ----------------------------------------------------------------------

/// Why one attempt at the handshake failed.
enum Failure {
    /// A version 1 receiver refused our version 2 hello (its status line).
    OldPeer(String),
    /// Anything else (the text says what).
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Other(s)
    }
}

/// Connects to `addr` and runs the client side of the handshake (with the cookie exchange if
/// the receiver asks, and the Noise handshake when encryption was chosen). `slot` receives a
/// handle on the connection at once, so that an unload can shut it down under a blocked
/// handshake; `stop` ends a wait within 200 ms. Returns the connection (encrypted if chosen;
/// write timeout set, no read timeout), the receiver's `200` reply, any (cleartext) bytes
/// that followed it, and the network's round trip as the TCP connect measured it (the
/// handshake's own exchange would add the time the receiver takes to open its stream).
///
/// The hello is sent at version 2 with `Encryption: noise` (`none` with
/// [`Mode::None`]). A version 1 receiver answers `505`: with [`Mode::Auto`] (and
/// [`Mode::None`]) the tunnel connects again with a version 1 hello, in cleartext (auto logs
/// a warning); with [`Mode::Required`] it gives up.
pub(crate) fn client_handshake(
    addr: &ServerAddr,
    mut hello: Hello,
    cookie: Option<Cookie>,
    mode: Mode,
    slot: &Mutex<Option<Conn>>,
    stop: &AtomicBool,
    name: &str,
) -> Result<(Conn, Reply, Vec<u8>, Duration), String> {
    hello.version = VERSION;
    hello
        .fields
        .retain(|k, _| !k.eq_ignore_ascii_case(secure::HEADER));
    let ask = match mode {
        Mode::None => secure::NONE,
        Mode::Auto | Mode::Required => secure::REQUEST_NOISE,
    };
    hello.fields.insert(secure::HEADER.into(), ask.into());
    match attempt(addr, hello.clone(), cookie.clone(), mode, slot, stop, name) {
        Ok(r) => Ok(r),
        Err(Failure::Other(e)) => Err(e),
        Err(Failure::OldPeer(status)) => {
            if mode == Mode::Required {
                return Err(format!(
                    "the receiver speaks only protocol version {MIN_VERSION} ({status}), which \
                     cannot encrypt; encryption=required refuses cleartext"
                ));
            }
            if mode == Mode::Auto {
                log::warn!(
                    "{name}: the receiver at {addr} speaks only protocol version {MIN_VERSION}, \
                     which cannot encrypt: this tunnel runs in CLEARTEXT (update the receiver, \
                     or set encryption=required to refuse)"
                );
            }
            hello.version = MIN_VERSION;
            hello
                .fields
                .retain(|k, _| !k.eq_ignore_ascii_case(secure::HEADER));
            attempt(addr, hello, cookie, mode, slot, stop, name).map_err(|e| match e {
                Failure::OldPeer(s) | Failure::Other(s) => s,
            })
        }
    }
}

fn attempt(
    addr: &ServerAddr,
    mut hello: Hello,
    cookie: Option<Cookie>,
    mode: Mode,
    slot: &Mutex<Option<Conn>>,
    stop: &AtomicBool,
    name: &str,
) -> Result<(Conn, Reply, Vec<u8>, Duration), Failure> {
    let (mut conn, rtt) = Conn::connect(addr).map_err(|e| e.to_string())?;
    if let (Ok(mut s), Ok(c)) = (slot.lock(), conn.try_clone()) {
        *s = Some(c);
    }
    conn.set_timeouts(Some(POLL), Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut auth = ClientAuth::new(cookie.clone()).map_err(|e| e.to_string())?;
    let hello_text = auth.hello_text(&mut hello);
    conn.write_all(hello_text.as_bytes())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut pending = Vec::new();
    let (reply, reply_text) = loop {
        let (text, rest) = match read_message(&mut conn, &pending, deadline, stop) {
            Ok(m) => m,
            Err(ReadError::Bad(e)) => return Err(format!("bad handshake reply: {e}").into()),
            Err(ReadError::Closed) => {
                return Err("the receiver closed the connection during the handshake \
                            (not an opus-tunnel receiver?)"
                    .to_string()
                    .into())
            }
            Err(ReadError::Io(e)) => return Err(format!("handshake: {e}").into()),
        };
        pending = rest;
        let reply = Reply::parse(&text).map_err(|e| format!("bad handshake reply: {e}"))?;
        match auth.on_reply(&reply) {
            Ok(ClientStep::SendAuth(msg)) => {
                conn.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
            }
            Ok(ClientStep::Accepted { .. }) => break (reply, text),
            Ok(ClientStep::Refused)
                if reply.status == STATUS_VERSION_NOT_SUPPORTED
                    && reply.version < hello.version =>
            {
                return Err(Failure::OldPeer(format!(
                    "{} {}",
                    reply.status, reply.reason
                )))
            }
            Ok(ClientStep::Refused) => {
                return Err(format!(
                    "the receiver refused the tunnel: {} {}",
                    reply.status, reply.reason
                )
                .into())
            }
            Err(e) if !reply.is_ok() && reply.status != STATUS_UNAUTHORIZED => {
                log::debug!("{name}: {e}");
                return Err(format!(
                    "the receiver refused the tunnel: {} {}",
                    reply.status, reply.reason
                )
                .into());
            }
            Err(e) => return Err(e.to_string().into()),
        }
    };
    let chosen = reply
        .fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(secure::HEADER))
        .map(|(_, v)| v.as_str());
    let pattern = chosen.and_then(Pattern::from_name);
    let asked = hello.version >= 2 && mode != Mode::None;
    match (asked, pattern) {
        (true, Some(pattern)) => {
            let psk = match pattern {
                Pattern::NnPsk0 => Some(secure::psk_of(cookie.as_ref().ok_or_else(|| {
                    "the receiver chose the cookie's encryption, but this tunnel has no cookie"
                        .to_string()
                })?)),
                Pattern::Nn => None,
            };
            secure_initiator(
                &mut conn,
                pattern,
                psk.as_ref(),
                &hello_text,
                &reply_text,
                &pending,
                deadline,
                stop,
            )?;
            pending = Vec::new();
        }
        (true, None) => {
            return Err(format!(
                "the receiver accepted without encryption (Encryption: {}); this tunnel \
                 asked for it and refuses cleartext from a version {} receiver",
                chosen.unwrap_or("absent"),
                reply.version
            )
            .into())
        }
        (false, Some(p)) => {
            return Err(format!(
                "the receiver chose {} but this tunnel asked for no encryption",
                p.name()
            )
            .into())
        }
        (false, None) => {}
    }
    conn.set_timeouts(None, Some(WRITE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok((conn, reply, pending, rtt))
}
