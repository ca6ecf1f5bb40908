//! The decoder (libopus through audiopus, libopus multistream through our binding crate, and
//! L16): a fuzzer-chosen format and channel map, then a series of packets, concealments and
//! FEC recoveries taken from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::codec::{Decoder, StreamFormat, OPUS_RATES};
use opus_tunnel_core::params::Compression;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let compression = if data[0] & 1 == 0 {
        Compression::Opus
    } else {
        Compression::None
    };
    let rate = match compression {
        Compression::Opus => OPUS_RATES[usize::from(data[0] >> 1) % OPUS_RATES.len()],
        // L16: also rates and channel counts the decoder must refuse.
        Compression::None => {
            [8000, 44100, 48000, 96000, 0, 500, 400_000][usize::from(data[0] >> 1) % 7]
        }
    };
    let channels = data[1] % 10;
    let fmt = StreamFormat { rate, channels };
    // 3-8 channel Opus: a map of an RFC 7845 family 1 layout (surround, coupled streams, LFE)
    // or none (one stream a channel).
    let map = match (data[1] & 0x80 != 0, channels) {
        (true, 3) => "front-left,front-right,front-center",
        (true, 4) => "front-left,front-right,rear-left,rear-right",
        (true, 5) => "front-left,front-right,rear-left,rear-right,front-center",
        (true, 6) => "front-left,front-right,rear-left,rear-right,front-center,lfe",
        (true, 7) => "front-left,front-right,front-center,lfe,rear-center,side-left,side-right",
        (true, 8) => {
            "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right"
        }
        _ => "",
    };
    let Ok(mut dec) = Decoder::with_map(compression, fmt, map) else {
        return;
    };
    let ch = usize::from(channels);
    let quantum = rate as usize / 400;
    let mut rest = &data[2..];
    let mut out = Vec::new();
    let mut ops = 0;
    while let Some((&op, tail)) = rest.split_first() {
        ops += 1;
        if ops > 64 {
            break;
        }
        rest = tail;
        let before = out.len();
        match op % 4 {
            // A packet of (op / 4) * 4 + next byte bytes, at most what is left.
            0 | 1 => {
                let Some((&lo, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                let len = (usize::from(op / 4) * 256 + usize::from(lo)).min(rest.len());
                let (pkt, tail) = rest.split_at(len);
                rest = tail;
                match dec.decode(pkt, &mut out) {
                    Ok(n) => {
                        assert_eq!(out.len() - before, n * ch);
                        assert!(
                            n <= rate as usize * 120 / 1000 || compression == Compression::None
                        );
                    }
                    Err(_) => assert_eq!(out.len(), before),
                }
            }
            // Concealment of (op / 4) quanta of 2.5 ms (0 and odd counts are errors for
            // some formats, which is part of the test).
            2 => {
                let n = usize::from(op / 4) * quantum + usize::from(op & 0x80 != 0);
                match dec.conceal(n, &mut out) {
                    Ok(got) => {
                        assert_eq!(out.len() - before, got * ch);
                        assert!(got <= n);
                    }
                    Err(_) => assert_eq!(out.len(), before),
                }
            }
            // FEC recovery from the next packet.
            _ => {
                let len = usize::from(op / 4).min(rest.len());
                let (pkt, tail) = rest.split_at(len);
                rest = tail;
                let n = usize::from(op & 0x0c) * quantum;
                match dec.decode_fec(pkt, n, &mut out) {
                    Ok(got) => {
                        assert_eq!(out.len() - before, got * ch);
                        assert!(got <= n);
                    }
                    Err(_) => assert_eq!(out.len(), before),
                }
            }
        }
        if out.len() > 1 << 20 {
            out.clear();
        }
    }
    for s in &out {
        assert!(s.is_finite());
    }
});
