//! Surround at the defaults: the codec's wire rate and CPU for stereo, 5.1 and 7.1, in-process
//! (`codec::Encoder`/`codec::Decoder` with the channel map, i.e. libopus single-stream or
//! multistream), no daemon, no network.
//!
//! `cargo run --release -p opus-tunnel-core --example bench_surround [seconds]` (default 20)
//!
//! The signal is music-like and different on every channel: each channel a chord of three
//! partials (its own root), a slow tremolo, and −40 dBFS of white noise; the LFE channel a
//! 40–90 Hz bass line. Each layout is encoded at the default bitrate (64 kbit/s stereo, 32
//! kbit/s a channel beyond) with the default knobs (unconstrained VBR, complexity 10, 20 ms).
//! Wire rate counts the RTP header (12 bytes) and the RFC 4571 length (2 bytes) of every
//! packet. CPU is this thread's time (schedstat) per stream-second.

use opus_tunnel_core::codec::{Decoder, Encoder, StreamFormat};
use opus_tunnel_core::params::{Compression, OpusKnobs};
use opus_tunnel_core::surround::default_bitrate;
use std::f64::consts::PI;

fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

fn signal(map: &[&str], secs: f64) -> Vec<f32> {
    let rate = 48_000.0;
    let n = (secs * rate) as usize;
    let mut noise: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n * map.len());
    for i in 0..n {
        let t = i as f64 / rate;
        for (c, pos) in map.iter().enumerate() {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let white = (noise >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let v = if *pos == "lfe" {
                // A bass line stepping every half second between 40 and 90 Hz.
                let f = [40.0, 55.0, 70.0, 90.0][(t * 2.0) as usize % 4];
                0.3 * (2.0 * PI * f * t).sin()
            } else {
                let root = 220.0 * 2f64.powf(c as f64 / 12.0);
                let trem = 0.75 + 0.25 * (2.0 * PI * (0.5 + 0.1 * c as f64) * t).sin();
                trem * (0.12 * (2.0 * PI * root * t).sin()
                    + 0.08 * (2.0 * PI * root * 1.25 * t).sin()
                    + 0.06 * (2.0 * PI * root * 1.5 * t).sin())
                    + 0.01 * white
            };
            out.push(v as f32);
        }
    }
    out
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let layouts: [(&str, &str); 3] = [
        ("stereo", "front-left,front-right"),
        (
            "5.1",
            "front-left,front-right,rear-left,rear-right,front-center,lfe",
        ),
        (
            "7.1",
            "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right",
        ),
    ];
    println!(
        "| layout | streams (coupled) | compression.bitrate | wire kbit/s | encode ms CPU / s | decode ms CPU / s |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (name, map) in layouts {
        let positions: Vec<&str> = map.split(',').collect();
        let ch = positions.len() as u8;
        let fmt = StreamFormat {
            rate: 48_000,
            channels: ch,
        };
        let knobs = OpusKnobs {
            bitrate: default_bitrate(ch, OpusKnobs::default().bitrate),
            ..OpusKnobs::default()
        };
        let mut enc = Encoder::with_map(Compression::Opus, fmt, &knobs, map).expect("an encoder");
        let mut dec = Decoder::with_map(Compression::Opus, fmt, map).expect("a decoder");
        let pcm = signal(&positions, secs);
        let frame = enc.frame_samples() * usize::from(ch);
        let mut packets = Vec::new();
        let mut pkt = Vec::new();
        let t0 = thread_cpu();
        for f in pcm.chunks_exact(frame) {
            enc.encode(f, &mut pkt).expect("encode");
            packets.push(pkt.clone());
        }
        let t1 = thread_cpu();
        let mut out = Vec::new();
        for p in &packets {
            dec.decode(p, &mut out).expect("decode");
            out.clear();
        }
        let t2 = thread_cpu();
        let wire: usize = packets.iter().map(|p| p.len() + 14).sum();
        let (streams, coupled) = enc.streams();
        println!(
            "| {name} | {streams} ({coupled}) | {} | {:.1} | {:.2} | {:.2} |",
            knobs.bitrate,
            wire as f64 * 8.0 / secs / 1000.0,
            (t1 - t0) / secs * 1000.0,
            (t2 - t1) / secs * 1000.0
        );
    }
}
