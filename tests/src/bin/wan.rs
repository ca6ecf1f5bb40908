//! The WAN table (issue 18): our tunnel over TCP and over UDP beside the stock
//! `module-tunnel-sink-new` → `module-native-protocol-tcp`, through the link emulator
//! (tests/src/netem.rs) at the four links of [`Link::wan_presets`] (each way), all at their
//! defaults: the sender's PulseAudio in namespace A, the receiver's in B.
//!
//!     scripts/build-modules.sh
//!     cargo run --release -p opus-tunnel-tests --bin wan
//!
//! Per link and tunnel: a 1 kHz tone at −12 dBFS for `WAN_SECS` (default 60) after it first
//! arrives (plus 1 s), and then a train of clicks. It prints one markdown row each: silent
//! 10 ms blocks per minute (20 dB below the tone), frames recovered by FEC, by parity and
//! by repairs (sent again on request), and concealed (PLC) per minute (ours: the receiver's counters), the render-to-render
//! latency of the clicks (median), and the bytes A→B on the link (IP packets) as kbit/s.
//! `WAN_ONLY=stock,tcp,udp` and `WAN_LINKS=0,1,2,3` choose the cases; `WAN_OURS_ARGS` adds
//! arguments to our tunnel sink (e.g. `compression.frame_size=20`, to compare UDP's frames).
use anyhow::{anyhow, Result};
use opus_tunnel_tests::linkcheck::{delta, median, render_to_render, silences_under, stream_props};
use opus_tunnel_tests::{
    play_loop, require_modules, tone_loop, wait::wait_for_tone, Daemon, Dir, Link, Netem, Recorder,
    RATE,
};
use std::time::{Duration, Instant};

const OURS: u16 = 4715;
const STOCK: u16 = 4713;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Stock,
    Tcp,
    Udp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Stock => "stock `module-tunnel-sink-new` (PCM)",
            Kind::Tcp => "ours, `transport=tcp`",
            Kind::Udp => "ours, `transport=udp`",
        }
    }
}

struct Row {
    silent_per_min: f64,
    fec_per_min: f64,
    parity_per_min: f64,
    repaired_per_min: f64,
    plc_per_min: f64,
    r2r_ms: f64,
    clicks: usize,
    kbps: f64,
    arrived: bool,
}

