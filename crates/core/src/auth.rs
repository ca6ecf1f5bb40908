//! Cookie authentication: a challenge-response over the handshake, HMAC-SHA256 keyed with a
//! shared secret file (PulseAudio's 256-byte cookie by default). The cookie itself never
//! crosses the wire.
//!
//! # The exchange (protocol version 1)
//!
//! Four messages, all in the [`handshake`](crate::handshake) text format (header names are
//! case-insensitive, values trimmed, a blank line ends each message). `Cn` and `Sn` are
//! 32-byte nonces drawn from the operating system's random generator by the client and the
//! server, fresh for every connection; on the wire they and the proofs are 64 hexadecimal
//! digits (lower case written, either case read).
//!
//! 1. The client's [`Hello`] carries two extra headers:
//!    ```text
//!    OPUS-TUNNEL/2 PLAY
//!    Name: speakers
//!    …the other hello headers…
//!    Auth: hmac-sha256
//!    Client-Nonce: <Cn, 64 hex digits>
//!
//!    ```
//!    A client without a cookie sends neither header.
//! 2. A server that requires a cookie for this client answers with a challenge and keeps the
//!    connection open:
//!    ```text
//!    OPUS-TUNNEL/2 401 Unauthorized
//!    Auth: hmac-sha256
//!    Server-Nonce: <Sn, 64 hex digits>
//!
//!    ```
//!    If the hello offered no `Auth: hmac-sha256` (or a malformed nonce) the server answers
//!    `401 cookie authentication required` (or `400 …`) with `Auth: hmac-sha256` but **no**
//!    `Server-Nonce`, and closes the connection.
//! 3. The client answers the challenge with one message:
//!    ```text
//!    OPUS-TUNNEL/2 AUTH
//!    Auth: hmac-sha256
//!    Proof: <hex of HMAC-SHA256(cookie, "opus-tunnel/1 client\0" ‖ Cn ‖ Sn ‖ H)>
//!
//!    ```
//!    where `H` is the hello message exactly as it travelled, byte for byte, from the first
//!    byte of its first line up to and including the blank line that ends it, and `Cn`, `Sn`
//!    are the 32 raw nonce bytes (not their hex text). The labels end with one NUL byte.
//! 4. The server recomputes the proof and compares in constant time. On a match it answers
//!    its ordinary `OPUS-TUNNEL/2 200 OK` reply (with whatever other headers it carries)
//!    plus
//!    ```text
//!    Server-Proof: <hex of HMAC-SHA256(cookie, "opus-tunnel/1 server\0" ‖ Cn ‖ Sn ‖ H)>
//!    ```
//!    which the client verifies (constant time) before it sends audio; on a mismatch it
//!    answers `OPUS-TUNNEL/2 403 cookie authentication failed` and closes.
//!
//! After a `200` the stream starts: in cleartext, or with the cookie as the pre-shared key of
//! the Noise handshake that encrypts it ([`crate::secure`]). A server that does not
//! require a cookie (e.g. `auth-anonymous=1`, or an `auth-ip-acl` match) answers the hello
//! with `200 OK` directly and ignores the two headers; the client accepts that unless it was
//! told to require the server's proof ([`ClientAuth::set_require_server_proof`]).
//!
//! # What this protects, and what it does not
//! * The cookie is never sent; only HMACs over fresh nonces are.
//! * A recorded exchange replayed to a server fails: the server's nonce differs every time.
//! * A recorded `Server-Proof` replayed to a client fails: the client's nonce differs every
//!   time. The two directions use different labels, so a proof cannot be reflected.
//! * The proofs cover the hello byte for byte, so a hello altered in transit (device,
//!   direction, format) is refused.
//! * These proofs alone do not protect what follows: the headers of the final `200` other
//!   than `Server-Proof` are not covered, and a cleartext stream (version 1 peers,
//!   `encryption=none`) can be taken over by whoever can rewrite the TCP stream. The Noise
//!   handshake of an encrypted tunnel covers the hello and the whole `200` (its prologue) and
//!   keys the stream with the cookie, which closes both gaps.

use crate::handshake::{
    parse_version, split_message, HandshakeError, Hello, Reply, MIN_VERSION, PROTOCOL,
    STATUS_BAD_REQUEST, STATUS_FORBIDDEN, STATUS_OK, STATUS_UNAUTHORIZED, VERSION,
};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

type HmacSha256 = Hmac<Sha256>;

/// The only scheme of this version, value of the `Auth` header.
pub const SCHEME: &str = "hmac-sha256";
/// Header naming the scheme (hello, challenge, auth message).
pub const HEADER_AUTH: &str = "Auth";
/// Header of the hello carrying the client's nonce.
pub const HEADER_CLIENT_NONCE: &str = "Client-Nonce";
/// Header of the `401` challenge carrying the server's nonce.
pub const HEADER_SERVER_NONCE: &str = "Server-Nonce";
/// Header of the auth message carrying the client's proof.
pub const HEADER_PROOF: &str = "Proof";
/// Header of the final `200` reply carrying the server's proof.
pub const HEADER_SERVER_PROOF: &str = "Server-Proof";
/// Method word on the first line of the client's auth message (`OPUS-TUNNEL/2 AUTH`).
pub const AUTH_METHOD: &str = "AUTH";
/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes in a proof (an HMAC-SHA256 output).
pub const PROOF_LEN: usize = 32;
/// Size of PulseAudio's cookie file.
pub const PULSE_COOKIE_LEN: usize = 256;
/// Smallest cookie accepted, bytes.
pub const MIN_COOKIE_LEN: usize = 16;
/// Largest cookie accepted, bytes.
pub const MAX_COOKIE_LEN: usize = 4096;

const CLIENT_LABEL: &[u8] = b"opus-tunnel/1 client\0";
const SERVER_LABEL: &[u8] = b"opus-tunnel/1 server\0";

