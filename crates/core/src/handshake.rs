//! The handshake: one human-readable, line-based message each way before the RTP stream,
//! in the style of HTTP/RTSP.
//!
//! The client (the tunnel module) sends a [`Hello`]; the server (the receiver) answers with
//! a [`Reply`]. Messages are UTF-8, lines end with `\n` (`\r\n` accepted), a blank line ends
//! a message, a message is at most [`MAX_MESSAGE`] bytes and [`MAX_LINES`] header lines.
//! Header names are case-insensitive on input.
//!
//! ```text
//! OPUS-TUNNEL/2 PLAY
//! Name: tunnel-sink.desktop42
//! Host: desktop42
//! Device: alsa_output.usb-headset
//! Codec: opus
//! Rate: 48000
//! Channels: 2
//! Channel-Map: front-left,front-right
//! Frame-Usec: 20000
//! Target-Latency-Usec: 40000
//! Compression.bitrate: 64000
//! Encryption: noise
//!
//! ```
//! ```text
//! OPUS-TUNNEL/2 200 OK
//! Encryption: Noise_NN_25519_ChaChaPoly_BLAKE2s
//!
//! ```
//! A server that speaks another version answers `505 Version Not Supported` with a
//! `Supported:` header naming the versions it speaks; a client can log that and give up.
//!
//! Version 2 (this one) adds encryption ([`crate::secure`]): the hello carries
//! `Encryption: noise` or `Encryption: none`, the `200` names what was chosen, and with a
//! Noise pattern everything after the `200` is ciphertext. A version 2 receiver still
//! serves version 1 hellos (in cleartext, unless its `encryption=required`); a version 2
//! tunnel whose hello a version 1 receiver refuses with `505` falls back to version 1 in
//! cleartext with `encryption=auto` (a warning in the log), and gives up with
//! `encryption=required`.
//!
//! Version 2 also carries the transport ([`crate::udp`]): a hello with `Transport: udp` gets a
//! `200` with `Transport: udp`, `Udp-Port` and `Udp-Token`, or `Transport: tcp`; a receiver
//! that does not know the header answers without it, which means TCP.

use crate::params::Compression;
use std::collections::BTreeMap;

/// Protocol name on the first line.
pub const PROTOCOL: &str = "OPUS-TUNNEL";
/// Protocol version of this implementation.
pub const VERSION: u32 = 2;
/// The oldest version this implementation still speaks (cleartext only).
pub const MIN_VERSION: u32 = 1;
/// Largest message, bytes (blank line included).
pub const MAX_MESSAGE: usize = 8192;
/// Most header lines in one message.
pub const MAX_LINES: usize = 64;

/// Status: accepted.
pub const STATUS_OK: u16 = 200;
/// Status: the hello is malformed.
pub const STATUS_BAD_REQUEST: u16 = 400;
/// Status: authentication required or failed.
pub const STATUS_UNAUTHORIZED: u16 = 401;
/// Status: refused by access control.
pub const STATUS_FORBIDDEN: u16 = 403;
/// Status: the requested sink/source does not exist.
pub const STATUS_NO_SUCH_DEVICE: u16 = 404;
/// Status: codec or sample spec not supported.
pub const STATUS_UNSUPPORTED_FORMAT: u16 = 415;
/// Status: the server has reached `max_connections`.
pub const STATUS_TOO_MANY_CONNECTIONS: u16 = 503;
/// Status: the receiver does not encrypt (`encryption=none`) and the tunnel asked it to.
pub const STATUS_ENCRYPTION_NOT_ACCEPTED: u16 = 406;
/// Status: the receiver requires encryption (`encryption=required`) and the tunnel asked for
/// cleartext (or speaks version 1, which cannot encrypt).
pub const STATUS_ENCRYPTION_REQUIRED: u16 = 426;
/// Status: another protocol version (the reply carries `Supported: 1,2`).
pub const STATUS_VERSION_NOT_SUPPORTED: u16 = 505;
/// The `Supported` header of a 505: the versions this implementation speaks.
pub const SUPPORTED: &str = "1,2";

