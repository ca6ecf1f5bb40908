//! RFC 4571 deframer: arbitrary bytes in arbitrary chunks with a small `max_len`, checked
//! against a straightforward reference parse of the whole stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::framing::{frame, Deframer, MAX_FRAME_LEN};

/// Frames of `stream` and whether it ends in an error (a length of 0 or above `max_len`).
fn reference(stream: &[u8], max_len: usize) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut p = 0;
    while stream.len() - p >= 2 {
        let len = usize::from(u16::from_be_bytes([stream[p], stream[p + 1]]));
        if len == 0 || len > max_len {
            return (out, true);
        }
        if stream.len() - p - 2 < len {
            break;
        }
        out.push(&stream[p + 2..p + 2 + len]);
        p += 2 + len;
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max_len = match data[0] {
        255 => MAX_FRAME_LEN,
        b => usize::from(b),
    };
    let mut step = usize::from(data[1] % 64) + 1;
    let stream = &data[2..];
    let (want, want_err) = reference(stream, max_len);

    let mut d = Deframer::new(max_len);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut pos = 0;
    while pos < stream.len() && !failed {
        let end = (pos + step).min(stream.len());
        let chunk_len = end - pos;
        d.push(&stream[pos..end]);
        pos = end;
        step = (step * 5 + 1) % 97 + 1;
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= max_len);
                    got.push(f);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    // Sticky.
                    assert!(d.next_frame().is_err());
                    break;
                }
            }
        }
        if !failed {
            // Drained: at most one incomplete frame plus what the last push added.
            assert!(d.buffered() <= max_len + 2 + chunk_len);
            assert!(d.buffered() <= max_len + 1);
        }
    }
    assert_eq!(failed, want_err);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g[..], *w);
    }
    // Re-framing what came out gives back the consumed prefix of the stream.
    let mut again = Vec::new();
    for g in &got {
        frame(g, &mut again).expect("frames of 1..=65535 bytes frame again");
    }
    assert_eq!(&again[..], &stream[..again.len()]);
});
