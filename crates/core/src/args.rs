//! The arguments the tunnel modules share (`server`, `compression`, the Opus knobs, sample
//! spec numbers, `latency_msec`, `clock_skew_ppm`, `cookie`), parsed from any key → value
//! lookup (PulseAudio's modargs, PipeWire's properties), and live knob updates checked the
//! same way. Every error names the key and what is accepted.
use crate::argtable::{self, Arg};
use crate::auth::Cookie;
use crate::codec::{self, Encoder, StreamFormat};
use crate::params::{self, Compression, OpusKnobs, ServerAddr, Signal, KNOB_KEYS};
use crate::surround;

/// What a tunnel module was asked for.
#[derive(Debug)]
pub struct TunnelArgs {
    /// The far end (`server`).
    pub addr: ServerAddr,
    /// `compression`.
    pub compression: Compression,
    /// The knobs, defaults overridden by the arguments.
    pub knobs: OpusKnobs,
    /// `format` (unchecked here: the daemon knows its format names), or the default for
    /// the compression.
    pub format: String,
    /// `rate`.
    pub rate: u32,
    /// `channels`.
    pub channels: u8,
    /// `latency_msec`: the local device's block.
    pub latency_msec: u32,
    /// `clock_skew_ppm` (a test aid).
    pub skew_ppm: f64,
    /// `cookie`, loaded.
    pub cookie: Option<Cookie>,
    /// `encryption`.
    pub encryption: crate::secure::Mode,
    /// `transport`.
    pub transport: crate::udp::Transport,
    /// `server=rtp://…`: plain RTP's `rtp_payload` and `sdp_file`.
    pub rtp: Option<crate::plain_rtp::SendConfig>,
}

/// Defaults that differ between the play and the record tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// The module's argument table (ranges and numeric defaults such as `channels`).
    pub table: &'static [Arg],
    /// Knobs when not given.
    pub knobs: OpusKnobs,
}

/// Microphone defaults (the record tunnels): 32 kbit/s — ample for speech — and libopus's own
/// choice between its speech and music coding (`signal=auto`): speech is coded as speech
/// (SILK, with in-band FEC), while a tone or music is not held to the speech mode, whose
/// concealment of a lost packet breaks a tone far worse (`scripts/opus_loss_tone.py`).
/// Music-grade Opus at 64k is one argument away.
pub fn voice_knobs() -> OpusKnobs {
    OpusKnobs {
        bitrate: 32_000,
        signal: Signal::Auto,
        ..OpusKnobs::default()
    }
}

/// `compression`: Opus unless given.
pub fn parse_compression(value: Option<&str>) -> Result<Compression, String> {
    match value {
        None => Ok(Compression::Opus),
        Some(v) => Compression::parse(v).map_err(|e| e.to_string()),
    }
}

/// The knobs: `defaults`, overridden by the keys given.
pub fn parse_knobs(
    get: &dyn Fn(&str) -> Option<String>,
    defaults: OpusKnobs,
) -> Result<OpusKnobs, String> {
    let mut knobs = defaults;
    for key in KNOB_KEYS {
        if let Some(v) = get(key) {
            knobs.set(key, &v).map_err(|e| e.to_string())?;
        }
    }
    Ok(knobs)
}

/// Without a `compression.bitrate` argument, the default bitrate for `channels`
/// ([`surround::default_bitrate`]: `base` for 1–2 channels, 32 kbit/s a channel for 3–8).
pub fn scale_bitrate(
    knobs: &mut OpusKnobs,
    get: &dyn Fn(&str) -> Option<String>,
    channels: u8,
    base: i32,
) {
    if get(params::KEY_BITRATE).is_none() {
        knobs.bitrate = surround::default_bitrate(channels, base);
    }
}

