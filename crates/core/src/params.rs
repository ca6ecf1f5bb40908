//! Parameters: compression choice, the Opus knobs (with the QVD property keys), the
//! `server=` address, boolean words and reconnect back-off.
//!
//! Everything here parses text that comes from users (module arguments, property updates);
//! nothing panics on bad input, every parser returns a [`ParamError`] whose `Display` names
//! the key, the refused value and what would have been accepted.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A refused parameter value.
///
/// `Display` gives e.g.
/// `compression.bitrate: "abc" is not accepted (an integer from 6000 to 510000)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The key (argument or property name) the value was given for.
    pub key: String,
    /// The refused value, verbatim.
    pub value: String,
    /// Human-readable description of the accepted values.
    pub accepted: String,
}

impl ParamError {
    /// Builds an error for `key` = `value`, accepted values described by `accepted`.
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        accepted: impl Into<String>,
    ) -> Self {
        ParamError {
            key: key.into(),
            value: value.into(),
            accepted: accepted.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {:?} is not accepted ({})",
            self.key, self.value, self.accepted
        )
    }
}

impl std::error::Error for ParamError {}

/// Parses a boolean the way PulseAudio's `pa_parse_boolean` does:
/// `1/0`, `yes/no`, `y/n`, `true/false`, `t/f`, `on/off`, case-insensitive,
/// surrounding whitespace ignored. Anything else is `None`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// How audio travels on the wire: `compression=opus` (default) or `compression=none` (PCM, L16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Opus (RFC 7587 payload).
    #[default]
    Opus,
    /// Uncompressed PCM, sent as L16 (RFC 3551).
    None,
}

impl Compression {
    /// Canonical text: `"opus"` or `"none"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::Opus => "opus",
            Compression::None => "none",
        }
    }

    /// Parses `"opus"`, `"none"` or `"pcm"` (→ `None`), case-insensitive.
    /// The error names the key `compression`.
    pub fn parse(s: &str) -> Result<Self, ParamError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "opus" => Ok(Compression::Opus),
            "none" | "pcm" => Ok(Compression::None),
            _ => Err(ParamError::new("compression", s, "one of opus, none, pcm")),
        }
    }
}

impl FromStr for Compression {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        Compression::parse(s)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Opus frame duration. Textual forms: `"2.5"`, `"5"`, `"10"`, `"20"`, `"40"`, `"60"` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum FrameSize {
    /// 2.5 ms
    Ms2_5,
    /// 5 ms
    Ms5,
    /// 10 ms
    Ms10,
    /// 20 ms (default)
    #[default]
    Ms20,
    /// 40 ms
    Ms40,
    /// 60 ms
    Ms60,
}

impl FrameSize {
    /// All frame sizes, shortest first.
    pub const ALL: [FrameSize; 6] = [
        FrameSize::Ms2_5,
        FrameSize::Ms5,
        FrameSize::Ms10,
        FrameSize::Ms20,
        FrameSize::Ms40,
        FrameSize::Ms60,
    ];

    /// Duration in microseconds (2500 … 60000).
    pub fn usec(&self) -> u32 {
        match self {
            FrameSize::Ms2_5 => 2_500,
            FrameSize::Ms5 => 5_000,
            FrameSize::Ms10 => 10_000,
            FrameSize::Ms20 => 20_000,
            FrameSize::Ms40 => 40_000,
            FrameSize::Ms60 => 60_000,
        }
    }

    /// Samples per channel in one frame at `rate` Hz (rounded down), e.g. 960 for 20 ms at 48 kHz.
    pub fn samples(&self, rate: u32) -> usize {
        (u64::from(rate) * u64::from(self.usec()) / 1_000_000) as usize
    }

    /// The frame size of exactly `usec` microseconds, if it is one of the six.
    pub fn from_usec(usec: u32) -> Option<FrameSize> {
        FrameSize::ALL.iter().copied().find(|f| f.usec() == usec)
    }

