//! RTP and RTCP parsing: `parse_rtp`, `parse_rtcp`, `is_rtcp`, with round trips through the
//! writers where the parse succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::rtp::{is_rtcp, parse_rtcp, parse_rtp, write_rtcp, write_rtp, Control};

fuzz_target!(|data: &[u8]| {
    let rtcp = is_rtcp(data);
    assert_eq!(rtcp, data.len() >= 2 && (192..=223).contains(&data[1]));
    if let Ok((h, payload)) = parse_rtp(data) {
        assert!(h.payload_type < 128);
        assert!(payload.len() + 12 <= data.len());
        let mut out = Vec::new();
        write_rtp(&h, payload, &mut out);
        let (h2, p2) = parse_rtp(&out).expect("what we write parses");
        assert_eq!(h, h2);
        assert_eq!(payload, p2);
    }
    if let Ok(msgs) = parse_rtcp(data) {
        let mut out = Vec::new();
        write_rtcp(0x1234_5678, &msgs, &mut out);
        if !msgs.is_empty() {
            let again = parse_rtcp(&out).expect("what we write parses");
            // The parser accepts control characters in a bye reason (not in reports or
            // knobs); the writer turns them into spaces. Everything else round-trips.
            let expected: Vec<Control> = msgs
                .iter()
                .map(|m| match m {
                    Control::Bye(r) => Control::Bye(
                        r.chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect();
            assert_eq!(again, expected);
        }
    }
});