/// Why a cookie could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The file does not exist.
    #[error("cookie file {path} does not exist (copy the receiver's PulseAudio cookie there, or name another file with cookie=)")]
    Missing {
        /// The path tried.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read cookie file {path}: {error}")]
    Io {
        /// The path tried.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// A file or byte string of a size we do not accept.
    #[error("cookie {origin} has {len} bytes, expected {PULSE_COOKIE_LEN} (a PulseAudio cookie) or anything from {MIN_COOKIE_LEN} to {MAX_COOKIE_LEN}")]
    Size {
        /// The file's path, or "given as bytes".
        origin: String,
        /// Its length (for a file larger than the limit, at least the limit + 1).
        len: usize,
    },
    /// No path was given and no home directory is known.
    #[error("no cookie path given and neither $PULSE_COOKIE nor $HOME is set")]
    NoDefaultPath,
}

/// The shared secret. Its bytes are never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cookie({} bytes)", self.bytes.len())
    }
}

impl Cookie {
    /// A cookie from bytes: [`MIN_COOKIE_LEN`] ..= [`MAX_COOKIE_LEN`] of them (PulseAudio's
    /// are [`PULSE_COOKIE_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Cookie, CookieError> {
        Self::checked(bytes.to_vec(), "given as bytes".into())
    }

    fn checked(bytes: Vec<u8>, origin: String) -> Result<Cookie, CookieError> {
        if !(MIN_COOKIE_LEN..=MAX_COOKIE_LEN).contains(&bytes.len()) {
            return Err(CookieError::Size {
                origin,
                len: bytes.len(),
            });
        }
        Ok(Cookie { bytes })
    }

    /// Reads a cookie file (binary, as PulseAudio writes it; any size from
    /// [`MIN_COOKIE_LEN`] to [`MAX_COOKIE_LEN`] bytes is accepted). At most
    /// `MAX_COOKIE_LEN + 1` bytes are read, whatever the file's size.
    pub fn load(path: &Path) -> Result<Cookie, CookieError> {
        let file = std::fs::File::open(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                CookieError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                CookieError::Io {
                    path: path.to_path_buf(),
                    error,
                }
            }
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_COOKIE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| CookieError::Io {
                path: path.to_path_buf(),
                error,
            })?;
        Self::checked(bytes, path.display().to_string())
    }

    /// Reads the cookie at `path`, or at [`default_cookie_path`] when `path` is `None`.
    pub fn load_or_default(path: Option<&Path>) -> Result<Cookie, CookieError> {
        match path {
            Some(p) => Self::load(p),
            None => Self::load(&default_cookie_path().ok_or(CookieError::NoDefaultPath)?),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false (a cookie has at least [`MIN_COOKIE_LEN`] bytes); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// True for the size of PulseAudio's cookies (256 bytes).
    pub fn is_pulseaudio_size(&self) -> bool {
        self.bytes.len() == PULSE_COOKIE_LEN
    }

    /// The secret's bytes (for the encryption's pre-shared key; never logged).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn mac(&self, label: &[u8], cn: &Nonce, sn: &Nonce, hello_text: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; the error branch cannot be taken.
        let mut mac = match HmacSha256::new_from_slice(&self.bytes) {
            Ok(m) => m,
            Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
        };
        mac.update(label);
        mac.update(&cn.0);
        mac.update(&sn.0);
        mac.update(hello_text.as_bytes());
        mac
    }

    /// The client's proof: HMAC-SHA256(cookie, `"opus-tunnel/1 client\0"` ‖ Cn ‖ Sn ‖ hello).
    pub fn client_proof(&self, cn: &Nonce, sn: &Nonce, hello_text: &str) -> Proof {
        Proof(
            self.mac(CLIENT_LABEL, cn, sn, hello_text)
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// The server's proof: HMAC-SHA256(cookie, `"opus-tunnel/1 server\0"` ‖ Cn ‖ Sn ‖ hello).
    pub fn server_proof(&self, cn: &Nonce, sn: &Nonce, hello_text: &str) -> Proof {
        Proof(
            self.mac(SERVER_LABEL, cn, sn, hello_text)
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client_proof(&self, cn: &Nonce, sn: &Nonce, hello_text: &str, p: &Proof) -> bool {
        self.mac(CLIENT_LABEL, cn, sn, hello_text)
            .verify_slice(&p.0)
            .is_ok()
    }

    /// Checks a server's proof in constant time.
    pub fn verify_server_proof(&self, cn: &Nonce, sn: &Nonce, hello_text: &str, p: &Proof) -> bool {
        self.mac(SERVER_LABEL, cn, sn, hello_text)
            .verify_slice(&p.0)
            .is_ok()
    }
}

/// The cookie file PulseAudio itself would use: `$PULSE_COOKIE` if set; else the first that
/// exists of `$XDG_CONFIG_HOME/pulse/cookie`, `~/.config/pulse/cookie`, `~/.pulse-cookie`;
/// else `~/.config/pulse/cookie` (so that an error names the usual place). `None` when
/// neither `$PULSE_COOKIE` nor `$HOME` is set.
pub fn default_cookie_path() -> Option<PathBuf> {
    default_cookie_path_with(|k| std::env::var_os(k), |p| p.exists())
}

/// [`default_cookie_path`] with the environment and the file system given (for tests).
pub fn default_cookie_path_with(
    env: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set("PULSE_COOKIE") {
        return Some(PathBuf::from(p));
    }
    let home = PathBuf::from(set("HOME")?);
    let primary = home.join(".config/pulse/cookie");
    let mut candidates = Vec::new();
    if let Some(x) = set("XDG_CONFIG_HOME") {
        candidates.push(PathBuf::from(x).join("pulse/cookie"));
    }
    candidates.push(primary.clone());
    candidates.push(home.join(".pulse-cookie"));
    Some(
        candidates
            .into_iter()
            .find(|p| exists(p))
            .unwrap_or(primary),
    )
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses exactly 32 bytes written as 64 hex digits.
fn from_hex32(header: &'static str, value: &str) -> Result<[u8; 32], AuthError> {
    let bad = || AuthError::BadValue {
        header,
        value: value.chars().take(80).collect(),
        accepted: "64 hexadecimal digits (32 bytes)",
    };
    let v = value.as_bytes();
    if v.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        let hi = hex_digit(pair[0]).ok_or_else(bad)?;
        let lo = hex_digit(pair[1]).ok_or_else(bad)?;
        *o = (hi << 4) | lo;
    }
    Ok(out)
}

/// A 32-byte nonce.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A fresh nonce from the operating system's random generator.
    pub fn random() -> Result<Nonce, AuthError> {
        let mut b = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut b)
            .map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Nonce(b))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits (either case); `header` names the header in the error.
    pub fn from_hex(header: &'static str, value: &str) -> Result<Nonce, AuthError> {
        from_hex32(header, value).map(Nonce)
    }
}

/// A 32-byte HMAC-SHA256 proof.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Proof(pub [u8; PROOF_LEN]);

impl Proof {
    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits (either case); `header` names the header in the error.
    pub fn from_hex(header: &'static str, value: &str) -> Result<Proof, AuthError> {
        from_hex32(header, value).map(Proof)
    }
}

/// Why authentication failed. On the server, [`AuthError::reply`] is the refusal to send
/// before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The operating system's random generator failed.
    #[error("cannot draw a random nonce: {0}")]
    Random(String),
    /// Server: the hello offered no authentication.
    #[error("the receiver requires cookie authentication and the sender offered none (give the tunnel module cookie=)")]
    NotOffered,
    /// Server: the hello offered only schemes we do not know.
    #[error("the sender offers authentication {0:?}, this end speaks only {SCHEME}")]
    UnsupportedScheme(String),
    /// A required header is absent.
    #[error("authentication message lacks the {0} header")]
    Missing(&'static str),
    /// A header appears twice (names compared without case).
    #[error("authentication header {0} appears more than once")]
    Duplicate(&'static str),
    /// A header with an unusable value.
    #[error("authentication header {header}: {value:?} is not accepted ({accepted})")]
    BadValue {
        /// Header name.
        header: &'static str,
        /// The value received (at most 80 characters of it).
        value: String,
        /// What would be accepted.
        accepted: &'static str,
    },
    /// The auth message is not a well-formed handshake message.
    #[error("malformed authentication message: {0}")]
    Message(#[from] HandshakeError),
    /// Server: the client's proof does not match: it has another cookie.
    #[error("cookie authentication failed: the sender's proof does not match this cookie")]
    WrongProof,
    /// A message arrived where the exchange does not expect one.
    #[error("authentication exchange out of order: {0}")]
    OutOfOrder(&'static str),
    /// Client: the receiver asks for a cookie and this end has none.
    #[error("the receiver requires cookie authentication: give the tunnel module cookie=<a copy of the receiver's cookie file>")]
    CookieRequired,
    /// Client: the receiver refused our proof (different cookies).
    #[error(
        "the receiver refused the cookie ({status} {reason}): the two ends have different cookies"
    )]
    CookieRejected {
        /// Status received.
        status: u16,
        /// Reason received.
        reason: String,
    },
    /// Client: the receiver's proof does not match: it does not know the cookie.
    #[error("the receiver's Server-Proof does not match the cookie: it is not the receiver it claims to be")]
    BadServerProof,
    /// Client: the receiver accepted without proving the cookie, and proof is required.
    #[error("the receiver accepted without proving knowledge of the cookie (no Server-Proof)")]
    ServerNotAuthenticated,
}

impl AuthError {
    /// The refusal a server sends for this error (then it closes the connection): `401` with
    /// `Auth: hmac-sha256` when no usable scheme was offered, `403` for a wrong proof, `400`
    /// for malformed data.
    pub fn reply(&self) -> Reply {
        let (status, reason) = match self {
            AuthError::NotOffered => (STATUS_UNAUTHORIZED, "cookie authentication required"),
            AuthError::UnsupportedScheme(_) => {
                (STATUS_UNAUTHORIZED, "unsupported authentication scheme")
            }
            AuthError::WrongProof => (STATUS_FORBIDDEN, "cookie authentication failed"),
            AuthError::Random(_) => (STATUS_FORBIDDEN, "authentication unavailable"),
            _ => (STATUS_BAD_REQUEST, "malformed authentication"),
        };
        let mut r = Reply::refuse(status, reason);
        if status == STATUS_UNAUTHORIZED {
            r.fields.insert(HEADER_AUTH.into(), SCHEME.into());
        }
        r
    }
}

/// The one value of a header whose name matches `name` without regard to case.
fn field<'a>(
    fields: &'a BTreeMap<String, String>,
    name: &'static str,
) -> Result<Option<&'a str>, AuthError> {
    let mut it = fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str());
    let first = it.next();
    if it.next().is_some() {
        return Err(AuthError::Duplicate(name));
    }
    Ok(first)
}

