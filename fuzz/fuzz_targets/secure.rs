//! The decrypting deframer (`secure::Opener`): records sealed by a real sender, then damaged
//! by the input (bytes XORed in, a cut, arbitrary chunking), or the input itself taken as
//! records. It never panics, never opens a damaged record, and opens undamaged ones intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::secure::{pair, Pattern};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let psk = [7u8; 32];
    let (pattern, psk) = if data[0] & 1 == 0 {
        (Pattern::Nn, None)
    } else {
        (Pattern::NnPsk0, Some(&psk))
    };
    let Ok(((mut sealer, _), (_, mut opener))) = pair(pattern, psk, psk, b"fuzz") else {
        panic!("an undamaged handshake failed");
    };
    let raw = data[1] & 0x80 != 0;
    let mut step = usize::from(data[2] % 200) + 1;
    let body = &data[3..];
    // The records: sealed plaintexts (lengths from the input), or the input itself.
    let mut plain: Vec<Vec<u8>> = Vec::new();
    let mut wire = Vec::new();
    if raw {
        wire.extend_from_slice(body);
    } else {
        for (i, &len) in body.iter().take(8).enumerate() {
            let p = vec![i as u8; usize::from(len) + 1];
            sealer.seal(&p, &mut wire).expect("seal");
            plain.push(p);
        }
        // Damage: XOR the rest of the input in, from an offset the input picks.
        let mask = body.get(8..).unwrap_or(&[]);
        let at = usize::from(data[1] & 0x7f) * 7 % wire.len().max(1);
        for (j, m) in mask.iter().enumerate() {
            if let Some(b) = wire.get_mut(at + j) {
                *b ^= m;
            }
        }
    }
    let pristine_upto = if raw {
        0
    } else {
        let mask = body.get(8..).unwrap_or(&[]);
        let at = usize::from(data[1] & 0x7f) * 7 % wire.len().max(1);
        mask.iter().position(|&m| m != 0).map_or(usize::MAX, |j| at + j)
    };
    let mut opened: Vec<Vec<u8>> = Vec::new();
    let mut pos = 0;
    let mut consumed = 0usize;
    'feed: while pos < wire.len() {
        let end = (pos + step).min(wire.len());
        opener.push(&wire[pos..end]);
        pos = end;
        step = (step * 7 + 3) % 251 + 1;
        loop {
            match opener.next_plain() {
                Ok(Some(p)) => {
                    let n = opened.len();
                    // Only sealed records open, in order, intact.
                    assert!(!raw, "random bytes opened as a record");
                    assert_eq!(Some(&p), plain.get(n));
                    consumed += 2 + p.len() + 16;
                    assert!(consumed <= pristine_upto, "a damaged record opened");
                    opened.push(p);
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(opener.next_plain().is_err(), "errors are sticky");
                    break 'feed;
                }
            }
        }
    }
    if pristine_upto == usize::MAX && !raw {
        assert_eq!(opened, plain);
    }
});