/// The standard reason phrase of a status, or `"Unknown"`.
pub fn status_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "No Such Device",
        406 => "Encryption Not Accepted",
        415 => "Unsupported Format",
        426 => "Encryption Required",
        503 => "Too Many Connections",
        505 => "Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first line does not start with `OPUS-TUNNEL/`: the peer speaks something else.
    #[error("the peer does not speak {PROTOCOL}")]
    NotOurProtocol,
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks {PROTOCOL} version {theirs}, this end speaks version {VERSION}")]
    Version {
        /// Their version.
        theirs: u32,
    },
    /// No blank line within [`MAX_MESSAGE`] bytes.
    #[error("handshake message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// More than [`MAX_LINES`] header lines.
    #[error("handshake message with more than {MAX_LINES} header lines")]
    TooManyLines,
    /// Not UTF-8.
    #[error("handshake message is not valid UTF-8")]
    InvalidUtf8,
    /// A line that cannot be understood.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// A required header is absent.
    #[error("handshake lacks the {0} header")]
    Missing(&'static str),
    /// A header with an unusable value.
    #[error("handshake header {header}: {value:?} is not accepted ({accepted})")]
    BadValue {
        /// Header name.
        header: &'static str,
        /// The value received.
        value: String,
        /// What would be accepted.
        accepted: &'static str,
    },
}

/// Direction of a tunnel, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The client sends audio to be played on the server (tunnel sink).
    Play,
    /// The client receives audio recorded on the server (tunnel source).
    Record,
}

impl Direction {
    /// `"PLAY"` or `"RECORD"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Play => "PLAY",
            Direction::Record => "RECORD",
        }
    }
}

/// Replaces control characters (newlines included) with spaces and trims.
pub fn sanitize_value(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Makes a header name a token: characters other than ASCII letters, digits, `-`, `_`
/// and `.` become `-`.
fn sanitize_name(n: &str) -> String {
    let s: String = n
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Splits a message into its first line and header `(name, value)` pairs.
/// First line and `(name, value)` header pairs of a message.
type Split<'a> = (&'a str, Vec<(&'a str, &'a str)>);

pub(crate) fn split_message(text: &str) -> Result<Split<'_>, HandshakeError> {
    if text.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLong);
    }
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_LINES {
            return Err(HandshakeError::TooManyLines);
        }
        let (n, v) = line.split_once(':').ok_or_else(|| {
            HandshakeError::Malformed(format!("header line without ':': {line:?}"))
        })?;
        let n = n.trim();
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HandshakeError::Malformed(format!("bad header name {n:?}")));
        }
        headers.push((n, v.trim()));
    }
    Ok((first, headers))
}

/// Parses `OPUS-TUNNEL/N` at the start of `first`, returning N and the rest of the line.
pub(crate) fn parse_version(first: &str) -> Result<(u32, &str), HandshakeError> {
    let rest = first
        .strip_prefix(PROTOCOL)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or(HandshakeError::NotOurProtocol)?;
    let (v, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let version = v
        .parse::<u32>()
        .map_err(|_| HandshakeError::Malformed(format!("bad version in {first:?}")))?;
    Ok((version, tail))
}

/// Hello header (a play tunnel's): the block the sender posts its audio in, µs (its sink's
/// block, or the PipeWire graph's quantum it asks for). The receiver's buffer holds from the
/// start what such blocks make packets late by; a receiver that does not know it ignores it.
pub const HEADER_BLOCK_USEC: &str = "Block-Usec";

/// The `Block-Usec` of a hello's fields, if present and within 1 µs..1 s.
pub fn block_usec(fields: &BTreeMap<String, String>) -> Option<u64> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HEADER_BLOCK_USEC))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .filter(|u| (1..=1_000_000).contains(u))
}