    /// Canonical text in milliseconds: `"2.5"`, `"5"`, … `"60"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FrameSize::Ms2_5 => "2.5",
            FrameSize::Ms5 => "5",
            FrameSize::Ms10 => "10",
            FrameSize::Ms20 => "20",
            FrameSize::Ms40 => "40",
            FrameSize::Ms60 => "60",
        }
    }

    /// Parses the millisecond text (an optional `ms` suffix is tolerated).
    /// Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<FrameSize> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix("ms").unwrap_or(&t).trim();
        FrameSize::ALL.iter().copied().find(|f| f.as_str() == t)
    }
}

impl fmt::Display for FrameSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper limit of the coded audio bandwidth (`compression.opus.max_bandwidth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MaxBandwidth {
    /// 4 kHz
    Narrowband,
    /// 6 kHz
    Mediumband,
    /// 8 kHz
    Wideband,
    /// 12 kHz
    Superwideband,
    /// 20 kHz (default)
    #[default]
    Fullband,
}

impl MaxBandwidth {
    const ALL: [MaxBandwidth; 5] = [
        MaxBandwidth::Narrowband,
        MaxBandwidth::Mediumband,
        MaxBandwidth::Wideband,
        MaxBandwidth::Superwideband,
        MaxBandwidth::Fullband,
    ];
    /// Canonical text: `narrowband`, `mediumband`, `wideband`, `superwideband`, `fullband`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MaxBandwidth::Narrowband => "narrowband",
            MaxBandwidth::Mediumband => "mediumband",
            MaxBandwidth::Wideband => "wideband",
            MaxBandwidth::Superwideband => "superwideband",
            MaxBandwidth::Fullband => "fullband",
        }
    }
    /// Parses the canonical text, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL.iter().copied().find(|v| v.as_str() == t)
    }
}

/// Signal type hint (`compression.opus.signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Signal {
    /// Let the encoder decide (default).
    #[default]
    Auto,
    /// Speech.
    Voice,
    /// Music.
    Music,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Auto, Signal::Voice, Signal::Music];
    /// Canonical text: `auto`, `voice`, `music`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Signal::Auto => "auto",
            Signal::Voice => "voice",
            Signal::Music => "music",
        }
    }
    /// Parses the canonical text, case-insensitive.
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim().to_ascii_lowercase();
        Self::ALL.iter().copied().find(|v| v.as_str() == t)
    }
}

/// Opus application mode (`compression.opus.application`). Changing it on a live encoder
/// recreates the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Application {
    /// `OPUS_APPLICATION_VOIP`
    Voip,
    /// `OPUS_APPLICATION_AUDIO` (default)
    #[default]
    Audio,
    /// `OPUS_APPLICATION_RESTRICTED_LOWDELAY`
    LowDelay,
}

impl Application {
    const ALL: [Application; 3] = [Application::Voip, Application::Audio, Application::LowDelay];
    /// Canonical text: `voip`, `audio`, `lowdelay`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Application::Voip => "voip",
            Application::Audio => "audio",
            Application::LowDelay => "lowdelay",
        }
    }
    /// Parses the canonical text, case-insensitive (`restricted_lowdelay` and
    /// `low-delay` are accepted as `lowdelay`).
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim().to_ascii_lowercase();
        if t == "restricted_lowdelay" || t == "low-delay" || t == "low_delay" {
            return Some(Application::LowDelay);
        }
        Self::ALL.iter().copied().find(|v| v.as_str() == t)
    }
}

/// Property key of the bitrate knob.
pub const KEY_BITRATE: &str = "compression.bitrate";
/// Property key of the frame size knob.
pub const KEY_FRAME_SIZE: &str = "compression.frame_size";
/// Property key of the complexity knob.
pub const KEY_COMPLEXITY: &str = "compression.opus.complexity";
/// Property key of the maximum bandwidth knob.
pub const KEY_MAX_BANDWIDTH: &str = "compression.opus.max_bandwidth";
/// Property key of the signal type knob.
pub const KEY_SIGNAL: &str = "compression.opus.signal";
/// Property key of the VBR knob.
pub const KEY_VBR: &str = "compression.opus.vbr";
/// Property key of the constrained-VBR knob.
pub const KEY_VBR_CONSTRAINT: &str = "compression.opus.vbr_constraint";
/// Property key of the application knob.
pub const KEY_APPLICATION: &str = "compression.opus.application";
/// Property key of the LSB depth knob.
pub const KEY_LSB_DEPTH: &str = "compression.opus.lsb_depth";
/// Property key of the DTX knob.
pub const KEY_DTX: &str = "compression.opus.dtx";
/// Property key of the in-band FEC knob.
pub const KEY_FEC: &str = "compression.opus.fec";
/// Property key of the expected packet loss knob.
pub const KEY_PACKET_LOSS: &str = "compression.opus.packet_loss";

