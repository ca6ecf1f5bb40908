//! One argument table per module: every key with its default, what it accepts and one line of
//! help, in the order the module lists them. From the table come the module's usage string
//! (PulseAudio's `pa__get_usage`, PipeWire's module usage, both built at compile time), the
//! keys it accepts, and the integer parsing ([`int`], [`parse_int`]); [`check_markdown`] holds
//! the README's and the module manuals' argument tables to it.
//!
//! `default` and `accepts` are the text the manuals show: a number for numeric arguments
//! (which [`int`] reads), words elsewhere. The real defaults live in the parsers; tests check
//! that the two agree.
use std::ffi::CStr;
use std::fmt::Display;
use std::str::FromStr;

use crate::params::KNOB_KEYS;

/// One module argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// The key, as given to the module.
    pub key: &'static str,
    /// The default, as the manuals show it (`required`, `none`, a number, words).
    pub default: &'static str,
    /// What is accepted: `LO-HI` for integers, `a|b|c` for words, else a description.
    pub accepts: &'static str,
    /// One line of help.
    pub help: &'static str,
}

/// `s` (ending in a NUL, no other NUL) as a C string, at compile time.
#[doc(hidden)]
pub const fn c_str(s: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("a usage string must end in one NUL"),
    }
}

/// The twelve Opus knobs' rows, appended to a table's own rows; `bitrate` and `signal` are
/// the defaults that differ between modules.
macro_rules! with_knobs {
    ($table:ident ! { $($head:tt)* } { $($rows:tt)* } bitrate: $br:literal, signal: $sig:literal $(; $tail:literal)?) => {
        $table! { $($head)* {
            $($rows)*
            "compression.bitrate", $br, "6000-510000",
                "Opus bit rate, bit/s, or kbit/s with a k suffix such as 64k";
            "compression.frame_size", "20", "2.5|5|10|20|40|60",
                "frame duration, ms (also the size of PCM packets)";
            "compression.opus.complexity", "10", "0-10", "encoder complexity";
            "compression.opus.max_bandwidth", "fullband",
                "narrowband|mediumband|wideband|superwideband|fullband", "audio bandwidth limit";
            "compression.opus.signal", $sig, "auto|voice|music", "signal hint";
            "compression.opus.vbr", "true", "bool", "variable bit rate";
            "compression.opus.vbr_constraint", "false", "bool", "constrained VBR";
            "compression.opus.application", "audio", "voip|audio|lowdelay", "encoder mode";
            "compression.opus.lsb_depth", "16", "8-24", "input resolution hint, bits";
            "compression.opus.dtx", "false", "bool", "discontinuous transmission";
            "compression.opus.fec", "false", "bool", "in-band forward error correction (on with transport=udp unless given)";
            "compression.opus.packet_loss", "0", "0-100", "expected packet loss, percent";
        } $($tail)? }
    };
}

