//! One cell of the codec quality matrix (issue 17): encodes and decodes a raw s16le 48 kHz
//! file in-process through the project's own `codec::Encoder`/`codec::Decoder` (libopus via
//! audiopus) with the cell's knobs, writes the decoded audio, and prints the rates.
//!
//! `cargo run --release -p opus-tunnel-core --example quality_matrix -- IN.raw OUT.raw [key=value ...]`
//!
//! Keys: `in_channels` (channels of IN and OUT, 2), `channels` (channels of the codec, 2; with
//! `channels=1` and a stereo file the input is downmixed (mean of L and R) and the decoded
//! mono is written to both channels), `bitrate` (64000), `frame_ms` (20; 2.5, 5, 10, 20, 40,
//! 60), `complexity` (10), `vbr` (true), `vbr_constraint` (false). Every other knob is
//! `OpusKnobs::default()`, but `vbr` and `vbr_constraint` are always set from the keys, so
//! the cell does not depend on the library default.
//!
//! Prints one line of `key=value` pairs: `stream_secs`, `packets`, `payload_bytes`,
//! `payload_kbps` (Opus payload only) and `wire_kbps` (payload + 12-byte RTP header +
//! 2-byte RFC 4571 length per packet: what the TCP transport carries before TCP/IP headers
//! and encryption). `scripts/quality_matrix.py` runs it.

use opus_tunnel_core::codec::{Decoder, Encoder, StreamFormat};
use opus_tunnel_core::params::{Compression, OpusKnobs};

/// Bytes the TCP transport adds to each Opus payload: RTP header (12) + RFC 4571 length (2).
const PER_PACKET: usize = 12 + 2;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: quality_matrix IN.raw OUT.raw [key=value ...]";
    let input = args.next().expect(usage);
    let output = args.next().expect(usage);
    let mut in_channels = 2usize;
    let mut channels = 2u8;
    let mut knobs = OpusKnobs {
        vbr: true,
        vbr_constraint: false,
        ..OpusKnobs::default()
    };
    for a in args {
        let (k, v) = a.split_once('=').expect("key=value");
        match k {
            "in_channels" => in_channels = v.parse().expect("in_channels"),
            "channels" => channels = v.parse().expect("channels"),
            // The codec's knobs by their module argument names (frame_ms in ms, as there).
            "bitrate" | "complexity" | "vbr" | "vbr_constraint" | "frame_ms" => {
                let key = match k {
                    "bitrate" => "compression.bitrate",
                    "frame_ms" => "compression.frame_size",
                    other => &format!("compression.opus.{other}"),
                };
                knobs.set(key, v).unwrap_or_else(|e| panic!("{e}"));
            }
            _ => panic!("unknown key {k}"),
        }
    }
    assert!(
        in_channels == usize::from(channels) || (in_channels == 2 && channels == 1),
        "channels must equal in_channels, or be 1 with a stereo file"
    );
    let bytes = std::fs::read(&input).expect("reading input");
    let pcm: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let pcm: Vec<f32> = if in_channels == 2 && channels == 1 {
        pcm.chunks_exact(2).map(|f| 0.5 * (f[0] + f[1])).collect()
    } else {
        pcm
    };
    let rate = 48_000u32;
    let fmt = StreamFormat { rate, channels };
    let ch = usize::from(channels);
    let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).expect("encoder");
    let mut dec = Decoder::new(Compression::Opus, fmt).expect("decoder");
    let fs = enc.frame_samples();
    let mut out = Vec::with_capacity(pcm.len());
    let mut payload_bytes = 0usize;
    let mut packets = 0usize;
    // The last partial frame is padded with silence so that the whole input is coded.
    let mut frame = vec![0f32; fs * ch];
    for chunk in pcm.chunks(fs * ch) {
        frame[..chunk.len()].copy_from_slice(chunk);
        frame[chunk.len()..].fill(0.0);
        let mut p = Vec::new();
        enc.encode(&frame, &mut p).expect("encode");
        payload_bytes += p.len();
        packets += 1;
        dec.decode(&p, &mut out).expect("decode");
    }
    let b: Vec<u8> = out
        .iter()
        .flat_map(|&v| {
            let s = ((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes();
            if ch == 1 && in_channels == 2 {
                vec![s[0], s[1], s[0], s[1]]
            } else {
                s.to_vec()
            }
        })
        .collect();
    std::fs::write(&output, b).expect("writing output");
    let secs = (packets * fs) as f64 / f64::from(rate);
    println!(
        "stream_secs={:.3} packets={} payload_bytes={} payload_kbps={:.2} wire_kbps={:.2}",
        secs,
        packets,
        payload_bytes,
        payload_bytes as f64 * 8.0 / secs / 1000.0,
        (payload_bytes + packets * PER_PACKET) as f64 * 8.0 / secs / 1000.0
    );
}
