//! The receive path of `transport=udp`: arbitrary datagrams (cleartext, and sealed ones with
//! bits flipped) through the opener and its replay window, then what opens through the parity
//! decoder, the RTP parser, the FEC flag reader and the jitter buffer. Nothing may panic; a
//! counter opens at most once; a sealed datagram opens only unchanged; a rebuilt packet is an
//! RTP packet of the sequence number it was rebuilt for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::jitter::JitterBuffer;
use opus_tunnel_core::rtp::parse_rtp;
use opus_tunnel_core::secure::{pair, Pattern};
use opus_tunnel_core::udp::{
    opus_has_fec, DgramOpener, DgramSealer, ParityDecoder, KIND_PARITY, KIND_RTP,
};
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let Ok(((is, _), (_, ro))) = pair(Pattern::Nn, None, None, b"fuzz") else {
        return;
    };
    let mut clear = DgramOpener::new(None);
    let mut sealed = DgramOpener::new(Some(ro.transport_key()));
    let mut sealer = DgramSealer::new(7, Some(is.transport_key()));
    let mut parity = ParityDecoder::new();
    let mut jitter = JitterBuffer::new(64);
    let mut seen = HashSet::new();
    let mut p = 0;
    while p + 2 <= data.len() {
        let len = usize::from(data[p]) * 4 + usize::from(data[p + 1] % 4);
        let flip = data[p + 1];
        p += 2;
        let d = &data[p..(p + len).min(data.len())];
        p += d.len();
        // As a cleartext datagram.
        let counter = d.get(4..12).map(|c| c.to_vec());
        if let Ok((kind, body)) = clear.open(d) {
            let body = body.to_vec();
            assert!(seen.insert(counter), "a counter opened twice");
            let rebuilt = match kind {
                KIND_PARITY => parity.on_block(&body),
                KIND_RTP => match parse_rtp(&body) {
                    Ok((h, payload)) => {
                        let _ = opus_has_fec(payload);
                        let _ = jitter.push(h.seq, h.timestamp, payload.to_vec());
                        parity.on_packet(h.seq, &body)
                    }
                    Err(_) => None,
                },
                _ => None,
            };
            if let Some(r) = rebuilt {
                let (h, payload) = parse_rtp(&r).expect("a rebuilt packet parses");
                let _ = jitter.push(h.seq, h.timestamp, payload.to_vec());
            }
            while jitter.pop().is_some() {}
        }
        // Sealed: the datagram made from these bytes opens; with a bit flipped (past the
        // token) it does not.
        let mut dg = Vec::new();
        if sealer.seal(KIND_RTP, d, &mut dg).is_ok() {
            if flip & 1 == 1 {
                let bit = 32 + usize::from(flip) * 7 % (dg.len() * 8 - 32);
                dg[bit / 8] ^= 1 << (bit % 8);
                assert!(sealed.open(&dg).is_err());
            } else {
                let (kind, body) = sealed.open(&dg).expect("a fresh sealed datagram opens");
                assert_eq!(kind, KIND_RTP);
                assert_eq!(body, d);
                assert!(sealed.open(&dg).is_err(), "a replay opened");
            }
        }
        let _ = sealed.open(d);
    }
});