/// A PulseAudio module's table and its usage (`key=<accepts: help; default …>`, one line).
macro_rules! pa_table {
    ($(#[$doc:meta])* $table:ident, $usage:ident {
        $($key:literal, $default:literal, $accepts:literal, $help:literal;)*
    }) => {
        $(#[$doc])*
        pub const $table: &[Arg] = &[$(Arg { key: $key, default: $default, accepts: $accepts, help: $help },)*];
        #[doc = concat!("`pa__get_usage` of the module whose arguments are [`", stringify!($table), "`].")]
        pub const $usage: &CStr = c_str(concat!(
            $($key, "=<", $accepts, ": ", $help, "; default ", $default, "> ",)* "\0"
        ));
    };
}

/// A PipeWire module's table and its usage (`( key = <accepts> )  help; default …`, one a line).
macro_rules! pw_table {
    ($(#[$doc:meta])* $table:ident, $usage:ident {
        $($key:literal, $default:literal, $accepts:literal, $help:literal;)*
    } $($tail:literal)?) => {
        $(#[$doc])*
        pub const $table: &[Arg] = &[$(Arg { key: $key, default: $default, accepts: $accepts, help: $help },)*];
        #[doc = concat!("The usage of the PipeWire module whose arguments are [`", stringify!($table), "`].")]
        pub const $usage: &str = concat!(
            $("( ", $key, " = <", $accepts, "> )  ", $help, "; default ", $default, "\n",)* $($tail)?
        );
    };
}

with_knobs! { pa_table! {
    /// `module-tunnel-sink-opus`.
    TUNNEL_SINK, TUNNEL_SINK_USAGE
} {
    "sink_name", "tunnel-opus.<host>", "name", "name of the local sink";
    "sink_properties", "none", "properties", "extra properties for the local sink";
    "server", "required", "tcp:HOST:PORT|HOST:PORT|HOST|unix:PATH|rtp://HOST:PORT",
        "the receiver; port 4715 by default; rtp://HOST:PORT sends plain RTP/Opus (RFC 7587) over UDP with no handshake, always cleartext";
    "sink", "the receiver's sink=, else its default sink", "name",
        "the sink to play on at the receiver";
    "format", "float32le (opus), s16le (none)", "sample format",
        "sample format of the local sink";
    "rate", "48000", "1-384000", "sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000";
    "channels", "2", "1-32", "channels: 1-8 (with Opus 3-8 are multistream surround)";
    "channel_map", "PulseAudio's default for channels", "channel map", "channel map";
    "latency_msec", "10", "1-200", "the sink's block (wake-up period and fixed latency), ms";
    "compression", "opus", "opus|none", "Opus, or RTP L16 PCM";
    "clock_skew_ppm", "0", "-100000 to 100000",
        "test aid: the sink consumes audio at (1 + ppm/1e6) x its nominal rate";
    "cookie", "none", "path",
        "a copy of the receiver's cookie, proven when the receiver asks (never sent)";
    "encryption", "auto", "auto|required|none",
        "encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a receiver of protocol version 1; required never sends cleartext; none is cleartext (debugging)";
    "transport", "tcp", "tcp|udp",
        "audio over the TCP connection, or RTP over UDP to the receiver's udp_port (control stays on TCP; TCP when the receiver cannot grant UDP, logged)";
    "rtp_payload", "96", "96-127", "server=rtp:// only: the RTP payload type";
    "sdp_file", "none", "path",
        "server=rtp:// only: write the stream's SDP description (RFC 7587) to this file";
} bitrate: "64000 (3-8 channels: 32000 a channel)", signal: "auto" }

with_knobs! { pa_table! {
    /// `module-tunnel-source-opus`.
    TUNNEL_SOURCE, TUNNEL_SOURCE_USAGE
} {
    "source_name", "tunnel-opus-source.<host>", "name", "name of the local source";
    "source_properties", "none", "properties", "extra properties for the local source";
    "server", "required", "tcp:HOST:PORT|HOST:PORT|HOST|unix:PATH",
        "the far end (module-opus-protocol-tcp); port 4715 by default";
    "source", "its source= argument, else its default source", "name",
        "the source to record at the far end";
    "format", "float32le (opus), s16le (none)", "sample format",
        "sample format of the local source";
    "rate", "48000", "1-384000", "sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000";
    "channels", "1", "1-32", "channels: 1-8 (with Opus 3-8 are multistream surround)";
    "channel_map", "PulseAudio's default for channels", "channel map", "channel map";
    "latency_msec", "10", "1-200", "the source's block, ms";
    "target_latency_msec", "auto", "auto, 1-10000",
        "receive buffer target: sized from the measured lateness, or fixed, ms";
    "min_latency_msec", "0", "0-10000", "the least the receive buffer target may be, ms";
    "max_latency_msec", "2500 (a source may post 2 s at once), or the minimum or a fixed target if larger",
        "min_latency_msec to 10000", "the most the receive buffer (and its target) may hold, ms";
    "compression", "opus", "opus|none", "Opus, or RTP L16 PCM, encoded by the far end";
    "clock_skew_ppm", "0", "-100000 to 100000",
        "test aid: the source produces at (1 + ppm/1e6) x its nominal rate";
    "cookie", "none", "path", "a copy of the far end's cookie";
    "encryption", "auto", "auto|required|none",
        "encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a far end of protocol version 1; required never sends cleartext; none is cleartext (debugging)";
    "transport", "tcp", "tcp|udp",
        "the far end's audio over the TCP connection, or RTP over UDP from its udp_port to a socket of ours that probes it first (control stays on TCP; TCP when the far end cannot grant UDP, logged)";
} bitrate: "32000 (3-8 channels: 32000 a channel)", signal: "auto" }

pa_table! {
    /// `module-opus-protocol-tcp`.
    RECEIVER, RECEIVER_USAGE
{
    "port", "4715", "1-65535", "TCP port";
    "listen", "all (IPv6 and IPv4)", "IP address", "address to listen on";
    "auth-anonymous", "false", "bool", "accept any peer";
    "auth-ip-acl", "none", "ADDR[/BITS];...", "peers allowed without a cookie";
    "auth-cookie", "PulseAudio's: $PULSE_COOKIE, ~/.config/pulse/cookie, ~/.pulse-cookie", "path",
        "the cookie file everyone else must prove";
    "auth-cookie-enabled", "true", "bool", "require the cookie from peers the ACL does not admit";
    "encryption", "auto", "auto|required|none",
        "auto encrypts whenever the tunnel asks; required refuses cleartext tunnels (426 Encryption Required); none refuses encryption (406)";
    "sink", "the default sink", "name", "sink that play tunnels use when the sender names none";
    "source", "the default source", "name",
        "source that record tunnels use when the desktop names none";
    "target_latency_msec", "auto", "auto, 1-10000",
        "receive buffer target: sized from the measured lateness, or fixed, ms";
    "min_latency_msec", "0", "0-10000", "the least the receive buffer target may be, ms";
    "max_latency_msec", "1000, or the minimum or a fixed target if larger",
        "min_latency_msec to 10000", "the most the receive buffer (and its target) may hold, ms";
    "max_connections", "64", "1-1024", "concurrent tunnels; one more is refused with 503";
    "udp_port", "4715", "1-65535",
        "UDP port (on the listen address) for the audio of transport=udp tunnels, both ways; if it cannot be bound they get TCP";
    "rtp_port", "none (off)", "1-65535",
        "UDP port on which to play plain RTP/Opus streams (RFC 7587) from senders auth-ip-acl admits (anyone with auth-anonymous=1); cleartext, unauthenticated";
    "rtp_payload", "96", "96-127", "the RTP payload type of plain RTP/Opus on rtp_port";
}}

with_knobs! { pw_table! {
    /// `libpipewire-module-opus-tunnel`.
    PW_TUNNEL, PW_TUNNEL_USAGE
} {
    "tunnel.mode", "sink", "sink|source", "the tunnel's direction";
    "server.address", "required", "\"tcp:HOST:PORT\"", "the far end; port 4715 by default";
    "remote.sink", "the receiver's choice", "name",
        "sink mode: the sink to play on at the receiver";
    "remote.source", "the far end's source= / target.source, else its default source", "name",
        "source mode: the source to record at the far end";
    "sess.latency.msec", "auto", "auto, 1-10000",
        "source mode: receive buffer target: sized from the measured lateness, or fixed, ms";
    "sess.latency.min.msec", "0", "0-10000", "source mode: the least the target may be, ms";
    "sess.latency.max.msec", "2500 (a source may post 2 s at once), or the minimum or a fixed target if larger",
        "sess.latency.min.msec to 10000", "source mode: the most the receive buffer may hold, ms";
    "stream.props", "sink: node.name = tunnel-opus.<host>, node.latency = 1024/48000; source: node.name = tunnel-opus-source.<host>, node.latency = 512/48000",
        "{ ... }", "properties of the node: node.name, node.description, node.latency, ...";
    "audio.rate", "48000", "1-384000", "sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000";
    "audio.channels", "2 (source mode: 1)", "1-32", "channels: 1-8 (with Opus 3-8 are multistream surround)";
    "audio.position", "by channel count", "[ FL FR ... ]", "channel positions";
    "compression", "opus", "opus|none", "Opus, or L16 PCM";
    "auth.cookie", "none", "path", "a copy of the receiver's cookie, proven when it asks";
    "tunnel.encryption", "auto", "auto|required|none",
        "encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a receiver of protocol version 1; required never sends cleartext; none is cleartext (debugging)";
    "tunnel.transport", "tcp", "tcp|udp",
        "audio over TCP, or RTP over UDP: sink mode to the receiver's UDP port, source mode from it (control stays on TCP; TCP when the receiver cannot grant UDP)";
} bitrate: "64000 (source mode: 32000; 3-8 channels: 32000 a channel)", signal: "auto";
"The compression.* knobs also change live: pw-cli set-param <node id> Props '{ params = [ \"compression.bitrate\" 16000 ] }'\n" }

pw_table! {
    /// `libpipewire-module-opus-protocol-tcp`.
    PW_RECEIVER, PW_RECEIVER_USAGE
{
    "server.address", "[ \"tcp:4715\" ] (all addresses, IPv6 and IPv4)", "[ \"tcp:[ADDR:]PORT\" ]",
        "the address to listen on";
    "auth.anonymous", "false", "bool", "accept any peer";
    "auth.ip-acl", "none", "\"ADDR[/BITS];...\"", "peers admitted by address";
    "auth.cookie", "none", "path", "others must prove this cookie (challenge-response)";
    "tunnel.encryption", "auto", "auto|required|none",
        "auto encrypts whenever the tunnel asks; required refuses cleartext tunnels (426 Encryption Required); none refuses encryption (406)";
    "target.object", "the default sink", "node.name",
        "the sink tunnels play on when the sender names none";
    "target.source", "the default source", "node.name",
        "the source record tunnels record from when the desktop names none (NAME.monitor: a sink's monitor)";
    "sess.latency.msec", "auto", "auto, 1-10000",
        "receive buffer target: sized from the measured lateness, or fixed, ms";
    "sess.latency.min.msec", "0", "0-10000", "the least the target may be, ms";
    "sess.latency.max.msec", "1000, or the minimum or a fixed target if larger",
        "sess.latency.min.msec to 10000", "the most the receive buffer (and its target) may hold, ms";
    "max.connections", "64", "1-1024", "concurrent tunnels";
    "stream.props", "none", "{ ... }", "extra properties of every tunnel's stream";
    "opus.resampler", "engine", "engine|pipewire",
        "who applies the drift correction: the core engine (rubato), or PipeWire's adapter through rate matching";
    "udp.port", "4715", "1-65535",
        "UDP port for the audio of transport=udp tunnels, both ways; if it cannot be bound they get TCP";
    "rtp.port", "none (off)", "1-65535",
        "UDP port on which to play plain RTP/Opus streams (RFC 7587) from senders auth.ip-acl admits (anyone with auth.anonymous = true); cleartext, unauthenticated";
    "rtp.payload", "96", "96-127", "the RTP payload type of plain RTP/Opus on rtp.port";
}}

/// The keys of `table`, in its order (what the daemon's argument check accepts).
pub fn keys(table: &[Arg]) -> Vec<&'static str> {
    table.iter().map(|a| a.key).collect()
}

/// The row of `key`. Panics on a key the table lacks: that is a bug in the module.
pub fn arg(table: &[Arg], key: &str) -> Arg {
    match table.iter().find(|a| a.key == key) {
        Some(a) => *a,
        None => panic!("{key}: not in the module's argument table"),
    }
}

/// An integer argument in `lo..=hi`: `default` when not given; otherwise the error names the
/// key, the value and the range.
pub fn parse_int<T>(key: &str, value: Option<&str>, default: T, lo: T, hi: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    match value {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n >= lo && n <= hi => Ok(n),
            _ => Err(format!(
                "{key}: {v:?} is not accepted (an integer from {lo} to {hi})"
            )),
        },
    }
}