/// The property keys of all Opus knobs (the QVD patch's names plus `fec` and `packet_loss`),
/// in the order [`OpusKnobs::properties`] lists them.
pub const KNOB_KEYS: [&str; 12] = [
    KEY_BITRATE,
    KEY_FRAME_SIZE,
    KEY_COMPLEXITY,
    KEY_MAX_BANDWIDTH,
    KEY_SIGNAL,
    KEY_VBR,
    KEY_VBR_CONSTRAINT,
    KEY_APPLICATION,
    KEY_LSB_DEPTH,
    KEY_DTX,
    KEY_FEC,
    KEY_PACKET_LOSS,
];

/// Lowest accepted bitrate, bit/s.
pub const BITRATE_MIN: i32 = 6_000;
/// Highest accepted bitrate, bit/s.
pub const BITRATE_MAX: i32 = 510_000;

/// Every Opus encoder knob with its effective value. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusKnobs {
    /// Target bitrate in bit/s, 6000–510000; default 64000. (`compression.bitrate`)
    pub bitrate: i32,
    /// Frame duration; default 20 ms. (`compression.frame_size`)
    pub frame_size: FrameSize,
    /// Encoder complexity 0–10; default 10. (`compression.opus.complexity`)
    pub complexity: u8,
    /// Maximum coded bandwidth; default fullband. (`compression.opus.max_bandwidth`)
    pub max_bandwidth: MaxBandwidth,
    /// Signal type hint; default auto. (`compression.opus.signal`)
    pub signal: Signal,
    /// Variable bitrate; default true. (`compression.opus.vbr`)
    pub vbr: bool,
    /// Constrained VBR; default false: unconstrained VBR, as opusenc (libopus's own API
    /// default is constrained; on speech at 64 kbit/s it scored 4.02 PESQ-WB against 4.40,
    /// docs/benchmarks.md). (`compression.opus.vbr_constraint`)
    pub vbr_constraint: bool,
    /// Application mode; default audio. (`compression.opus.application`)
    pub application: Application,
    /// Depth of the input signal in bits, 8–24; default 16. (`compression.opus.lsb_depth`)
    pub lsb_depth: u8,
    /// Discontinuous transmission; default false. (`compression.opus.dtx`)
    pub dtx: bool,
    /// In-band forward error correction; default false. (`compression.opus.fec`)
    pub fec: bool,
    /// Expected packet loss in percent, 0–100; default 0. (`compression.opus.packet_loss`)
    pub packet_loss: u8,
}

impl Default for OpusKnobs {
    fn default() -> Self {
        OpusKnobs {
            bitrate: 64_000,
            frame_size: FrameSize::Ms20,
            complexity: 10,
            max_bandwidth: MaxBandwidth::Fullband,
            signal: Signal::Auto,
            vbr: true,
            vbr_constraint: false,
            application: Application::Audio,
            lsb_depth: 16,
            dtx: false,
            fec: false,
            packet_loss: 0,
        }
    }
}

fn parse_int_in<T>(key: &str, value: &str, lo: T, hi: T) -> Result<T, ParamError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    let accepted = || format!("an integer from {lo} to {hi}");
    match value.trim().parse::<T>() {
        Ok(v) if v >= lo && v <= hi => Ok(v),
        _ => Err(ParamError::new(key, value, accepted())),
    }
}