/// True when a comma-separated scheme list names [`SCHEME`].
fn offers_scheme(list: &str) -> bool {
    list.split(',')
        .any(|s| s.trim().eq_ignore_ascii_case(SCHEME))
}

/// The client's answer to a challenge: `OPUS-TUNNEL/2 AUTH`, `Auth: hmac-sha256`,
/// `Proof: <hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMessage {
    /// The client's proof.
    pub proof: Proof,
}

impl AuthMessage {
    /// The message text at [`VERSION`], ending with the blank line.
    pub fn to_text(&self) -> String {
        self.to_text_version(VERSION)
    }

    /// The message text at `version` (that of the hello it follows).
    pub fn to_text_version(&self, version: u32) -> String {
        format!(
            "{PROTOCOL}/{version} {AUTH_METHOD}\n{HEADER_AUTH}: {SCHEME}\n{HEADER_PROOF}: {}\n\n",
            self.proof.to_hex()
        )
    }

    /// Parses an auth message: first line `OPUS-TUNNEL/2 AUTH`, `Auth` naming
    /// `hmac-sha256`, `Proof` of 64 hex digits; other headers are ignored, none may repeat.
    pub fn parse(text: &str) -> Result<AuthMessage, AuthError> {
        let (first, headers) = split_message(text)?;
        let (version, tail) = parse_version(first)?;
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(HandshakeError::Version { theirs: version }.into());
        }
        if tail.trim() != AUTH_METHOD {
            return Err(HandshakeError::Malformed(format!(
                "expected {PROTOCOL}/{VERSION} {AUTH_METHOD}, got {:?}",
                first.chars().take(80).collect::<String>()
            ))
            .into());
        }
        let mut fields = BTreeMap::new();
        for (n, v) in headers {
            if fields.insert(n.to_string(), v.to_string()).is_some() {
                return Err(HandshakeError::Malformed(format!("duplicate header {n}")).into());
            }
        }
        let scheme = field(&fields, HEADER_AUTH)?.ok_or(AuthError::Missing(HEADER_AUTH))?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(AuthError::UnsupportedScheme(
                scheme.chars().take(80).collect(),
            ));
        }
        let proof = field(&fields, HEADER_PROOF)?.ok_or(AuthError::Missing(HEADER_PROOF))?;
        Ok(AuthMessage {
            proof: Proof::from_hex(HEADER_PROOF, proof)?,
        })
    }
}