/// A cookie file named by the argument `key`, loaded (`None` when not given).
pub fn load_cookie(key: &str, path: Option<&str>) -> Result<Option<Cookie>, String> {
    path.map(|p| Cookie::load(std::path::Path::new(p)).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// Load fails on what the encoder would refuse, not the worker later.
pub fn check_encoder(
    compression: Compression,
    fmt: StreamFormat,
    knobs: &OpusKnobs,
) -> Result<(), String> {
    Encoder::new(compression, fmt, knobs)
        .map(drop)
        .map_err(|e| format!("codec: {e}"))
}

/// Parses the shared tunnel arguments and checks that the encoder accepts the combination.
pub fn parse_tunnel_args(
    get: &dyn Fn(&str) -> Option<String>,
    d: &Defaults,
) -> Result<TunnelArgs, String> {
    let server = get("server").ok_or_else(|| {
        "server: missing; give the far end's address, e.g. server=tcp:192.168.1.10:4715".to_string()
    })?;
    let addr = params::parse_server(&server, params::DEFAULT_PORT).map_err(|e| e.to_string())?;
    let compression = parse_compression(get("compression").as_deref())?;
    let mut knobs = parse_knobs(get, d.knobs)?;
    let format = get("format").unwrap_or_else(|| {
        match compression {
            Compression::Opus => "float32le",
            Compression::None => "s16le",
        }
        .to_string()
    });
    let rate = argtable::int::<u32>(d.table, "rate", get("rate").as_deref())?;
    let channels = argtable::int::<u8>(d.table, "channels", get("channels").as_deref())?;
    let fmt = StreamFormat { rate, channels };
    codec::validate(compression, &fmt).map_err(|e| e.to_string())?;
    scale_bitrate(&mut knobs, get, channels, d.knobs.bitrate);
    let latency_msec =
        argtable::int::<u32>(d.table, "latency_msec", get("latency_msec").as_deref())?;
    let skew_ppm = match get("clock_skew_ppm") {
        None => 0.0,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(p) if (-100_000.0..=100_000.0).contains(&p) => p,
            _ => {
                return Err(format!(
                    "clock_skew_ppm: {v:?} is not accepted (a number from -100000 to 100000)"
                ))
            }
        },
    };
    let cookie = load_cookie("cookie", get("cookie").as_deref())?;
    let encryption = crate::secure::Mode::parse("encryption", get("encryption").as_deref())?;
    let transport = crate::udp::Transport::parse("transport", get("transport").as_deref())?;
    udp_knobs(transport, &mut knobs, get);
    let rtp = parse_plain_rtp(get, d, &addr, compression, channels, encryption)?;
    check_encoder(compression, fmt, &knobs)?;
    Ok(TunnelArgs {
        addr,
        compression,
        knobs,
        format,
        rate,
        channels,
        latency_msec,
        skew_ppm,
        cookie,
        encryption,
        transport,
        rtp,
    })
}

/// `server=rtp://HOST:PORT` (plain RTP, in modules whose table has `rtp_payload`): Opus,
/// 1–2 channels, never encrypted; `rtp_payload` and `sdp_file` only with it.
fn parse_plain_rtp(
    get: &dyn Fn(&str) -> Option<String>,
    d: &Defaults,
    addr: &ServerAddr,
    compression: Compression,
    channels: u8,
    encryption: crate::secure::Mode,
) -> Result<Option<crate::plain_rtp::SendConfig>, String> {
    let can = d.table.iter().any(|a| a.key == "rtp_payload");
    if !addr.is_rtp() {
        for key in ["rtp_payload", "sdp_file"] {
            if get(key).is_some() {
                return Err(format!(
                    "{key}: only with plain RTP (server=rtp://HOST:PORT); the server is {addr}"
                ));
            }
        }
        return Ok(None);
    }
    if !can {
        return Err(format!(
            "server: {addr}: plain RTP (rtp://) is sent by module-tunnel-sink-opus only; give \
             tcp:HOST:PORT"
        ));
    }
    if compression != Compression::Opus {
        return Err(
            "compression: plain RTP (server=rtp://) carries Opus only (RFC 7587); drop \
             compression=none"
                .into(),
        );
    }
    if channels > 2 {
        return Err(format!(
            "channels: plain RTP (server=rtp://) carries 1 or 2 channels (RFC 7587), not {channels}"
        ));
    }
    if encryption == crate::secure::Mode::Required {
        return Err(
            "encryption: required, but server=rtp:// sends plain RTP, which is always \
             cleartext and unauthenticated; use server=tcp:HOST:PORT to encrypt"
                .into(),
        );
    }
    let payload_type = argtable::int::<u8>(d.table, "rtp_payload", get("rtp_payload").as_deref())?;
    let sdp_file = get("sdp_file").map(std::path::PathBuf::from);
    Ok(Some(crate::plain_rtp::SendConfig {
        payload_type,
        sdp_file,
    }))
}

/// With `transport=udp`, Opus in-band FEC is on unless `compression.opus.fec` says otherwise
/// (the encoder's `packet_loss` then follows the receiver's loss reports), and frames are
/// 10 ms unless `compression.frame_size` says otherwise: UDP is chosen where latency matters,
/// and the frame is the largest term of it a setting can move (a packet's length is waited
/// for at both ends; over a 20 ms link with 0–5 ms jitter, 20 ms frames put render to render
/// at the 60 ms bound).
pub fn udp_knobs(
    transport: crate::udp::Transport,
    knobs: &mut OpusKnobs,
    get: &dyn Fn(&str) -> Option<String>,
) {
    if transport != crate::udp::Transport::Udp {
        return;
    }
    if get(crate::params::KEY_FEC).is_none() {
        knobs.fec = true;
    }
    if get(crate::params::KEY_FRAME_SIZE).is_none() {
        knobs.frame_size = crate::params::FrameSize::Ms10;
    }
}

/// PulseAudio's names of the receive buffer's target, minimum and maximum.
pub const PA_LATENCY_KEYS: [&str; 3] = [
    "target_latency_msec",
    "min_latency_msec",
    "max_latency_msec",
];
/// PipeWire's names of the receive buffer's target, minimum and maximum.
pub const PW_LATENCY_KEYS: [&str; 3] = [
    "sess.latency.msec",
    "sess.latency.min.msec",
    "sess.latency.max.msec",
];

/// A receive buffer's latency settings (`target_latency_msec`, `min_latency_msec`,
/// `max_latency_msec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBounds {
    /// The target, µs; 0 = `auto` (sized from what the engine measures).
    pub target_usec: u64,
    /// The least the target may be, µs.
    pub min_usec: u64,
    /// The most the target (and the buffered audio) may be, µs.
    pub max_usec: u64,
}