/// The integer argument `key` of `table`, its default and range (`LO-HI`) from the table.
pub fn int<T>(table: &[Arg], key: &str, value: Option<&str>) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    let a = arg(table, key);
    let num = |s: &str| match s.trim().parse::<T>() {
        Ok(n) => n,
        Err(_) => panic!("{key}: the table's {s:?} is not a number"),
    };
    let (lo, hi) = a
        .accepts
        .split_once('-')
        .unwrap_or_else(|| panic!("{key}: the table's {:?} is no range", a.accepts));
    parse_int(key, value, num(a.default), num(lo), num(hi))
}

/// A boolean argument (PulseAudio's words, [`crate::params::parse_bool`]): `default` when not
/// given; otherwise the error names the key, the value and `words`, the accepted words as the
/// module has always described them.
pub fn parse_flag(
    key: &str,
    value: Option<&str>,
    default: bool,
    words: &str,
) -> Result<bool, String> {
    match value {
        None => Ok(default),
        Some(v) => crate::params::parse_bool(v)
            .ok_or_else(|| format!("{key}: {v:?} is not accepted (a boolean: {words})")),
    }
}

/// The argument rows of the first Markdown table after the lines `headings`, in turn (e.g.
/// a module's section, then its `### Options`; none: the first table in `text`): for each row,
/// the keys in backticks in its first cell, and its last cell (the default) without backticks
/// and emphasis.
pub fn markdown_table(text: &str, headings: &[&str]) -> Option<Vec<(Vec<String>, String)>> {
    let mut lines = text.lines().map(str::trim);
    for h in headings {
        lines.find(|l| l == h)?;
    }
    let mut rows = Vec::new();
    let mut started = false;
    for l in lines {
        if !l.starts_with('|') {
            if started {
                break;
            }
            continue;
        }
        started = true;
        let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() < 2 || !cells[0].contains('`') {
            continue;
        }
        let keys = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        let default = cells[cells.len() - 1].replace(['`', '*'], "");
        rows.push((keys, default.trim().to_string()));
    }
    started.then_some(rows)
}