/// What the client got from the hello's offer, as seen in a hello (server side).
fn hello_offer(hello: &Hello) -> Result<Nonce, AuthError> {
    let scheme = field(&hello.fields, HEADER_AUTH)?.ok_or(AuthError::NotOffered)?;
    if !offers_scheme(scheme) {
        return Err(AuthError::UnsupportedScheme(
            scheme.chars().take(80).collect(),
        ));
    }
    let cn = field(&hello.fields, HEADER_CLIENT_NONCE)?
        .ok_or(AuthError::Missing(HEADER_CLIENT_NONCE))?;
    Nonce::from_hex(HEADER_CLIENT_NONCE, cn)
}

#[derive(Debug, Clone)]
enum ServerState {
    AwaitHello,
    AwaitProof { cn: Nonce, hello_text: String },
    Done,
}

/// The receiver's side of the exchange, for one connection.
///
/// ```text
/// hello arrives      → on_hello(text, &hello)  → Ok(challenge): send it, read the next message
///                                              → Err(e): send e.reply(), close
/// auth msg arrives   → on_auth(text)           → Ok(verified): verified.sign(&mut ok_reply),
///                                                 send it, start streaming
///                                              → Err(e): send e.reply(), close
/// ```
#[derive(Debug, Clone)]
pub struct ServerAuth {
    cookie: Cookie,
    sn: Nonce,
    state: ServerState,
}

/// A successful verification; adds the server's proof to the `200` reply.
#[derive(Debug, Clone)]
pub struct Verified {
    server_proof: Proof,
}

impl Verified {
    /// Adds `Server-Proof` to `reply` (the `200 OK` the server is about to send).
    pub fn sign(&self, reply: &mut Reply) {
        reply
            .fields
            .insert(HEADER_SERVER_PROOF.into(), self.server_proof.to_hex());
    }

    /// The server's proof.
    pub fn server_proof(&self) -> &Proof {
        &self.server_proof
    }
}

impl ServerAuth {
    /// A server exchange with a fresh nonce from the operating system.
    pub fn new(cookie: Cookie) -> Result<ServerAuth, AuthError> {
        Ok(Self::with_nonce(cookie, Nonce::random()?))
    }

    /// A server exchange with a given nonce (tests; never reuse a nonce otherwise).
    pub fn with_nonce(cookie: Cookie, server_nonce: Nonce) -> ServerAuth {
        ServerAuth {
            cookie,
            sn: server_nonce,
            state: ServerState::AwaitHello,
        }
    }

    /// This connection's server nonce.
    pub fn server_nonce(&self) -> &Nonce {
        &self.sn
    }

    /// The hello has arrived: `hello_text` exactly as read (blank line included, as
    /// [`HeadReader`](crate::handshake::HeadReader) returns it) and its parse. Returns the
    /// `401` challenge to send, or the error whose [`reply`](AuthError::reply) to send
    /// before closing.
    pub fn on_hello(&mut self, hello_text: &str, hello: &Hello) -> Result<Reply, AuthError> {
        if !matches!(self.state, ServerState::AwaitHello) {
            self.state = ServerState::Done;
            return Err(AuthError::OutOfOrder("a second hello"));
        }
        self.state = ServerState::Done;
        let cn = hello_offer(hello)?;
        self.state = ServerState::AwaitProof {
            cn,
            hello_text: hello_text.to_string(),
        };
        let mut r = Reply::refuse(STATUS_UNAUTHORIZED, "");
        r.version = hello.version;
        r.fields.insert(HEADER_AUTH.into(), SCHEME.into());
        r.fields
            .insert(HEADER_SERVER_NONCE.into(), self.sn.to_hex());
        Ok(r)
    }

    /// The client's auth message has arrived (text as read). `Ok`: the cookie matches; sign
    /// the `200` reply with the result. `Err`: send its [`reply`](AuthError::reply) and
    /// close. Any call after the first is refused.
    pub fn on_auth(&mut self, auth_text: &str) -> Result<Verified, AuthError> {
        let (cn, hello_text) = match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::AwaitProof { cn, hello_text } => (cn, hello_text),
            ServerState::AwaitHello => {
                return Err(AuthError::OutOfOrder("auth message before the hello"))
            }
            ServerState::Done => return Err(AuthError::OutOfOrder("a second auth message")),
        };
        let msg = AuthMessage::parse(auth_text)?;
        if !self
            .cookie
            .verify_client_proof(&cn, &self.sn, &hello_text, &msg.proof)
        {
            return Err(AuthError::WrongProof);
        }
        Ok(Verified {
            server_proof: self.cookie.server_proof(&cn, &self.sn, &hello_text),
        })
    }
}

#[derive(Debug, Clone)]
enum ClientState {
    Start,
    HelloSent { hello_text: String },
    ProofSent { hello_text: String, sn: Nonce },
    Done,
}