impl LatencyBounds {
    /// The latency to ask of the local device (its block, PulseAudio's requested latency or
    /// PipeWire's quantum): half a fixed target, or 5 ms with `auto` (half the minimum if that
    /// is more), within 5–100 ms.
    pub fn device_request_usec(&self) -> u64 {
        let want = if self.target_usec == 0 {
            self.min_usec / 2
        } else {
            self.target_usec / 2
        };
        want.clamp(5_000, 100_000)
    }
}

/// The default most a receiver's buffer holds (play tunnels and plain RTP), ms: its senders
/// are tunnel sinks, which send a block of at most 200 ms at a time, and RTP senders, which
/// send a packet at a time.
pub const PLAY_MAX_LATENCY_MSEC: u32 = 1000;
/// The default most a tunnel source's buffer holds, ms: the far end's source may post up to
/// 2 s at once (`module-sine-source` does; so do some USB, Bluetooth and virtual sources), and
/// a buffer that holds less cuts each block to the maximum and runs dry before the next.
pub const RECORD_MAX_LATENCY_MSEC: u32 = 2500;

/// A receive buffer's latency settings from `table`'s `keys`: the target (`auto` or ms), its
/// minimum and its maximum (at least the minimum and a fixed target; `default_max` ms unless
/// given); PulseAudio's [`PA_LATENCY_KEYS`] or PipeWire's [`PW_LATENCY_KEYS`].
pub fn parse_latency_bounds(
    table: &[Arg],
    get: &dyn Fn(&str) -> Option<String>,
    keys: [&str; 3],
    default_max: u32,
) -> Result<LatencyBounds, String> {
    let [target_key, min_key, max_key] = keys;
    let min = argtable::int::<u32>(table, min_key, get(min_key).as_deref())?;
    let target = match get(target_key) {
        None => 0,
        Some(v) if v.trim() == "auto" => 0,
        Some(v) => argtable::parse_int(target_key, Some(&v), 0u32, 1, 10_000)
            .map_err(|e| e.replace("(an integer", "(auto, or an integer"))?,
    };
    let floor = min.max(target).max(1);
    let max = argtable::parse_int(
        max_key,
        get(max_key).as_deref(),
        default_max.max(floor),
        floor,
        10_000,
    )?;
    Ok(LatencyBounds {
        target_usec: u64::from(target) * 1000,
        min_usec: u64::from(min) * 1000,
        max_usec: u64::from(max) * 1000,
    })
}