fn parse_bitrate(value: &str) -> Result<i32, ParamError> {
    let err = || {
        ParamError::new(
            KEY_BITRATE,
            value,
            format!("an integer from {BITRATE_MIN} to {BITRATE_MAX}, or kbit/s with a k suffix such as 64k"),
        )
    };
    let t = value.trim().to_ascii_lowercase();
    let v: i64 = if let Some(k) = t.strip_suffix('k') {
        k.trim()
            .parse::<i64>()
            .map_err(|_| err())?
            .saturating_mul(1000)
    } else {
        t.parse::<i64>().map_err(|_| err())?
    };
    if v < i64::from(BITRATE_MIN) || v > i64::from(BITRATE_MAX) {
        return Err(err());
    }
    i32::try_from(v).map_err(|_| err())
}

fn parse_bool_key(key: &str, value: &str) -> Result<bool, ParamError> {
    parse_bool(value).ok_or_else(|| {
        ParamError::new(
            key,
            value,
            "a boolean: 1/0, yes/no, y/n, true/false, on/off",
        )
    })
}

impl OpusKnobs {
    /// Sets the knob named by `key` (one of [`KNOB_KEYS`]) from its text.
    ///
    /// On error `self` is unchanged and the error names the key, the value and the
    /// accepted range or words. An unknown key is an error too.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        match key {
            KEY_BITRATE => self.bitrate = parse_bitrate(value)?,
            KEY_FRAME_SIZE => {
                self.frame_size = FrameSize::parse(value).ok_or_else(|| {
                    ParamError::new(key, value, "milliseconds: one of 2.5, 5, 10, 20, 40, 60")
                })?
            }
            KEY_COMPLEXITY => self.complexity = parse_int_in(key, value, 0u8, 10u8)?,
            KEY_MAX_BANDWIDTH => {
                self.max_bandwidth = MaxBandwidth::parse(value).ok_or_else(|| {
                    ParamError::new(
                        key,
                        value,
                        "one of narrowband, mediumband, wideband, superwideband, fullband",
                    )
                })?
            }
            KEY_SIGNAL => {
                self.signal = Signal::parse(value)
                    .ok_or_else(|| ParamError::new(key, value, "one of auto, voice, music"))?
            }
            KEY_VBR => self.vbr = parse_bool_key(key, value)?,
            KEY_VBR_CONSTRAINT => self.vbr_constraint = parse_bool_key(key, value)?,
            KEY_APPLICATION => {
                self.application = Application::parse(value)
                    .ok_or_else(|| ParamError::new(key, value, "one of voip, audio, lowdelay"))?
            }
            KEY_LSB_DEPTH => self.lsb_depth = parse_int_in(key, value, 8u8, 24u8)?,
            KEY_DTX => self.dtx = parse_bool_key(key, value)?,
            KEY_FEC => self.fec = parse_bool_key(key, value)?,
            KEY_PACKET_LOSS => self.packet_loss = parse_int_in(key, value, 0u8, 100u8)?,
            _ => {
                return Err(ParamError::new(
                    key,
                    value,
                    format!("unknown key; known keys: {}", KNOB_KEYS.join(", ")),
                ))
            }
        }
        Ok(())
    }

    /// The effective value of the knob `key` in canonical text (text that [`set`](Self::set)
    /// accepts back), or `None` for an unknown key.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            KEY_BITRATE => self.bitrate.to_string(),
            KEY_FRAME_SIZE => self.frame_size.as_str().to_string(),
            KEY_COMPLEXITY => self.complexity.to_string(),
            KEY_MAX_BANDWIDTH => self.max_bandwidth.as_str().to_string(),
            KEY_SIGNAL => self.signal.as_str().to_string(),
            KEY_VBR => bool_text(self.vbr).to_string(),
            KEY_VBR_CONSTRAINT => bool_text(self.vbr_constraint).to_string(),
            KEY_APPLICATION => self.application.as_str().to_string(),
            KEY_LSB_DEPTH => self.lsb_depth.to_string(),
            KEY_DTX => bool_text(self.dtx).to_string(),
            KEY_FEC => bool_text(self.fec).to_string(),
            KEY_PACKET_LOSS => self.packet_loss.to_string(),
            _ => return None,
        })
    }

    /// Every knob as `(key, canonical value)`, in [`KNOB_KEYS`] order.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        KNOB_KEYS
            .iter()
            .map(|k| (*k, self.get(k).unwrap_or_default()))
            .collect()
    }

    /// Checks that every numeric field is within its documented range (the fields are
    /// public, so a struct built by hand may hold anything). The error names the key.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(BITRATE_MIN..=BITRATE_MAX).contains(&self.bitrate) {
            return Err(ParamError::new(
                KEY_BITRATE,
                self.bitrate.to_string(),
                format!("an integer from {BITRATE_MIN} to {BITRATE_MAX}"),
            ));
        }
        let ranges = [
            (KEY_COMPLEXITY, self.complexity, 0u8, 10u8),
            (KEY_LSB_DEPTH, self.lsb_depth, 8, 24),
            (KEY_PACKET_LOSS, self.packet_loss, 0, 100),
        ];
        for (key, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return Err(ParamError::new(
                    key,
                    v.to_string(),
                    format!("an integer from {lo} to {hi}"),
                ));
            }
        }
        Ok(())
    }

    /// Applies several `(key, value)` pairs atomically: either all are valid and applied,
    /// or `self` is unchanged and the first error is returned.
    pub fn set_all<'a, I>(&mut self, pairs: I) -> Result<(), ParamError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut tmp = *self;
        for (k, v) in pairs {
            tmp.set(k, v)?;
        }
        *self = tmp;
        Ok(())
    }
}