/// The client's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version ([`VERSION`]).
    pub version: u32,
    /// Play (tunnel sink) or record (tunnel source).
    pub direction: Direction,
    /// The sender's device name (e.g. the tunnel sink's name). Header `Name`.
    pub name: String,
    /// The client's host name. Header `Host`.
    pub host: String,
    /// Remote sink/source to use; `None` = the server's default. Header `Device`.
    pub device: Option<String>,
    /// Codec. Header `Codec`: `opus` or `L16`.
    pub codec: Compression,
    /// Sample rate, Hz. Header `Rate`.
    pub rate: u32,
    /// Channels. Header `Channels`.
    pub channels: u8,
    /// PulseAudio channel map text, e.g. `front-left,front-right`. Header `Channel-Map`.
    pub channel_map: String,
    /// Frame duration in µs. Header `Frame-Usec`.
    pub frame_usec: u32,
    /// Latency the client asks for, µs. Header `Target-Latency-Usec`.
    pub target_latency_usec: Option<u32>,
    /// Any other header (knobs, authentication, …), by name as written.
    pub fields: BTreeMap<String, String>,
}

const KNOWN_HELLO: [&str; 9] = [
    "Name",
    "Host",
    "Device",
    "Codec",
    "Rate",
    "Channels",
    "Channel-Map",
    "Frame-Usec",
    "Target-Latency-Usec",
];

fn codec_text(c: Compression) -> &'static str {
    match c {
        Compression::Opus => "opus",
        Compression::None => "L16",
    }
}

impl Hello {
    /// A play hello of this version for Opus, 48 kHz stereo, 20 ms frames, no device, no
    /// extra fields: what a plain RTP/Opus stream stands for, and a test's default.
    pub(crate) fn opus_stereo_play(name: String, host: String) -> Hello {
        Hello {
            version: VERSION,
            direction: Direction::Play,
            name,
            host,
            device: None,
            codec: Compression::Opus,
            rate: 48_000,
            channels: 2,
            channel_map: "front-left,front-right".into(),
            frame_usec: 20_000,
            target_latency_usec: None,
            fields: Default::default(),
        }
    }

    /// The message text, ending with the blank line. Values are sanitised (control
    /// characters, newlines included, become spaces), names in `fields` are made tokens, and
    /// `fields` entries whose name is one of the standard headers are left out.
    pub fn to_text(&self) -> String {
        let mut s = format!("{PROTOCOL}/{} {}\n", self.version, self.direction.as_str());
        let mut line = |n: &str, v: &str| {
            s.push_str(n);
            s.push_str(": ");
            s.push_str(&sanitize_value(v));
            s.push('\n');
        };
        line("Name", &self.name);
        line("Host", &self.host);
        if let Some(d) = &self.device {
            line("Device", d);
        }
        line("Codec", codec_text(self.codec));
        line("Rate", &self.rate.to_string());
        line("Channels", &self.channels.to_string());
        line("Channel-Map", &self.channel_map);
        line("Frame-Usec", &self.frame_usec.to_string());
        if let Some(t) = self.target_latency_usec {
            line("Target-Latency-Usec", &t.to_string());
        }
        for (n, v) in &self.fields {
            let n = sanitize_name(n);
            if KNOWN_HELLO.iter().any(|k| k.eq_ignore_ascii_case(&n)) {
                continue;
            }
            line(&n, v);
        }
        s.push('\n');
        s
    }

