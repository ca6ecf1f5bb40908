//! The floor for the benchmarks: raw libopus (through `codec::Encoder`/`codec::Decoder`,
//! i.e. audiopus) encoding and decoding a raw s16le file in-process, no daemon, no network.
//!
//! `cargo run --release -p opus-tunnel-core --example bench_floor -- IN.raw [key=value ...]`
//!
//! Keys: `channels` (2), `rate` (48000), `bitrate` (64000), `frame_ms` (20; 2.5, 5, 10, 20,
//! 40, 60), `complexity` (10), `out=FILE` (write the decoded audio as s16le),
//! `repeat=N` (encode+decode the file N times for the CPU figure; 1).
//!
//! Prints one line of `key=value` pairs: `stream_secs`, `enc_cpu_s`, `dec_cpu_s` (CPU time of
//! this thread, from /proc/thread-self/schedstat, nanosecond resolution), `payload_bytes`,
//! `packets`. `tests/src/bin/bench` runs it and reads that line.
//!
//! `bench_floor --encryption` instead prints what sealing and opening one stream-second costs
//! (Noise's ChaChaPoly through `secure`, both ends of a tunnel), µs of this thread's CPU:
//! `opus_us` (Opus 64 kbit/s, 20 ms packets of 160 bytes) and `pcm_us` (L16 stereo, 3840-byte
//! packets), over 200 stream-seconds each.

use opus_tunnel_core::codec::{Decoder, Encoder, StreamFormat};
use opus_tunnel_core::params::{Compression, FrameSize, OpusKnobs};

/// CPU time of the calling thread in seconds (schedstat's first field is ns on the CPU).
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat");
    let ns: f64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat field");
    ns / 1e9
}

/// See the module doc: `--encryption`.
fn encryption_cost() {
    use opus_tunnel_core::secure::{pair, Pattern};
    let mut line = Vec::new();
    for (key, len) in [("opus_us", 160usize), ("pcm_us", 3840)] {
        let ((mut sealer, _), (_, mut opener)) =
            pair(Pattern::Nn, None, None, b"bench").expect("a Noise pair");
        let packet = vec![0x5a; len + 14];
        let seconds = 200;
        let mut wire = Vec::new();
        let t = thread_cpu();
        for _ in 0..seconds * 50 {
            wire.clear();
            sealer.seal(&packet, &mut wire).expect("seal");
            opener.push(&wire);
            let got = opener.next_plain().expect("open");
            assert_eq!(got.map(|p| p.len()), Some(packet.len()));
        }
        let us = (thread_cpu() - t) * 1e6 / f64::from(seconds);
        line.push(format!("{key}={us:.1}"));
    }
    println!("{}", line.join(" "));
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--encryption") {
        encryption_cost();
        return;
    }
    let mut args = std::env::args().skip(1);
    let input = args
        .next()
        .expect("usage: bench_floor IN.raw [key=value ...]");
    let mut channels = 2u8;
    let mut rate = 48_000u32;
    let mut knobs = OpusKnobs::default();
    let mut out_path: Option<String> = None;
    let mut repeat = 1usize;
    for a in args {
        let (k, v) = a.split_once('=').expect("key=value");
        match k {
            "channels" => channels = v.parse().expect("channels"),
            "rate" => rate = v.parse().expect("rate"),
            "bitrate" => knobs.bitrate = v.parse().expect("bitrate"),
            "complexity" => knobs.complexity = v.parse().expect("complexity"),
            "frame_ms" => {
                let usec = (v.parse::<f64>().expect("frame_ms") * 1000.0).round() as u32;
                knobs.frame_size = *FrameSize::ALL
                    .iter()
                    .find(|f| f.usec() == usec)
                    .expect("frame_ms: 2.5, 5, 10, 20, 40 or 60");
            }
            "out" => out_path = Some(v.to_string()),
            "repeat" => repeat = v.parse().expect("repeat"),
            _ => panic!("unknown key {k}"),
        }
    }
    let bytes = std::fs::read(&input).expect("reading input");
    let pcm: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    let fmt = StreamFormat { rate, channels };
    let ch = usize::from(channels);

    let mut enc_cpu = 0.0;
    let mut dec_cpu = 0.0;
    let mut payload_bytes = 0usize;
    let mut packets_n = 0usize;
    let mut decoded: Vec<f32> = Vec::new();
    let mut frames_total = 0usize;
    for r in 0..repeat {
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).expect("encoder");
        let fs = enc.frame_samples();
        let mut packets = Vec::with_capacity(pcm.len() / (fs * ch) + 1);
        let t0 = thread_cpu();
        for frame in pcm.chunks_exact(fs * ch) {
            let mut p = Vec::new();
            enc.encode(frame, &mut p).expect("encode");
            packets.push(p);
        }
        enc_cpu += thread_cpu() - t0;
        let mut dec = Decoder::new(Compression::Opus, fmt).expect("decoder");
        let mut out = Vec::with_capacity(pcm.len());
        let t0 = thread_cpu();
        for p in &packets {
            dec.decode(p, &mut out).expect("decode");
        }
        dec_cpu += thread_cpu() - t0;
        std::hint::black_box(&out);
        frames_total += packets.len() * fs;
        payload_bytes += packets.iter().map(Vec::len).sum::<usize>();
        packets_n += packets.len();
        if r == 0 {
            decoded = out;
        }
    }
    if let Some(p) = out_path {
        let b: Vec<u8> = decoded
            .iter()
            .flat_map(|v| ((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
            .collect();
        std::fs::write(&p, b).expect("writing output");
    }
    println!(
        "stream_secs={:.3} enc_cpu_s={:.6} dec_cpu_s={:.6} payload_bytes={} packets={}",
        frames_total as f64 / rate as f64,
        enc_cpu,
        dec_cpu,
        payload_bytes,
        packets_n
    );
}