/// The effective value of every knob and of `compression`, as properties.
pub fn effective_properties(compression: Compression, knobs: &OpusKnobs) -> Vec<(String, String)> {
    let mut v = vec![("compression".to_string(), compression.as_str().to_string())];
    v.extend(
        knobs
            .properties()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    v
}

/// A tunnel device's description: `Opus tunnel to ADDR (REMOTE)` (`way`: `to` or `from`).
pub fn device_description(way: &str, addr: &ServerAddr, remote: Option<&str>) -> String {
    let remote = remote.map(|r| format!(" ({r})")).unwrap_or_default();
    format!("Opus tunnel {way} {addr}{remote}")
}

/// `opus 64000 bit/s, 20 ms frames` or `none`, for a log line.
pub fn codec_summary(compression: Compression, knobs: &OpusKnobs) -> String {
    match compression {
        Compression::Opus => format!(
            "{} {} bit/s, {} ms frames",
            compression.as_str(),
            knobs.bitrate,
            knobs.frame_size.as_str()
        ),
        Compression::None => compression.as_str().to_string(),
    }
}

/// The outcome of [`apply_knob_changes`].
#[derive(Debug)]
pub struct KnobUpdate {
    /// The knobs to use from now on.
    pub knobs: OpusKnobs,
    /// `key=value` of what changed (empty: nothing to do).
    pub changed: Vec<String>,
    /// One message per refused pair, naming the key and what is accepted.
    pub errors: Vec<String>,
}

/// Applies `key=value` pairs to `current` live: each knob is checked on its own and against
/// the encoder; `compression` cannot change while loaded; unknown keys are refused.
pub fn apply_knob_changes(
    current: OpusKnobs,
    compression: Compression,
    fmt: StreamFormat,
    pairs: &[(String, String)],
) -> KnobUpdate {
    let mut knobs = current;
    let mut errors = Vec::new();
    let mut changed = Vec::new();
    for (key, value) in pairs {
        if key == "compression" {
            if Compression::parse(value).ok() != Some(compression) {
                errors.push(format!(
                    "compression: {value:?} is not accepted (it cannot change while the module is \
                     loaded; it is {}: reload the module with compression={value} instead)",
                    compression.as_str()
                ));
            }
            continue;
        }
        if !KNOB_KEYS.contains(&key.as_str()) {
            errors.push(format!(
                "{key}: not a knob; accepted: compression, {}",
                KNOB_KEYS.join(", ")
            ));
            continue;
        }
        if knobs.get(key).as_deref() == Some(value.as_str()) {
            continue;
        }
        let mut trial = knobs;
        match trial.set(key, value) {
            Err(e) => errors.push(e.to_string()),
            Ok(()) => match Encoder::new(compression, fmt, &trial) {
                Ok(_) => {
                    knobs = trial;
                    changed.push(format!("{key}={}", knobs.get(key).unwrap_or_default()));
                }
                Err(e) => errors.push(format!("{key}: {value:?} is not accepted here: {e}")),
            },
        }
    }
    KnobUpdate {
        knobs,
        changed,
        errors,
    }
}

/// A device name from the far end's address: `<prefix>.<host>` (e.g. `tunnel-opus.desk7`),
/// characters other than letters, digits, `-` and `.` replaced by `_`.
pub fn default_device_name(prefix: &str, addr: &ServerAddr) -> String {
    let host = match addr {
        ServerAddr::Tcp { host, .. } | ServerAddr::Rtp { host, .. } => host.clone(),
        ServerAddr::Unix(p) => p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}.{clean}")
}

/// The object path of a tunnel device's message handler (`pactl send-message`):
/// `/opus_tunnel/<device name>`, characters PulseAudio does not allow in paths replaced by `_`.
pub fn message_path(device_name: &str) -> String {
    let clean: String = device_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/opus_tunnel/{clean}")
}

/// Answers a tunnel device's message: `get` lists `key=value` lines (what `get_all` returns),
/// `set "k=v k2=v2"` hands the pairs to `apply`, which returns the refusals (answered as one
/// error), else `ok`.
pub fn knob_message(
    message: &str,
    params: &str,
    get_all: impl FnOnce() -> Vec<(String, String)>,
    apply: impl FnOnce(&[(String, String)]) -> Vec<String>,
) -> Result<String, String> {
    match message {
        "get" => Ok(get_all()
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()),
        "set" => {
            let mut pairs = Vec::new();
            for word in params.split_whitespace() {
                match word.split_once('=') {
                    Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
                    None => return Err(format!("{word:?}: expected key=value")),
                }
            }
            let errors = apply(&pairs);
            if errors.is_empty() {
                Ok("ok".into())
            } else {
                Err(errors.join("; "))
            }
        }
        other => Err(format!("unknown message {other:?}; accepted: get, set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn defaults() -> Defaults {
        Defaults {
            table: argtable::TUNNEL_SINK,
            knobs: OpusKnobs::default(),
        }
    }

    #[test]
    fn surround_default_bitrate() {
        let a =
            parse_tunnel_args(&getter(&[("server", "h"), ("channels", "6")]), &defaults()).unwrap();
        assert_eq!(a.knobs.bitrate, 192_000);
        let a =
            parse_tunnel_args(&getter(&[("server", "h"), ("channels", "8")]), &defaults()).unwrap();
        assert_eq!(a.knobs.bitrate, 256_000);
        let a = parse_tunnel_args(
            &getter(&[
                ("server", "h"),
                ("channels", "8"),
                ("compression.bitrate", "96k"),
            ]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(a.knobs.bitrate, 96_000);
        let a =
            parse_tunnel_args(&getter(&[("server", "h"), ("channels", "1")]), &defaults()).unwrap();
        assert_eq!(a.knobs.bitrate, 64_000);
        assert!(
            parse_tunnel_args(&getter(&[("server", "h"), ("channels", "9")]), &defaults()).is_err()
        );
    }

    #[test]
    fn udp_defaults_fec_and_10ms_frames_unless_given() {
        use crate::params::FrameSize;
        let a = parse_tunnel_args(&getter(&[("server", "h")]), &defaults()).unwrap();
        assert_eq!((a.knobs.frame_size, a.knobs.fec), (FrameSize::Ms20, false));
        let a = parse_tunnel_args(
            &getter(&[("server", "h"), ("transport", "udp")]),
            &defaults(),
        )
        .unwrap();
        assert_eq!((a.knobs.frame_size, a.knobs.fec), (FrameSize::Ms10, true));
        let a = parse_tunnel_args(
            &getter(&[
                ("server", "h"),
                ("transport", "udp"),
                ("compression.frame_size", "20"),
                ("compression.opus.fec", "0"),
            ]),
            &defaults(),
        )
        .unwrap();
        assert_eq!((a.knobs.frame_size, a.knobs.fec), (FrameSize::Ms20, false));
    }

    #[test]
    fn plain_rtp_arguments() {
        let a =
            parse_tunnel_args(&getter(&[("server", "rtp://127.0.0.1:5004")]), &defaults()).unwrap();
        assert!(a.addr.is_rtp());
        let rtp = a.rtp.unwrap();
        assert_eq!(rtp.payload_type, 96);
        assert_eq!(rtp.sdp_file, None);
        let a = parse_tunnel_args(
            &getter(&[
                ("server", "rtp://127.0.0.1:5004"),
                ("rtp_payload", "111"),
                ("sdp_file", "/tmp/x.sdp"),
                ("channels", "1"),
                ("encryption", "auto"),
            ]),
            &defaults(),
        )
        .unwrap();
        let rtp = a.rtp.unwrap();
        assert_eq!(rtp.payload_type, 111);
        assert_eq!(
            rtp.sdp_file.as_deref(),
            Some(std::path::Path::new("/tmp/x.sdp"))
        );
        for (pairs, key) in [
            (vec![("encryption", "required")], "encryption"),
            (vec![("compression", "none")], "compression"),
            (vec![("channels", "6")], "channels"),
            (vec![("rtp_payload", "95")], "rtp_payload"),
            (vec![("rtp_payload", "128")], "rtp_payload"),
        ] {
            let mut all = vec![("server", "rtp://127.0.0.1:5004")];
            all.extend(pairs);
            let e = parse_tunnel_args(&getter(&all), &defaults()).unwrap_err();
            assert!(e.starts_with(key), "{e:?} should start with {key}");
        }
        let e = parse_tunnel_args(
            &getter(&[
                ("server", "rtp://127.0.0.1:5004"),
                ("encryption", "required"),
            ]),
            &defaults(),
        )
        .unwrap_err();
        assert!(e.contains("cleartext"), "{e}");
        let e = parse_tunnel_args(&getter(&[("server", "h"), ("sdp_file", "/x")]), &defaults())
            .unwrap_err();
        assert!(e.starts_with("sdp_file: only with plain RTP"), "{e}");
        // The tunnel source cannot send plain RTP.
        let src = Defaults {
            table: argtable::TUNNEL_SOURCE,
            knobs: voice_knobs(),
        };
        let e =
            parse_tunnel_args(&getter(&[("server", "rtp://127.0.0.1:5004")]), &src).unwrap_err();
        assert!(
            e.starts_with("server: rtp://127.0.0.1:5004: plain RTP"),
            "{e}"
        );
    }

    #[test]
    fn parses_and_defaults() {
        let a = parse_tunnel_args(
            &getter(&[("server", "host:1234"), ("compression.bitrate", "32k")]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(a.addr.to_string(), "tcp:host:1234");
        assert_eq!(a.knobs.bitrate, 32000);
        assert_eq!((a.rate, a.channels, a.latency_msec), (48000, 2, 10));
        assert_eq!(a.format, "float32le");
        let pcm = parse_tunnel_args(
            &getter(&[("server", "h"), ("compression", "none"), ("rate", "44100")]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(pcm.format, "s16le");
        assert_eq!(pcm.rate, 44100);
    }

    #[test]
    fn refusals_name_the_key() {
        for (pairs, key) in [
            (vec![], "server"),
            (vec![("server", "h"), ("compression", "zip")], "compression"),
            (vec![("server", "h"), ("rate", "44100")], "rate"),
            (vec![("server", "h"), ("channels", "0")], "channels"),
            (
                vec![("server", "h"), ("latency_msec", "500")],
                "latency_msec",
            ),
            (
                vec![("server", "h"), ("clock_skew_ppm", "x")],
                "clock_skew_ppm",
            ),
            (
                vec![("server", "h"), ("compression.opus.complexity", "11")],
                "compression.opus.complexity",
            ),
            (
                vec![("server", "h"), ("cookie", "/nonexistent/cookie")],
                "cookie",
            ),
        ] {
            let e = parse_tunnel_args(&getter(&pairs), &defaults()).unwrap_err();
            assert!(e.starts_with(key), "{e:?} should start with {key}");
        }
    }

    #[test]
    fn messages() {
        assert_eq!(message_path("tun el/1"), "/opus_tunnel/tun_el_1");
        let addr = params::parse_server("[::1]:4715", 4715).unwrap();
        assert_eq!(default_device_name("tunnel-opus", &addr), "tunnel-opus.__1");
        let get = || vec![("a".to_string(), "1".to_string())];
        assert_eq!(knob_message("get", "", get, |_| vec![]).unwrap(), "a=1\n");
        let got = knob_message("set", "x=1 y=2", Vec::new, |p| {
            assert_eq!(p.len(), 2);
            vec![]
        });
        assert_eq!(got.unwrap(), "ok");
        assert!(knob_message("set", "x", Vec::new, |_| vec![]).is_err());
        assert_eq!(
            knob_message("set", "x=1", Vec::new, |_| vec!["no".into()]).unwrap_err(),
            "no"
        );
        assert!(knob_message("frob", "", Vec::new, |_| vec![]).is_err());
    }

    #[test]
    fn live_updates() {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let u = apply_knob_changes(
            OpusKnobs::default(),
            Compression::Opus,
            fmt,
            &pairs(&[
                ("compression.bitrate", "16000"),
                ("compression.opus.complexity", "11"),
                ("compression", "none"),
                ("bogus", "1"),
                ("compression.frame_size", "20"),
            ]),
        );
        assert_eq!(u.knobs.bitrate, 16000);
        assert_eq!(u.knobs.complexity, 10);
        assert_eq!(u.changed, vec!["compression.bitrate=16000".to_string()]);
        assert_eq!(u.errors.len(), 3);
        assert!(u.errors[0].starts_with("compression.opus.complexity"));
        assert!(u.errors[1].starts_with("compression:"));
        assert!(u.errors[2].starts_with("bogus"));
        let props = effective_properties(Compression::Opus, &u.knobs);
        assert!(props.contains(&("compression.bitrate".to_string(), "16000".to_string())));
        assert_eq!(props[0], ("compression".to_string(), "opus".to_string()));
    }
}