fn run(link: Link, kind: Kind, secs: usize) -> Result<Row> {
    // Declared first, so dropped last: the daemons inside stop before their namespaces go.
    let net = Netem::new(link)?;
    let b = net.addr_b();
    let receiver = Daemon::builder()
        .name("wan-rx")
        .netns(net.b())
        .line(format!(
            "load-module module-opus-protocol-tcp port={OURS} listen={b} sink=null \
             auth-anonymous=1 udp_port={OURS}"
        ))
        .line(format!(
            "load-module module-native-protocol-tcp port={STOCK} listen={b} auth-anonymous=1"
        ))
        .start()?;
    let sender = Daemon::builder().name("wan-tx").netns(net.a()).start()?;
    let (module, args) = match kind {
        Kind::Stock => (
            "module-tunnel-sink-new",
            format!("sink_name=tun server=tcp:{b}:{STOCK} sink=null rate=48000"),
        ),
        Kind::Tcp | Kind::Udp => (
            "module-tunnel-sink-opus",
            format!(
                "sink_name=tun server=tcp:{b}:{OURS} sink=null transport={} {}",
                kind.name(),
                std::env::var("WAN_OURS_ARGS").unwrap_or_default()
            ),
        ),
    };
    sender
        .load_module(module, &args)
        .map_err(|e| anyhow!("{module}: {e}"))?;
    // module-tunnel-sink-new makes its sink only once it has connected: a player started
    // before then finds no sink `tun` and ends.
    let t = Instant::now();
    while !sender.sinks().iter().any(|s| s == "tun") {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(anyhow!("{module}: no sink tun within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut player = play_loop(&sender, "tun", tone_loop(1000.0, 1000.0, -12.0));
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let arrived = wait_for_tone(
        |s| rec.read(s).ok(),
        0.25,
        (1000.0, 1000.0),
        Duration::from_secs(15),
    )
    .is_some();
    rec.read(1.0)?;
    let before = stream_props(&receiver);
    let ab0 = net.stats(Dir::AtoB);
    let t0 = Instant::now();
    let mut audio = Vec::with_capacity(secs * RATE as usize * 2);
    for _ in 0..secs {
        audio.extend(rec.read(1.0)?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ab1 = net.stats(Dir::AtoB);
    let after = stream_props(&receiver);
    player.stop();
    drop(rec);
    let per_min = |key: &str| delta(&before, &after, key) as f64 * 60.0 / elapsed;
    // Silent: 20 dB below the tone's −12 dBFS (a tunnel that plays nothing is all silence).
    let quiet = silences_under(&audio, -32.0);
    // Where the silence was, for a look at the receiver's trace: its runs of 10 ms blocks.
    let runs = quiet.runs();
    if !runs.is_empty() {
        eprintln!(
            "{}: {} silent runs (s into the recording + 10 ms blocks; the first 40): {:?}",
            kind.name(),
            runs.len(),
            runs.iter()
                .take(40)
                .map(|&(at, n)| format!("{at:.2}+{n}"))
                .collect::<Vec<_>>()
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The stock tunnel's latency is hundreds of ms: clicks further apart, a wider match. It
    // renders what its far end asks for, a round trip's worth at a time, so its clicks are
    // written through a 100 ms buffer (10 ms would be padded with silence and stretched).
    // Over TCP a lossy link holds the stream back hundreds of ms (retransmissions): a match
    // narrower than that pairs each click with the one before it (32 ms on the 40 ms link).
    let window = match kind {
        Kind::Stock => 1500,
        Kind::Tcp => 1000,
        Kind::Udp => 400,
    };
    let writer_ms = if kind == Kind::Stock { 100 } else { 10 };
    let r2r = render_to_render(
        &sender,
        "tun",
        &receiver,
        "null",
        if kind == Kind::Stock { 8 } else { 12 },
        Duration::from_millis(window),
        writer_ms,
    )
    .unwrap_or_else(|e| {
        eprintln!("{}: render to render: {e}", kind.name());
        Vec::new()
    });
    Ok(Row {
        silent_per_min: quiet.per_minute(),
        fec_per_min: per_min("opus.tunnel.fec_frames"),
        parity_per_min: per_min("opus.tunnel.parity_frames"),
        repaired_per_min: per_min("opus.tunnel.repaired_frames"),
        plc_per_min: per_min("opus.tunnel.plc_frames"),
        r2r_ms: median(&r2r),
        clicks: r2r.len(),
        kbps: (ab1.forwarded_bytes - ab0.forwarded_bytes) as f64 * 8.0 / elapsed / 1000.0,
        arrived,
    })
}

fn main() -> Result<()> {
    if !require_modules(
        "wan",
        &["module-tunnel-sink-opus", "module-opus-protocol-tcp"],
    ) {
        return Ok(());
    }
    let secs: usize = std::env::var("WAN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let only = std::env::var("WAN_ONLY").unwrap_or_else(|_| "stock,tcp,udp".into());
    let links = std::env::var("WAN_LINKS").unwrap_or_else(|_| "0,1,2,3".into());
    let kinds: Vec<Kind> = [Kind::Stock, Kind::Tcp, Kind::Udp]
        .into_iter()
        .filter(|k| only.split(',').any(|o| o.trim() == k.name()))
        .collect();
    println!(
        "{secs} s of a 1 kHz tone per case, then clicks; each link the same both ways; all \
         tunnels at their defaults (ours: Opus 64 kbit/s, encrypted; TCP 20 ms frames; UDP 10 ms \
         frames, FEC, a parity block per 120 ms)\n"
    );
    println!(
        "| link (one way, jitter, loss) | tunnel | silent 10 ms blocks/min | FEC frames/min | \
         parity frames/min | repaired frames/min | PLC frames/min | render to render, ms | A→B \
         on the link, kbit/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (name, link)) in Link::wan_presets().into_iter().enumerate() {
        if !links.split(',').any(|l| l.trim() == i.to_string()) {
            continue;
        }
        for &kind in &kinds {
            match run(link, kind, secs) {
                Ok(r) => {
                    let ours = kind != Kind::Stock;
                    let n = |v: f64| {
                        if ours {
                            format!("{v:.1}")
                        } else {
                            "–".into()
                        }
                    };
                    let (parity, repaired) = if kind == Kind::Udp {
                        (n(r.parity_per_min), n(r.repaired_per_min))
                    } else {
                        ("–".into(), "–".into())
                    };
                    let r2r = if r.clicks == 0 {
                        "no click matched".to_string()
                    } else {
                        format!("{:.1} ({} clicks)", r.r2r_ms, r.clicks)
                    };
                    println!(
                        "| {name} | {} | {:.1}{} | {} | {parity} | {repaired} | {} | {r2r} | {:.1} |",
                        kind.label(),
                        r.silent_per_min,
                        if r.arrived { "" } else { " (no tone in 15 s)" },
                        n(r.fec_per_min),
                        n(r.plc_per_min),
                        r.kbps
                    );
                }
                Err(e) => println!("| {name} | {} | failed: {e:#} | | | | | | |", kind.label()),
            }
        }
    }
    Ok(())
}