    /// Parses a hello. The first line decides first: not `OPUS-TUNNEL/…` →
    /// [`HandshakeError::NotOurProtocol`]; another version →
    /// [`HandshakeError::Version`] (nothing else is checked, so a server can refuse
    /// politely). Then `Name`, `Codec`, `Rate`, `Channels`, `Frame-Usec` are required;
    /// `Host` and `Channel-Map` default to empty; a header may appear once.
    pub fn parse(text: &str) -> Result<Hello, HandshakeError> {
        let (first, headers) = split_message(text)?;
        let (version, tail) = parse_version(first)?;
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(HandshakeError::Version { theirs: version });
        }
        let direction = match tail.trim() {
            "PLAY" => Direction::Play,
            "RECORD" => Direction::Record,
            other => {
                return Err(HandshakeError::Malformed(format!(
                    "direction {other:?}, expected PLAY or RECORD"
                )))
            }
        };
        let mut known: [Option<&str>; 9] = [None; 9];
        let mut fields = BTreeMap::new();
        for (n, v) in headers {
            if let Some(i) = KNOWN_HELLO.iter().position(|k| k.eq_ignore_ascii_case(n)) {
                if known[i].replace(v).is_some() {
                    return Err(HandshakeError::Malformed(format!("duplicate header {n}")));
                }
            } else if fields.insert(n.to_string(), v.to_string()).is_some() {
                return Err(HandshakeError::Malformed(format!("duplicate header {n}")));
            }
        }
        let req = |i: usize| known[i].ok_or(HandshakeError::Missing(KNOWN_HELLO[i]));
        fn num<T: std::str::FromStr>(
            header: &'static str,
            v: &str,
            accepted: &'static str,
        ) -> Result<T, HandshakeError> {
            v.parse::<T>().map_err(|_| HandshakeError::BadValue {
                header,
                value: v.to_string(),
                accepted,
            })
        }
        let codec = match req(3)? {
            c if c.eq_ignore_ascii_case("opus") => Compression::Opus,
            c if c.eq_ignore_ascii_case("L16") => Compression::None,
            c => {
                return Err(HandshakeError::BadValue {
                    header: "Codec",
                    value: c.to_string(),
                    accepted: "opus or L16",
                })
            }
        };
        let rate: u32 = num("Rate", req(4)?, "a positive integer")?;
        let channels: u8 = num("Channels", req(5)?, "an integer from 1 to 255")?;
        let frame_usec: u32 = num("Frame-Usec", req(7)?, "a positive integer")?;
        if rate == 0 {
            return Err(HandshakeError::BadValue {
                header: "Rate",
                value: "0".into(),
                accepted: "a positive integer",
            });
        }
        if channels == 0 {
            return Err(HandshakeError::BadValue {
                header: "Channels",
                value: "0".into(),
                accepted: "an integer from 1 to 255",
            });
        }
        if frame_usec == 0 {
            return Err(HandshakeError::BadValue {
                header: "Frame-Usec",
                value: "0".into(),
                accepted: "a positive integer",
            });
        }
        let target_latency_usec = known[8]
            .map(|v| num("Target-Latency-Usec", v, "a non-negative integer"))
            .transpose()?;
        Ok(Hello {
            version,
            direction,
            name: req(0)?.to_string(),
            host: known[1].unwrap_or("").to_string(),
            device: known[2].filter(|d| !d.is_empty()).map(str::to_string),
            codec,
            rate,
            channels,
            channel_map: known[6].unwrap_or("").to_string(),
            frame_usec,
            target_latency_usec,
            fields,
        })
    }
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The server's protocol version.
    pub version: u32,
    /// Status code (200 = accepted).
    pub status: u16,
    /// Reason phrase, to log.
    pub reason: String,
    /// Other headers (e.g. `Supported`, `Target-Latency-Usec`, authentication).
    pub fields: BTreeMap<String, String>,
}

impl Reply {
    /// `200 OK` at [`VERSION`].
    pub fn ok() -> Reply {
        Reply {
            version: VERSION,
            status: STATUS_OK,
            reason: status_reason(STATUS_OK).to_string(),
            fields: BTreeMap::new(),
        }
    }

    /// A refusal with `status` and a human-readable `reason` (an empty reason becomes the
    /// standard phrase). A 505 carries `Supported: 1,2`.
    pub fn refuse(status: u16, reason: impl Into<String>) -> Reply {
        let mut reason = reason.into();
        if reason.trim().is_empty() {
            reason = status_reason(status).to_string();
        }
        let mut fields = BTreeMap::new();
        if status == STATUS_VERSION_NOT_SUPPORTED {
            fields.insert("Supported".to_string(), SUPPORTED.to_string());
        }
        Reply {
            version: VERSION,
            status,
            reason,
            fields,
        }
    }

    /// True for status 200.
    pub fn is_ok(&self) -> bool {
        self.status == STATUS_OK
    }