/// Compares a Markdown argument table (see [`markdown_table`]) with `table`: the same keys,
/// and for each row naming one key, the same default. A row naming `compression.*` stands for
/// every knob the table has not listed on its own. The error lists every disagreement.
pub fn check_markdown(table: &[Arg], rows: &[(Vec<String>, String)]) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (keys, default) in rows {
        for k in keys {
            if k == "compression.*" {
                seen.extend(KNOB_KEYS.iter().map(|k| k.to_string()));
                continue;
            }
            match table.iter().find(|a| a.key == k) {
                None => errors.push(format!("{k}: documented but not an argument")),
                Some(a) if keys.len() == 1 && a.default != default => errors.push(format!(
                    "{k}: documented default {default:?}, the module's is {:?}",
                    a.default
                )),
                Some(_) => {}
            }
            seen.push(k.clone());
        }
    }
    for a in table {
        if !seen.iter().any(|k| k == a.key) {
            errors.push(format!(
                "{}: an argument missing from the documentation",
                a.key
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// A unit test that fails when a module's manual (its `//!` comment) and its argument table
/// disagree: `opus_tunnel_core::manual_matches_table!(RECEIVER);` in the module's `lib.rs`.
#[macro_export]
macro_rules! manual_matches_table {
    ($table:ident) => {
        #[cfg(test)]
        #[test]
        fn the_manual_lists_every_argument() {
            let doc = include_str!("lib.rs");
            let checked = $crate::argtable::check_module_doc($crate::argtable::$table, doc);
            assert_eq!(checked, Ok(()));
        }
    };
}

/// Checks a module's manual (its `//!` comment, `source` being its `lib.rs`) against `table`.
pub fn check_module_doc(table: &[Arg], source: &str) -> Result<(), String> {
    let doc: String = source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let rows = markdown_table(&doc, &[]).ok_or("the manual has no argument table")?;
    check_markdown(table, &rows)
}

/// The Markdown table of `table` (`| argument | accepts | meaning | default |`), for manuals.
pub fn markdown(table: &[Arg]) -> String {
    let mut s = String::from("| argument | accepts | meaning | default |\n|---|---|---|---|\n");
    // Code font for what Markdown would take for HTML or links.
    let code = |t: &str| {
        if t.contains(['<', '[', '{']) {
            format!("`{t}`")
        } else {
            t.to_string()
        }
    };
    for a in table {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            a.key,
            code(&a.accepts.replace('|', ", ")),
            a.help,
            code(a.default)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::voice_knobs;
    use crate::params::OpusKnobs;

    #[test]
    fn knob_defaults_are_the_parsers() {
        let sink = OpusKnobs::default();
        let voice = voice_knobs();
        // The documented default starts with the parser's (the bitrate's then says what 3-8
        // channels get: `64000 (3-8 channels: 32000 a channel)`).
        let first = |d: &str| d.split(' ').next().map(str::to_string);
        for key in KNOB_KEYS {
            assert_eq!(first(arg(TUNNEL_SINK, key).default), sink.get(key));
            assert_eq!(first(arg(TUNNEL_SOURCE, key).default), voice.get(key));
            assert!(arg(PW_TUNNEL, key)
                .default
                .starts_with(&sink.get(key).unwrap()));
        }
    }

    #[test]
    fn usage_lists_every_key() {
        for (table, usage) in [
            (TUNNEL_SINK, TUNNEL_SINK_USAGE.to_str().unwrap()),
            (TUNNEL_SOURCE, TUNNEL_SOURCE_USAGE.to_str().unwrap()),
            (RECEIVER, RECEIVER_USAGE.to_str().unwrap()),
            (PW_TUNNEL, PW_TUNNEL_USAGE),
            (PW_RECEIVER, PW_RECEIVER_USAGE),
        ] {
            for a in table {
                assert!(usage.contains(a.key), "{} missing from the usage", a.key);
            }
        }
        assert!(RECEIVER_USAGE
            .to_str()
            .unwrap()
            .starts_with("port=<1-65535: TCP port; default 4715> "));
        assert!(PW_TUNNEL_USAGE.ends_with("16000 ] }'\n"));
    }

    #[test]
    fn integers() {
        assert_eq!(
            int::<u16>(RECEIVER, "port", None),
            Ok(crate::params::DEFAULT_PORT)
        );
        assert_eq!(int::<u16>(RECEIVER, "port", Some(" 80 ")), Ok(80));
        assert_eq!(
            int::<u32>(TUNNEL_SINK, "latency_msec", Some("500")).unwrap_err(),
            "latency_msec: \"500\" is not accepted (an integer from 1 to 200)"
        );
        assert!(parse_int("x", Some("-1"), 0u64, 0, 5).is_err());
        assert_eq!(parse_flag("f", Some("on"), false, "w"), Ok(true));
        assert_eq!(
            parse_flag("f", Some("maybe"), false, "true/false").unwrap_err(),
            "f: \"maybe\" is not accepted (a boolean: true/false)"
        );
    }

    #[test]
    fn markdown_round_trip() {
        for t in [TUNNEL_SINK, TUNNEL_SOURCE, RECEIVER, PW_TUNNEL, PW_RECEIVER] {
            let rows = markdown_table(&markdown(t), &[]).unwrap();
            check_markdown(t, &rows).unwrap();
        }
        let rows = vec![
            (vec!["port".to_string()], "80".to_string()),
            (vec!["bogus".to_string()], "".to_string()),
        ];
        let e = check_markdown(RECEIVER, &rows).unwrap_err();
        assert!(e.contains("port: documented default \"80\""), "{e}");
        assert!(e.contains("bogus: documented"), "{e}");
        assert!(e.contains("listen: an argument missing"), "{e}");
    }
}
/// Prints every table as Markdown, to paste into a module's manual:
/// `cargo test -p opus-tunnel-core --lib -- --ignored print_tables --nocapture`.
#[cfg(test)]
mod print {
    #[test]
    #[ignore]
    fn print_tables() {
        for t in [
            super::TUNNEL_SINK,
            super::TUNNEL_SOURCE,
            super::RECEIVER,
            super::PW_TUNNEL,
            super::PW_RECEIVER,
        ] {
            println!("{}", super::markdown(t));
        }
    }
}