/// Default TCP port of the receiver (`module-opus-protocol-tcp`).
pub const DEFAULT_PORT: u16 = 4715;

/// Where a tunnel connects to (the `server=` argument).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// TCP host (name, IPv4 or IPv6 literal without brackets) and port.
    Tcp {
        /// Host name or address literal (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix socket path.
    Unix(PathBuf),
    /// Plain RTP (RFC 7587) over UDP to this host and port, with no handshake
    /// (`server=rtp://HOST:PORT`; the tunnel sink only).
    Rtp {
        /// Host name or address literal (IPv6 without brackets).
        host: String,
        /// UDP port.
        port: u16,
    },
}

impl ServerAddr {
    /// Plain RTP (`rtp://`): no connection, no handshake.
    pub fn is_rtp(&self) -> bool {
        matches!(self, ServerAddr::Rtp { .. })
    }
}

impl fmt::Display for ServerAddr {
    /// Canonical text: `tcp:HOST:PORT` (`tcp:[::1]:4715` for IPv6) or `unix:PATH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            ServerAddr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ServerAddr::Rtp { host, port } if host.contains(':') => {
                write!(f, "rtp://[{host}]:{port}")
            }
            ServerAddr::Rtp { host, port } => write!(f, "rtp://{host}:{port}"),
        }
    }
}

const SERVER_FORMS: &str =
    "tcp:HOST:PORT, tcp:HOST, HOST:PORT, HOST, [IPv6]:PORT, unix:PATH or rtp://HOST:PORT";