/// What the client does after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this auth message, then read the next reply and pass it to
    /// [`ClientAuth::on_reply`] again.
    SendAuth(String),
    /// Accepted (`200`): start streaming. `server_verified` tells whether the receiver
    /// proved knowledge of the cookie.
    Accepted {
        /// The `Server-Proof` was present and right.
        server_verified: bool,
    },
    /// Refused for a reason other than authentication (404, 415, 503, 505, …): log the
    /// reply's status and reason and close.
    Refused,
}

/// The sender's side of the exchange, for one connection.
///
/// ```text
/// hello_text(&mut hello)        → send the text
/// reply arrives → on_reply(&r)  → SendAuth(text): send it, read the next reply, on_reply again
///                               → Accepted { .. }: stream
///                               → Refused: log r.status / r.reason, close
///                               → Err(e): log e, close
/// ```
#[derive(Debug, Clone)]
pub struct ClientAuth {
    cookie: Option<Cookie>,
    /// The hello's version, which the auth message repeats.
    version: u32,
    cn: Nonce,
    require_server_proof: bool,
    state: ClientState,
}

impl ClientAuth {
    /// A client exchange; with `None` the hello offers no authentication and a `401` becomes
    /// [`AuthError::CookieRequired`]. Draws a fresh nonce from the operating system.
    pub fn new(cookie: Option<Cookie>) -> Result<ClientAuth, AuthError> {
        Ok(Self::with_nonce(cookie, Nonce::random()?))
    }

    /// A client exchange with a given nonce (tests; never reuse a nonce otherwise).
    pub fn with_nonce(cookie: Option<Cookie>, client_nonce: Nonce) -> ClientAuth {
        ClientAuth {
            cookie,
            version: VERSION,
            cn: client_nonce,
            require_server_proof: false,
            state: ClientState::Start,
        }
    }

    /// When `yes`, a `200` without a valid `Server-Proof` is an error (the receiver must
    /// know the cookie). Off by default, so that receivers that do not ask for a cookie
    /// (`auth-anonymous`, IP ACL) are accepted.
    pub fn set_require_server_proof(&mut self, yes: bool) {
        self.require_server_proof = yes;
    }

    /// This connection's client nonce.
    pub fn client_nonce(&self) -> &Nonce {
        &self.cn
    }

    /// Adds `Auth` and `Client-Nonce` to `hello.fields` (when there is a cookie; any headers
    /// of those names are replaced) and returns the text to send, which the proofs cover.
    pub fn hello_text(&mut self, hello: &mut Hello) -> String {
        hello.fields.retain(|k, _| {
            !k.eq_ignore_ascii_case(HEADER_AUTH) && !k.eq_ignore_ascii_case(HEADER_CLIENT_NONCE)
        });
        if self.cookie.is_some() {
            hello.fields.insert(HEADER_AUTH.into(), SCHEME.into());
            hello
                .fields
                .insert(HEADER_CLIENT_NONCE.into(), self.cn.to_hex());
        }
        let text = hello.to_text();
        self.version = hello.version;
        self.state = ClientState::HelloSent {
            hello_text: text.clone(),
        };
        text
    }