    /// The message text (`OPUS-TUNNEL/1 200 OK`, headers, blank line); values and the
    /// reason are sanitised as in [`Hello::to_text`].
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{PROTOCOL}/{} {} {}\n",
            self.version,
            self.status,
            sanitize_value(&self.reason)
        );
        for (n, v) in &self.fields {
            s.push_str(&sanitize_name(n));
            s.push_str(": ");
            s.push_str(&sanitize_value(v));
            s.push('\n');
        }
        s.push('\n');
        s
    }

    /// Parses a reply of any version (the version is reported in `version`, so a client can
    /// log what the server speaks). Status must be three digits.
    pub fn parse(text: &str) -> Result<Reply, HandshakeError> {
        let (first, headers) = split_message(text)?;
        let (version, tail) = parse_version(first)?;
        let (code, reason) = tail.split_once(' ').unwrap_or((tail, ""));
        let status = match code.parse::<u16>() {
            Ok(s) if (100..=999).contains(&s) && code.len() == 3 => s,
            _ => {
                return Err(HandshakeError::Malformed(format!(
                    "bad status line {first:?}"
                )))
            }
        };
        let mut fields = BTreeMap::new();
        for (n, v) in headers {
            if fields.insert(n.to_string(), v.to_string()).is_some() {
                return Err(HandshakeError::Malformed(format!("duplicate header {n}")));
            }
        }
        Ok(Reply {
            version,
            status,
            reason: reason.trim().to_string(),
            fields,
        })
    }
}

/// Accumulates bytes from the socket until a blank line ends a handshake message.
#[derive(Debug, Clone, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
    scanned: usize,
}

impl HeadReader {
    /// An empty reader.
    pub fn new() -> Self {
        HeadReader::default()
    }