/// Parses a `server=` value: `tcp:HOST:PORT`, `tcp:HOST`, `HOST:PORT`, `HOST`,
/// `[::1]:4715`, `tcp:[::1]:4715`, `unix:PATH` or an absolute path. `tcp4:`/`tcp6:` are
/// accepted as `tcp:`. A bare IPv6 literal (several colons, no brackets) is taken as a
/// host without port. A missing port becomes `default_port`. `rtp://HOST:PORT` (or
/// `rtp://[IPv6]:PORT`) is plain RTP, whose port must be given.
pub fn parse_server(s: &str, default_port: u16) -> Result<ServerAddr, ParamError> {
    let err = || ParamError::new("server", s, SERVER_FORMS);
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("rtp://") {
        if rest.starts_with("tcp") || rest.starts_with("unix:") || rest.starts_with('/') {
            return Err(err());
        }
        return match parse_server(rest, 0) {
            Ok(ServerAddr::Tcp { host, port }) if port != 0 => Ok(ServerAddr::Rtp { host, port }),
            _ => Err(err()),
        };
    }
    if let Some(path) = t.strip_prefix("unix:") {
        if path.is_empty() || path.contains('\0') {
            return Err(err());
        }
        return Ok(ServerAddr::Unix(PathBuf::from(path)));
    }
    if t.starts_with('/') {
        return Ok(ServerAddr::Unix(PathBuf::from(t)));
    }
    let rest = t
        .strip_prefix("tcp:")
        .or_else(|| t.strip_prefix("tcp4:"))
        .or_else(|| t.strip_prefix("tcp6:"))
        .unwrap_or(t);
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']').ok_or_else(err)?;
        let host = &inner[..close];
        let after = &inner[close + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':').ok_or_else(err)?)
        };
        if !host.contains(':') {
            return Err(err());
        }
        (host, port)
    } else {
        match rest.matches(':').count() {
            0 => (rest, None),
            1 => {
                let (h, p) = rest.split_once(':').ok_or_else(err)?;
                (h, Some(p))
            }
            _ => (rest, None), // bare IPv6 literal
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '[' || c == ']')
    {
        return Err(err());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(v) if v != 0 => v,
            _ => return Err(err()),
        },
    };
    Ok(ServerAddr::Tcp {
        host: host.to_string(),
        port,
    })
}

impl FromStr for ServerAddr {
    type Err = ParamError;
    /// [`parse_server`] with [`DEFAULT_PORT`].
    fn from_str(s: &str) -> Result<Self, ParamError> {
        parse_server(s, DEFAULT_PORT)
    }
}