    /// A reply has arrived; see [`ClientStep`]. Errors are final: log and close.
    pub fn on_reply(&mut self, reply: &Reply) -> Result<ClientStep, AuthError> {
        let state = std::mem::replace(&mut self.state, ClientState::Done);
        match (state, reply.status) {
            (ClientState::Start, _) => Err(AuthError::OutOfOrder("a reply before the hello")),
            (ClientState::Done, _) => Err(AuthError::OutOfOrder("a reply after the exchange")),
            (ClientState::HelloSent { hello_text }, STATUS_UNAUTHORIZED) => {
                let cookie = self.cookie.as_ref().ok_or(AuthError::CookieRequired)?;
                let scheme = field(&reply.fields, HEADER_AUTH)?.unwrap_or("");
                if !offers_scheme(scheme) {
                    return Err(AuthError::UnsupportedScheme(
                        scheme.chars().take(80).collect(),
                    ));
                }
                let sn = match field(&reply.fields, HEADER_SERVER_NONCE)? {
                    Some(v) => Nonce::from_hex(HEADER_SERVER_NONCE, v)?,
                    // The server refused our offer outright (it said why in the reason).
                    None => {
                        return Err(AuthError::CookieRejected {
                            status: reply.status,
                            reason: reply.reason.clone(),
                        })
                    }
                };
                let proof = cookie.client_proof(&self.cn, &sn, &hello_text);
                self.state = ClientState::ProofSent { hello_text, sn };
                Ok(ClientStep::SendAuth(
                    AuthMessage { proof }.to_text_version(self.version),
                ))
            }
            (ClientState::HelloSent { .. }, STATUS_OK) => {
                if self.require_server_proof {
                    return Err(AuthError::ServerNotAuthenticated);
                }
                Ok(ClientStep::Accepted {
                    server_verified: false,
                })
            }
            (ClientState::ProofSent { hello_text, sn }, STATUS_OK) => {
                let v = field(&reply.fields, HEADER_SERVER_PROOF)?
                    .ok_or(AuthError::ServerNotAuthenticated)?;
                let p = Proof::from_hex(HEADER_SERVER_PROOF, v)?;
                let ok = self
                    .cookie
                    .as_ref()
                    .is_some_and(|c| c.verify_server_proof(&self.cn, &sn, &hello_text, &p));
                if !ok {
                    return Err(AuthError::BadServerProof);
                }
                Ok(ClientStep::Accepted {
                    server_verified: true,
                })
            }
            (ClientState::ProofSent { .. }, STATUS_UNAUTHORIZED | STATUS_FORBIDDEN) => {
                Err(AuthError::CookieRejected {
                    status: reply.status,
                    reason: reply.reason.clone(),
                })
            }
            (_, _) => Ok(ClientStep::Refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::Direction;
    use crate::params::Compression;

    fn cookie(seed: u8) -> Cookie {
        let b: Vec<u8> = (0..PULSE_COOKIE_LEN)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        Cookie::from_bytes(&b).unwrap()
    }

    /// A client with cookie `client` and a server with cookie `server` up to the client's auth
    /// message: both ends, the hello's text, the server's challenge and the auth message.
    fn up_to_auth(client: u8, server: u8) -> (ClientAuth, ServerAuth, String, Reply, String) {
        let mut c = ClientAuth::new(Some(cookie(client))).unwrap();
        let mut s = ServerAuth::new(cookie(server)).unwrap();
        let text = c.hello_text(&mut hello());
        let ch = s.on_hello(&text, &Hello::parse(&text).unwrap()).unwrap();
        let ClientStep::SendAuth(auth) = c.on_reply(&ch).unwrap() else {
            panic!("no auth message")
        };
        (c, s, text, ch, auth)
    }

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            direction: Direction::Play,
            name: "speakers".into(),
            host: "desk17".into(),
            device: Some("alsa_output.x".into()),
            codec: Compression::Opus,
            rate: 48000,
            channels: 2,
            channel_map: "front-left,front-right".into(),
            frame_usec: 20000,
            target_latency_usec: None,
            fields: BTreeMap::new(),
        }
    }

    /// Runs a whole exchange over texts (as over a socket). Returns the client's final
    /// result, or the server's error.
    fn exchange(
        client_cookie: Option<Cookie>,
        server_cookie: Cookie,
    ) -> (Result<ClientStep, AuthError>, Option<AuthError>) {
        let mut c = ClientAuth::new(client_cookie).unwrap();
        let mut s = ServerAuth::new(server_cookie).unwrap();
        let mut h = hello();
        let text = c.hello_text(&mut h);
        let parsed = Hello::parse(&text).unwrap();
        let challenge = match s.on_hello(&text, &parsed) {
            Ok(r) => r,
            Err(e) => {
                let r = Reply::parse(&e.reply().to_text()).unwrap();
                return (c.on_reply(&r), Some(e));
            }
        };
        let challenge = Reply::parse(&challenge.to_text()).unwrap();
        let auth = match c.on_reply(&challenge) {
            Ok(ClientStep::SendAuth(t)) => t,
            other => return (other, None),
        };
        match s.on_auth(&auth) {
            Ok(v) => {
                let mut ok = Reply::ok();
                ok.fields.insert("Device".into(), "speakers".into());
                v.sign(&mut ok);
                let ok = Reply::parse(&ok.to_text()).unwrap();
                (c.on_reply(&ok), None)
            }
            Err(e) => {
                let r = Reply::parse(&e.reply().to_text()).unwrap();
                (c.on_reply(&r), Some(e))
            }
        }
    }

    #[test]
    fn right_cookie_accepted_both_ways() {
        let (client, server) = exchange(Some(cookie(1)), cookie(1));
        assert_eq!(
            client,
            Ok(ClientStep::Accepted {
                server_verified: true
            })
        );
        assert_eq!(server, None);
        // Any accepted size works too.
        let small = Cookie::from_bytes(&[7u8; 16]).unwrap();
        let (client, _) = exchange(Some(small.clone()), small);
        assert!(matches!(client, Ok(ClientStep::Accepted { .. })));
    }

    #[test]
    fn wrong_cookie_refused() {
        let (client, server) = exchange(Some(cookie(1)), cookie(2));
        assert_eq!(server, Some(AuthError::WrongProof));
        match client {
            Err(AuthError::CookieRejected { status, reason }) => {
                assert_eq!(status, 403);
                assert_eq!(reason, "cookie authentication failed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_cookie_refused() {
        let (client, server) = exchange(None, cookie(1));
        assert_eq!(server, Some(AuthError::NotOffered));
        assert_eq!(client, Err(AuthError::CookieRequired));
        let r = AuthError::NotOffered.reply();
        assert_eq!(
            r.to_text(),
            "OPUS-TUNNEL/2 401 cookie authentication required\nAuth: hmac-sha256\n\n"
        );
        // A client with a cookie that gets such a refusal (no nonce) reports it.
        let mut c = ClientAuth::new(Some(cookie(1))).unwrap();
        c.hello_text(&mut hello());
        assert!(matches!(
            c.on_reply(&r),
            Err(AuthError::CookieRejected { status: 401, .. })
        ));
    }

    #[test]
    fn exact_messages() {
        let cn = Nonce([0x11; 32]);
        let sn = Nonce([0xab; 32]);
        let mut c = ClientAuth::with_nonce(Some(cookie(9)), cn);
        let mut s = ServerAuth::with_nonce(cookie(9), sn);
        let mut h = hello();
        let text = c.hello_text(&mut h);
        assert!(text.ends_with(&format!(
            "Auth: hmac-sha256\nClient-Nonce: {}\n\n",
            "11".repeat(32)
        )));
        let ch = s.on_hello(&text, &Hello::parse(&text).unwrap()).unwrap();
        assert_eq!(
            ch.to_text(),
            format!(
                "OPUS-TUNNEL/2 401 Unauthorized\nAuth: hmac-sha256\nServer-Nonce: {}\n\n",
                "ab".repeat(32)
            )
        );
        let ClientStep::SendAuth(auth) = c.on_reply(&ch).unwrap() else {
            panic!()
        };
        let proof = cookie(9).client_proof(&cn, &sn, &text);
        assert_eq!(
            auth,
            format!(
                "OPUS-TUNNEL/2 AUTH\nAuth: hmac-sha256\nProof: {}\n\n",
                proof.to_hex()
            )
        );
        // The proof is HMAC-SHA256 over label ‖ Cn ‖ Sn ‖ hello bytes.
        let mut m = HmacSha256::new_from_slice(&cookie(9).bytes).unwrap();
        m.update(b"opus-tunnel/1 client\0");
        m.update(&[0x11; 32]);
        m.update(&[0xab; 32]);
        m.update(text.as_bytes());
        assert_eq!(proof.0[..], m.finalize().into_bytes()[..]);
        let v = s.on_auth(&auth).unwrap();
        let mut ok = Reply::ok();
        v.sign(&mut ok);
        assert_eq!(
            ok.to_text(),
            format!(
                "OPUS-TUNNEL/2 200 OK\nServer-Proof: {}\n\n",
                cookie(9).server_proof(&cn, &sn, &text).to_hex()
            )
        );
        assert_ne!(proof, cookie(9).server_proof(&cn, &sn, &text));
    }

    #[test]
    fn replayed_exchange_refused() {
        // Record a good exchange.
        let (c, mut s, text, ch, auth) = up_to_auth(3, 3);
        let v = s.on_auth(&auth).unwrap();
        let mut ok = Reply::ok();
        v.sign(&mut ok);
        // A third party replays hello and auth to the server: new server nonce → refused.
        let mut s2 = ServerAuth::new(cookie(3)).unwrap();
        assert_ne!(s2.server_nonce(), s.server_nonce());
        s2.on_hello(&text, &Hello::parse(&text).unwrap()).unwrap();
        assert_eq!(s2.on_auth(&auth).unwrap_err(), AuthError::WrongProof);
        // A fake server replays the recorded challenge and 200 to a client: new client
        // nonce → the server proof does not match.
        let mut c2 = ClientAuth::new(Some(cookie(3))).unwrap();
        c2.hello_text(&mut hello());
        assert!(matches!(c2.on_reply(&ch), Ok(ClientStep::SendAuth(_))));
        assert_eq!(c2.on_reply(&ok), Err(AuthError::BadServerProof));
        // Reflection: the client's proof is not a server proof.
        let mut c3 = ClientAuth::with_nonce(Some(cookie(3)), *c.client_nonce());
        let t3 = c3.hello_text(&mut hello());
        assert_eq!(t3, text);
        let ClientStep::SendAuth(a3) = c3.on_reply(&ch).unwrap() else {
            panic!()
        };
        let reflected = AuthMessage::parse(&a3).unwrap().proof;
        let mut fake = Reply::ok();
        fake.fields
            .insert(HEADER_SERVER_PROOF.into(), reflected.to_hex());
        assert_eq!(c3.on_reply(&fake), Err(AuthError::BadServerProof));
    }

    #[test]
    fn tampered_hello_refused() {
        // A man in the middle changes the device before the server reads it; even line
        // endings count.
        let tamper: [fn(&str) -> String; 2] = [
            |t| t.replace("Device: alsa_output.x", "Device: other"),
            |t| t.replace('\n', "\r\n"),
        ];
        for change in tamper {
            let mut c = ClientAuth::new(Some(cookie(4))).unwrap();
            let mut s = ServerAuth::new(cookie(4)).unwrap();
            let evil = change(&c.hello_text(&mut hello()));
            let ch = s.on_hello(&evil, &Hello::parse(&evil).unwrap()).unwrap();
            let ClientStep::SendAuth(auth) = c.on_reply(&ch).unwrap() else {
                panic!()
            };
            assert_eq!(s.on_auth(&auth).unwrap_err(), AuthError::WrongProof);
        }
    }

    #[test]
    fn server_proof_required_and_checked() {
        // Anonymous receiver: 200 straight away.
        let mut c = ClientAuth::new(Some(cookie(5))).unwrap();
        c.hello_text(&mut hello());
        assert_eq!(
            c.on_reply(&Reply::ok()),
            Ok(ClientStep::Accepted {
                server_verified: false
            })
        );
        let mut c = ClientAuth::new(Some(cookie(5))).unwrap();
        c.set_require_server_proof(true);
        c.hello_text(&mut hello());
        assert_eq!(
            c.on_reply(&Reply::ok()),
            Err(AuthError::ServerNotAuthenticated)
        );
        // After the proof, a 200 without Server-Proof is refused.
        let mut c = ClientAuth::new(Some(cookie(5))).unwrap();
        let mut s = ServerAuth::new(cookie(5)).unwrap();
        let text = c.hello_text(&mut hello());
        let ch = s.on_hello(&text, &Hello::parse(&text).unwrap()).unwrap();
        assert!(matches!(c.on_reply(&ch), Ok(ClientStep::SendAuth(_))));
        assert_eq!(
            c.on_reply(&Reply::ok()),
            Err(AuthError::ServerNotAuthenticated)
        );
        // Other refusals pass through.
        let mut c = ClientAuth::new(Some(cookie(5))).unwrap();
        c.hello_text(&mut hello());
        assert_eq!(
            c.on_reply(&Reply::refuse(404, "no sink")),
            Ok(ClientStep::Refused)
        );
        // No cookie, anonymous receiver: fine.
        let mut c = ClientAuth::new(None).unwrap();
        let t = c.hello_text(&mut hello());
        assert!(!t.contains("Auth"));
        assert!(matches!(
            c.on_reply(&Reply::ok()),
            Ok(ClientStep::Accepted { .. })
        ));
    }

    #[test]
    fn malformed_data_is_an_error() {
        let cn_ok = "00".repeat(32);
        let with = |extra: &[(&str, &str)]| {
            let mut h = hello();
            for (k, v) in extra {
                h.fields.insert((*k).into(), (*v).into());
            }
            let t = h.to_text();
            let mut s = ServerAuth::new(cookie(6)).unwrap();
            s.on_hello(&t, &Hello::parse(&t).unwrap())
        };
        assert!(with(&[("Auth", "hmac-sha256"), ("Client-Nonce", &cn_ok)]).is_ok());
        assert!(with(&[("auth", "md5, HMAC-SHA256"), ("client-nonce", &cn_ok)]).is_ok());
        assert_eq!(
            with(&[("Auth", "md5"), ("Client-Nonce", &cn_ok)]).unwrap_err(),
            AuthError::UnsupportedScheme("md5".into())
        );
        assert_eq!(
            with(&[("Auth", "hmac-sha256")]).unwrap_err(),
            AuthError::Missing("Client-Nonce")
        );
        for bad in [
            "",
            "00",
            &"0".repeat(63),
            &"0".repeat(65),
            &"zz".repeat(32),
            &"é".repeat(32),
            &"00".repeat(33),
        ] {
            let e = with(&[("Auth", "hmac-sha256"), ("Client-Nonce", bad)]).unwrap_err();
            assert!(matches!(e, AuthError::BadValue { .. }), "{bad:?}: {e:?}");
            assert_eq!(e.reply().status, 400);
        }
        assert_eq!(
            with(&[
                ("Auth", "hmac-sha256"),
                ("Client-Nonce", &cn_ok),
                ("client-nonce", &cn_ok)
            ])
            .unwrap_err(),
            AuthError::Duplicate("Client-Nonce")
        );
        // Upper-case hex is read.
        assert_eq!(
            Nonce::from_hex("X", &"AB".repeat(32)).unwrap(),
            Nonce([0xab; 32])
        );

        // Auth messages.
        let p = "12".repeat(32);
        let good = format!("OPUS-TUNNEL/1 AUTH\nAuth: hmac-sha256\nProof: {p}\n\n");
        assert_eq!(AuthMessage::parse(&good).unwrap().proof, Proof([0x12; 32]));
        assert_eq!(
            AuthMessage::parse(&good.replace('\n', "\r\n"))
                .unwrap()
                .proof,
            Proof([0x12; 32])
        );
        for bad in [
            String::new(),
            "OPUS-TUNNEL/1 AUTH\n\n".into(),
            good.replace("AUTH", "PLAY"),
            good.replace("/1", "/3"),
            good.replace("hmac-sha256", "md5"),
            good.replace(&p, &p[..62]),
            good.replace(&p, &format!("{p}00")),
            good.replace(&p, &"g0".repeat(32)),
            good.replace("Proof: ", "Proof "),
            good.replace("\n\n", "\nproof: 00\n\n"),
            "\u{0}".repeat(9000),
        ] {
            assert!(AuthMessage::parse(&bad).is_err(), "{bad:?}");
        }
        // Challenges with bad nonces.
        for sn in ["", "0", &"0".repeat(66), &"x".repeat(64)] {
            let mut c = ClientAuth::new(Some(cookie(6))).unwrap();
            c.hello_text(&mut hello());
            let mut r = Reply::refuse(401, "");
            r.fields.insert("Auth".into(), "hmac-sha256".into());
            r.fields.insert("Server-Nonce".into(), sn.into());
            assert!(matches!(c.on_reply(&r), Err(AuthError::BadValue { .. })));
        }
        // 200 with a malformed Server-Proof.
        let mut c = ClientAuth::new(Some(cookie(6))).unwrap();
        let mut s = ServerAuth::new(cookie(6)).unwrap();
        let t = c.hello_text(&mut hello());
        let ch = s.on_hello(&t, &Hello::parse(&t).unwrap()).unwrap();
        c.on_reply(&ch).unwrap();
        let mut ok = Reply::ok();
        ok.fields.insert("Server-Proof".into(), "nothex".into());
        assert!(matches!(c.on_reply(&ok), Err(AuthError::BadValue { .. })));
    }

    #[test]
    fn out_of_order_calls_are_errors() {
        let mut s = ServerAuth::new(cookie(7)).unwrap();
        assert!(matches!(
            s.on_auth("OPUS-TUNNEL/1 AUTH\n\n"),
            Err(AuthError::OutOfOrder(_))
        ));
        let mut c = ClientAuth::new(Some(cookie(7))).unwrap();
        assert!(matches!(
            c.on_reply(&Reply::ok()),
            Err(AuthError::OutOfOrder(_))
        ));
        // One try only: a wrong proof ends the exchange.
        let (_, mut s, t, _, a) = up_to_auth(8, 7);
        assert_eq!(s.on_auth(&a).unwrap_err(), AuthError::WrongProof);
        assert!(matches!(s.on_auth(&a), Err(AuthError::OutOfOrder(_))));
        assert!(matches!(
            s.on_hello(&t, &Hello::parse(&t).unwrap()),
            Err(AuthError::OutOfOrder(_))
        ));
    }

    #[test]
    fn cookie_files() {
        let dir = std::env::temp_dir().join(format!("opus-tunnel-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cookie");
        std::fs::write(&p, [5u8; 256]).unwrap();
        let c = Cookie::load(&p).unwrap();
        assert!(c.is_pulseaudio_size());
        assert_eq!(format!("{c:?}"), "Cookie(256 bytes)");
        std::fs::write(&p, [5u8; 15]).unwrap();
        let e = Cookie::load(&p).unwrap_err();
        assert!(matches!(e, CookieError::Size { len: 15, .. }));
        assert!(e.to_string().contains("has 15 bytes, expected 256"), "{e}");
        std::fs::write(&p, vec![5u8; 100_000]).unwrap();
        assert!(matches!(
            Cookie::load(&p),
            Err(CookieError::Size { len: 4097, .. })
        ));
        std::fs::write(&p, [5u8; 4096]).unwrap();
        assert_eq!(Cookie::load(&p).unwrap().len(), 4096);
        let missing = dir.join("nope");
        let e = Cookie::load(&missing).unwrap_err();
        assert!(matches!(e, CookieError::Missing { .. }));
        assert!(e.to_string().contains("nope"));
        assert!(matches!(Cookie::load(&dir), Err(CookieError::Io { .. })));
        assert!(Cookie::from_bytes(&[]).is_err());
        assert!(Cookie::from_bytes(&[0; 4097]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_path() {
        use std::collections::HashMap;
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, OsString> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        let none = |_: &Path| false;
        assert_eq!(
            default_cookie_path_with(env(&[("PULSE_COOKIE", "/x/c"), ("HOME", "/h")]), none),
            Some(PathBuf::from("/x/c"))
        );
        assert_eq!(
            default_cookie_path_with(env(&[("HOME", "/h")]), none),
            Some(PathBuf::from("/h/.config/pulse/cookie"))
        );
        assert_eq!(
            default_cookie_path_with(env(&[("HOME", "/h"), ("PULSE_COOKIE", "")]), |p| p
                == Path::new("/h/.pulse-cookie")),
            Some(PathBuf::from("/h/.pulse-cookie"))
        );
        assert_eq!(
            default_cookie_path_with(env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/cfg")]), |p| p
                == Path::new("/cfg/pulse/cookie")),
            Some(PathBuf::from("/cfg/pulse/cookie"))
        );
        assert_eq!(default_cookie_path_with(env(&[]), none), None);
    }
}