    /// Appends `bytes`. Once a blank line has arrived returns the message text (blank line
    /// included) and the bytes that followed it (the start of the RTP stream), and the
    /// reader starts afresh. `Ok(None)`: more bytes needed. Errors: [`MAX_MESSAGE`] bytes
    /// without a blank line ([`HandshakeError::TooLong`]), or a message that is not UTF-8.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(String, Vec<u8>)>, HandshakeError> {
        self.buf.extend_from_slice(bytes);
        let mut line_start = self.scanned;
        // Back up to the start of the line containing `scanned`.
        while line_start > 0 && self.buf[line_start - 1] != b'\n' {
            line_start -= 1;
        }
        let limit = self.buf.len().min(MAX_MESSAGE);
        let mut i = self.scanned;
        while i < limit {
            if self.buf[i] == b'\n' {
                let line = &self.buf[line_start..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    let end = i + 1;
                    let rest = self.buf.split_off(end);
                    let msg = std::mem::take(&mut self.buf);
                    self.scanned = 0;
                    let text = String::from_utf8(msg).map_err(|_| HandshakeError::InvalidUtf8)?;
                    return Ok(Some((text, rest)));
                }
                line_start = i + 1;
            }
            i += 1;
        }
        self.scanned = limit;
        if self.buf.len() >= MAX_MESSAGE {
            return Err(HandshakeError::TooLong);
        }
        Ok(None)
    }

    /// Bytes held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn block_usec_is_read_case_insensitively_and_bounded() {
        let f = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(block_usec(&f("Block-Usec", "21333")), Some(21_333));
        assert_eq!(block_usec(&f("block-usec", " 10000 ")), Some(10_000));
        assert_eq!(block_usec(&f("Block-Usec", "0")), None);
        assert_eq!(block_usec(&f("Block-Usec", "2000000")), None);
        assert_eq!(block_usec(&f("Block-Usec", "soon")), None);
        assert_eq!(block_usec(&f("Frame-Usec", "20000")), None);
    }

    use super::*;

    fn hello() -> Hello {
        let mut fields = BTreeMap::new();
        fields.insert("compression.bitrate".into(), "32000".into());
        fields.insert("Auth-Response".into(), "abcdef".into());
        Hello {
            version: VERSION,
            direction: Direction::Play,
            name: "tunnel.desk42".into(),
            host: "desk42".into(),
            device: Some("alsa_output.usb".into()),
            codec: Compression::Opus,
            rate: 48000,
            channels: 2,
            channel_map: "front-left,front-right".into(),
            frame_usec: 20000,
            target_latency_usec: Some(40000),
            fields,
        }
    }

    #[test]
    fn hello_exact_text_and_round_trip() {
        let h = hello();
        let t = h.to_text();
        assert_eq!(
            t,
            "OPUS-TUNNEL/2 PLAY\nName: tunnel.desk42\nHost: desk42\nDevice: alsa_output.usb\n\
             Codec: opus\nRate: 48000\nChannels: 2\nChannel-Map: front-left,front-right\n\
             Frame-Usec: 20000\nTarget-Latency-Usec: 40000\nAuth-Response: abcdef\n\
             compression.bitrate: 32000\n\n"
        );
        assert_eq!(Hello::parse(&t).unwrap(), h);
        // CRLF and case-insensitive names.
        let crlf = t.replace('\n', "\r\n").replace("Rate:", "rate:");
        assert_eq!(Hello::parse(&crlf).unwrap(), h);
        // Minimal record hello with L16.
        let m = "OPUS-TUNNEL/1 RECORD\nName: mic\nCodec: L16\nRate: 44100\nChannels: 1\n\
                 Frame-Usec: 10000\n\n";
        let p = Hello::parse(m).unwrap();
        assert_eq!(p.direction, Direction::Record);
        assert_eq!(p.codec, Compression::None);
        assert_eq!(p.device, None);
        assert_eq!(p.target_latency_usec, None);
        assert_eq!(p.host, "");
        assert!(p.to_text().contains("Codec: L16\n"));
    }

    #[test]
    fn hello_sanitises_user_values() {
        let mut h = hello();
        h.device = Some("evil\nRate: 1".into());
        h.fields.insert("Bad Name\n".into(), "x\r\ny".into());
        h.fields.insert("rate".into(), "8000".into()); // collides: dropped
        let t = h.to_text();
        let p = Hello::parse(&t).unwrap();
        assert_eq!(p.device.as_deref(), Some("evil Rate: 1"));
        assert_eq!(p.rate, 48000);
        assert_eq!(p.fields.get("Bad-Name-").map(String::as_str), Some("x  y"));
    }

    #[test]
    fn hello_errors() {
        assert_eq!(
            Hello::parse("GET / HTTP/1.1\nHost: x\n\n"),
            Err(HandshakeError::NotOurProtocol)
        );
        let v3 = "OPUS-TUNNEL/3 PLAY\nWhatever: x\n\n";
        assert_eq!(Hello::parse(v3), Err(HandshakeError::Version { theirs: 3 }));
        let v0 = "OPUS-TUNNEL/0 PLAY\nWhatever: x\n\n";
        assert_eq!(Hello::parse(v0), Err(HandshakeError::Version { theirs: 0 }));
        // Version 1 hellos are still served.
        let v1 = hello().to_text().replace("OPUS-TUNNEL/2", "OPUS-TUNNEL/1");
        assert_eq!(Hello::parse(&v1).map(|h| h.version), Ok(1));
        // Even a v7 with a shape we do not know reports the version.
        assert_eq!(
            Hello::parse("OPUS-TUNNEL/7 STREAM-MULTI\n\n"),
            Err(HandshakeError::Version { theirs: 7 })
        );
        assert!(matches!(
            Hello::parse("OPUS-TUNNEL/x PLAY\n\n"),
            Err(HandshakeError::Malformed(_))
        ));
        let good = hello().to_text();
        assert!(matches!(
            Hello::parse(&good.replace("PLAY", "DANCE")),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(
            Hello::parse(&good.replace("Rate: 48000\n", "")),
            Err(HandshakeError::Missing("Rate"))
        );
        assert_eq!(
            Hello::parse(&good.replace("Name: tunnel.desk42\n", "")),
            Err(HandshakeError::Missing("Name"))
        );
        let e = Hello::parse(&good.replace("Rate: 48000", "Rate: fast")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "handshake header Rate: \"fast\" is not accepted (a positive integer)"
        );
        assert!(Hello::parse(&good.replace("Channels: 2", "Channels: 300")).is_err());
        assert!(Hello::parse(&good.replace("Channels: 2", "Channels: 0")).is_err());
        assert!(Hello::parse(&good.replace("Codec: opus", "Codec: mp3")).is_err());
        assert!(Hello::parse(&good.replace("Host: desk42\n", "Host: a\nhost: b\n")).is_err());
        assert!(Hello::parse(&good.replace("Host: desk42\n", "no colon\n")).is_err());
        let many: String = (0..65).map(|i| format!("X-{i}: 1\n")).collect();
        let t = good.replacen("Name:", &format!("{many}Name:"), 1);
        assert_eq!(Hello::parse(&t), Err(HandshakeError::TooManyLines));
        assert_eq!(
            Hello::parse(&"x".repeat(9000)),
            Err(HandshakeError::TooLong)
        );
        assert_eq!(Hello::parse(""), Err(HandshakeError::NotOurProtocol));
    }

    #[test]
    fn replies() {
        let ok = Reply::ok();
        assert!(ok.is_ok());
        assert_eq!(ok.to_text(), "OPUS-TUNNEL/2 200 OK\n\n");
        assert_eq!(Reply::parse(&ok.to_text()).unwrap(), ok);
        let r = Reply::refuse(505, "");
        assert_eq!(
            r.to_text(),
            "OPUS-TUNNEL/2 505 Version Not Supported\nSupported: 1,2\n\n"
        );
        assert_eq!(Reply::parse(&r.to_text()).unwrap(), r);
        let r = Reply::refuse(404, "no sink named\n\"foo\"");
        assert_eq!(r.to_text(), "OPUS-TUNNEL/2 404 no sink named \"foo\"\n\n");
        let p = Reply::parse(&r.to_text()).unwrap();
        assert_eq!(p.status, 404);
        assert!(!p.is_ok());
        let other = Reply::parse("OPUS-TUNNEL/3 200 OK\r\nX: y\r\n\r\n").unwrap();
        assert_eq!(other.version, 3);
        assert_eq!(other.fields.get("X").map(String::as_str), Some("y"));
        for (s, reason) in [
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (406, "Encryption Not Accepted"),
            (415, "Unsupported Format"),
            (426, "Encryption Required"),
            (503, "Too Many Connections"),
        ] {
            assert_eq!(Reply::refuse(s, " ").reason, reason);
        }
        assert!(Reply::parse("OPUS-TUNNEL/1 2000 OK\n\n").is_err());
        assert!(Reply::parse("OPUS-TUNNEL/1 abc\n\n").is_err());
        assert_eq!(
            Reply::parse("RTSP/1.0 200 OK\n\n"),
            Err(HandshakeError::NotOurProtocol)
        );
    }

    #[test]
    fn head_reader() {
        let msg = hello().to_text();
        let mut stream = msg.clone().into_bytes();
        stream.extend_from_slice(&[0, 20, 0x80]);
        let mut r = HeadReader::new();
        let mut result = None;
        for (i, b) in stream.iter().enumerate() {
            if let Some(x) = r.push(std::slice::from_ref(b)).unwrap() {
                assert_eq!(i, msg.len() - 1);
                result = Some(x);
                break;
            }
        }
        let (text, rest) = result.unwrap();
        assert_eq!(text, msg);
        assert!(rest.is_empty());
        // All at once: leftover bytes come back.
        let mut r = HeadReader::new();
        let (text, rest) = r.push(&stream).unwrap().unwrap();
        assert_eq!(text, msg);
        assert_eq!(rest, [0, 20, 0x80]);
        // CRLF blank line split across pushes.
        let mut r = HeadReader::new();
        assert_eq!(r.push(b"OPUS-TUNNEL/1 200 OK\r\n\r").unwrap(), None);
        let (t, rest) = r.push(b"\nXY").unwrap().unwrap();
        assert_eq!(t, "OPUS-TUNNEL/1 200 OK\r\n\r\n");
        assert_eq!(rest, b"XY");
        // Too long.
        let mut r = HeadReader::new();
        let mut err = None;
        for _ in 0..100 {
            match r.push(&[b'a'; 100]) {
                Ok(None) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
                Ok(Some(_)) => panic!(),
            }
        }
        assert_eq!(err, Some(HandshakeError::TooLong));
        assert!(r.buffered() <= MAX_MESSAGE + 100);
        // Not UTF-8.
        let mut r = HeadReader::new();
        assert_eq!(
            r.push(b"OPUS-TUNNEL/1 \xff\n\n"),
            Err(HandshakeError::InvalidUtf8)
        );
    }
}