/// Reconnect delays: 500 ms, 1 s, 2 s, 4 s, 8 s, then 10 s for ever, until [`reset`](Self::reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// First delay.
    pub const FIRST: Duration = Duration::from_millis(500);
    /// Largest delay.
    pub const MAX: Duration = Duration::from_secs(10);

    /// A fresh back-off whose first delay is [`Backoff::FIRST`].
    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay to wait before the next attempt; each call doubles the following one,
    /// capped at [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// Back to the first delay (call after a successful connection).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parse() {
        assert_eq!(Compression::parse("opus").unwrap(), Compression::Opus);
        assert_eq!(Compression::parse("NONE").unwrap(), Compression::None);
        assert_eq!(Compression::parse("pcm").unwrap(), Compression::None);
        assert_eq!(Compression::None.as_str(), "none");
        let e = Compression::parse("mp3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "compression: \"mp3\" is not accepted (one of opus, none, pcm)"
        );
    }

    #[test]
    fn frame_size() {
        assert_eq!(FrameSize::default(), FrameSize::Ms20);
        assert_eq!(FrameSize::Ms20.samples(48000), 960);
        assert_eq!(FrameSize::Ms2_5.samples(48000), 120);
        assert_eq!(FrameSize::Ms2_5.samples(8000), 20);
        assert_eq!(FrameSize::Ms60.usec(), 60_000);
        assert_eq!(FrameSize::parse("2.5"), Some(FrameSize::Ms2_5));
        assert_eq!(FrameSize::parse("40ms"), Some(FrameSize::Ms40));
        assert_eq!(FrameSize::parse("30"), None);
        assert_eq!(FrameSize::from_usec(10_000), Some(FrameSize::Ms10));
        assert_eq!(FrameSize::from_usec(10_001), None);
        for f in FrameSize::ALL {
            assert_eq!(FrameSize::parse(f.as_str()), Some(f));
        }
    }

    #[test]
    fn knob_defaults() {
        let k = OpusKnobs::default();
        let props = k.properties();
        let expect = [
            ("compression.bitrate", "64000"),
            ("compression.frame_size", "20"),
            ("compression.opus.complexity", "10"),
            ("compression.opus.max_bandwidth", "fullband"),
            ("compression.opus.signal", "auto"),
            ("compression.opus.vbr", "true"),
            ("compression.opus.vbr_constraint", "false"),
            ("compression.opus.application", "audio"),
            ("compression.opus.lsb_depth", "16"),
            ("compression.opus.dtx", "false"),
            ("compression.opus.fec", "false"),
            ("compression.opus.packet_loss", "0"),
        ];
        assert_eq!(props.len(), 12);
        for ((k1, v1), (k2, v2)) in props.iter().zip(expect.iter()) {
            assert_eq!(k1, k2);
            assert_eq!(v1, v2);
        }
    }

    #[test]
    fn knob_set_ok() {
        let mut k = OpusKnobs::default();
        k.set("compression.bitrate", "32k").unwrap();
        assert_eq!(k.bitrate, 32000);
        k.set("compression.bitrate", " 128000 ").unwrap();
        assert_eq!(k.bitrate, 128000);
        k.set("compression.frame_size", "10").unwrap();
        assert_eq!(k.frame_size, FrameSize::Ms10);
        k.set("compression.opus.complexity", "0").unwrap();
        assert_eq!(k.complexity, 0);
        k.set("compression.opus.max_bandwidth", "WideBand").unwrap();
        assert_eq!(k.max_bandwidth, MaxBandwidth::Wideband);
        k.set("compression.opus.signal", "voice").unwrap();
        assert_eq!(k.signal, Signal::Voice);
        k.set("compression.opus.vbr", "off").unwrap();
        assert!(!k.vbr);
        k.set("compression.opus.vbr_constraint", "Yes").unwrap();
        assert!(k.vbr_constraint);
        k.set("compression.opus.application", "lowdelay").unwrap();
        assert_eq!(k.application, Application::LowDelay);
        k.set("compression.opus.lsb_depth", "24").unwrap();
        assert_eq!(k.lsb_depth, 24);
        k.set("compression.opus.dtx", "1").unwrap();
        assert!(k.dtx);
        k.set("compression.opus.fec", "TRUE").unwrap();
        assert!(k.fec);
        k.set("compression.opus.packet_loss", "100").unwrap();
        assert_eq!(k.packet_loss, 100);
        // Every canonical value is accepted back and gives the same knobs.
        let mut k2 = OpusKnobs::default();
        for (key, v) in k.properties() {
            k2.set(key, &v).unwrap();
        }
        assert_eq!(k, k2);
    }

    #[test]
    fn knob_set_errors_leave_unchanged() {
        let mut k = OpusKnobs::default();
        let before = k;
        let e = k.set("compression.bitrate", "abc").unwrap_err();
        assert!(e.to_string().starts_with(
            "compression.bitrate: \"abc\" is not accepted (an integer from 6000 to 510000"
        ));
        let bad = [
            ("compression.bitrate", "5999"),
            ("compression.bitrate", "510001"),
            ("compression.bitrate", "-64k"),
            ("compression.bitrate", "99999999999999999999k"),
            ("compression.frame_size", "30"),
            ("compression.opus.complexity", "11"),
            ("compression.opus.complexity", "-1"),
            ("compression.opus.max_bandwidth", "ultra"),
            ("compression.opus.signal", "noise"),
            ("compression.opus.vbr", "maybe"),
            ("compression.opus.application", "game"),
            ("compression.opus.lsb_depth", "7"),
            ("compression.opus.lsb_depth", "25"),
            ("compression.opus.packet_loss", "101"),
            ("compression.opus.nope", "1"),
        ];
        for (key, v) in bad {
            let e = k.set(key, v).unwrap_err();
            assert_eq!(e.key, key);
            assert_eq!(e.value, v);
            assert!(e.to_string().contains(key));
            assert_eq!(k, before, "{key}={v} changed the knobs");
        }
        assert_eq!(
            k.set("compression.opus.complexity", "11")
                .unwrap_err()
                .to_string(),
            "compression.opus.complexity: \"11\" is not accepted (an integer from 0 to 10)"
        );
        // set_all is atomic.
        let e = k
            .set_all([
                ("compression.bitrate", "32000"),
                ("compression.opus.dtx", "perhaps"),
            ])
            .unwrap_err();
        assert_eq!(e.key, "compression.opus.dtx");
        assert_eq!(k, before);
        assert_eq!(k.get("nope"), None);
        assert!(k.validate().is_ok());
        let mut k3 = k;
        k3.lsb_depth = 30;
        assert_eq!(k3.validate().unwrap_err().key, "compression.opus.lsb_depth");
        k3 = k;
        k3.bitrate = 1;
        assert_eq!(k3.validate().unwrap_err().key, "compression.bitrate");
    }

    #[test]
    fn bools() {
        for t in ["1", "yes", "Y", "true", "On", " on "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "no", "N", "FALSE", "off"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool(""), None);
        assert_eq!(parse_bool("2"), None);
    }

    fn tcp(h: &str, p: u16) -> ServerAddr {
        ServerAddr::Tcp {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn rtp_servers() {
        let rtp = |h: &str, p: u16| ServerAddr::Rtp {
            host: h.into(),
            port: p,
        };
        let d = DEFAULT_PORT;
        let a = parse_server("rtp://127.0.0.1:5004", d).unwrap();
        assert_eq!(a, rtp("127.0.0.1", 5004));
        assert!(a.is_rtp());
        assert_eq!(a.to_string(), "rtp://127.0.0.1:5004");
        let a = parse_server(" rtp://[ff02::1]:6000 ", d).unwrap();
        assert_eq!(a, rtp("ff02::1", 6000));
        assert_eq!(a.to_string(), "rtp://[ff02::1]:6000");
        assert_eq!(parse_server(&a.to_string(), d).unwrap(), a);
        assert_eq!(parse_server("rtp://h:1", d).unwrap(), rtp("h", 1));
        for bad in [
            "rtp://",
            "rtp://host",
            "rtp://host:0",
            "rtp://host:x",
            "rtp://unix:/x",
            "rtp:///x",
            "rtp://tcp:h:1",
            "rtp://[::1]",
        ] {
            let e = parse_server(bad, d).unwrap_err();
            assert!(e.to_string().contains("rtp://HOST:PORT"), "{bad}: {e}");
        }
        assert!(!parse_server("h:1", d).unwrap().is_rtp());
    }

    #[test]
    fn servers() {
        let d = DEFAULT_PORT;
        assert_eq!(parse_server("tcp:host:1234", d).unwrap(), tcp("host", 1234));
        assert_eq!(parse_server("tcp:host", d).unwrap(), tcp("host", 4715));
        assert_eq!(parse_server("10.0.0.1:99", d).unwrap(), tcp("10.0.0.1", 99));
        assert_eq!(parse_server("host", 5).unwrap(), tcp("host", 5));
        assert_eq!(parse_server("[::1]:4715", d).unwrap(), tcp("::1", 4715));
        assert_eq!(parse_server("tcp:[::1]:4716", d).unwrap(), tcp("::1", 4716));
        assert_eq!(parse_server("tcp:[::1]", d).unwrap(), tcp("::1", 4715));
        assert_eq!(
            parse_server("tcp6:[fe80::1]:1", d).unwrap(),
            tcp("fe80::1", 1)
        );
        assert_eq!(parse_server("::1", d).unwrap(), tcp("::1", 4715));
        assert_eq!(
            parse_server("unix:/run/x.sock", d).unwrap(),
            ServerAddr::Unix(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse_server("/run/x.sock", d).unwrap(),
            ServerAddr::Unix(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse_server("tcp:host:1234", d).unwrap().to_string(),
            "tcp:host:1234"
        );
        assert_eq!(
            parse_server("[::1]", d).unwrap().to_string(),
            "tcp:[::1]:4715"
        );
        assert_eq!(
            parse_server("unix:/a b", d).unwrap().to_string(),
            "unix:/a b"
        );
        for bad in [
            "",
            "tcp:",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[::1]x",
            "[::1]:",
            "unix:",
            ":80",
            "a b:1",
            "[host]:1",
        ] {
            let e = parse_server(bad, d).unwrap_err();
            assert_eq!(e.key, "server", "{bad}");
        }
        let s: ServerAddr = "h:1".parse().unwrap();
        assert_eq!(s, tcp("h", 1));
    }

    #[test]
    fn backoff() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
