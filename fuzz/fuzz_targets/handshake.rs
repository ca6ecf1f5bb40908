//! Handshake text: `Hello::parse`, `Reply::parse`, `AuthMessage::parse`, `HeadReader::push`
//! in fuzzer-chosen chunks, and both sides of the cookie exchange fed with the messages the
//! reader cuts out of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opus_tunnel_core::auth::{AuthMessage, ClientAuth, Cookie, Nonce, ServerAuth};
use opus_tunnel_core::handshake::{HeadReader, Hello, Reply, MAX_MESSAGE};

fn parse_all(text: &str) {
    if let Ok(h) = Hello::parse(text) {
        // What we write from a parsed hello must say the same thing where it parses again.
        if let Ok(h2) = Hello::parse(&h.to_text()) {
            assert_eq!(h.direction, h2.direction);
            assert_eq!(h.codec, h2.codec);
            assert_eq!((h.rate, h.channels), (h2.rate, h2.channels));
            assert_eq!(h.frame_usec, h2.frame_usec);
            assert_eq!(h.target_latency_usec, h2.target_latency_usec);
        }
    }
    if let Ok(r) = Reply::parse(text) {
        assert!((100..=999).contains(&r.status));
        if let Ok(r2) = Reply::parse(&r.to_text()) {
            assert_eq!((r.version, r.status), (r2.version, r2.status));
        }
    }
    if let Ok(a) = AuthMessage::parse(text) {
        assert_eq!(AuthMessage::parse(&a.to_text()).as_ref(), Ok(&a));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_seed, data)) = data.split_first() else {
        return;
    };
    // Whole input as one message.
    if let Ok(text) = std::str::from_utf8(data) {
        parse_all(text);
    }
    parse_all(&String::from_utf8_lossy(data));

    // The same bytes as a stream, in chunks of 1..=256 bytes chosen by `chunk_seed`.
    let mut reader = HeadReader::new();
    let mut messages = Vec::new();
    let mut consumed = 0usize;
    let mut pos = 0usize;
    let mut step = usize::from(chunk_seed) + 1;
    while pos < data.len() {
        let end = (pos + step).min(data.len());
        let chunk = &data[pos..end];
        step = (step * 7 + 3) % 256 + 1;
        pos = end;
        match reader.push(chunk) {
            Ok(None) => {
                assert!(reader.buffered() <= MAX_MESSAGE + chunk.len());
            }
            Ok(Some((text, rest))) => {
                assert!(text.len() <= MAX_MESSAGE);
                assert!(
                    text.ends_with("\n\n")
                        || text.ends_with("\n\r\n")
                        || text == "\n"
                        || text == "\r\n"
                );
                assert_eq!(text.as_bytes(), &data[consumed..consumed + text.len()]);
                consumed += text.len();
                assert_eq!(&rest[..], &data[consumed..pos]);
                messages.push(text);
                // Start the next message with the leftover, as a connection would.
                reader = HeadReader::new();
                pos = consumed;
                if messages.len() == 4 {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    for m in &messages {
        parse_all(m);
    }

    // Both sides of the cookie exchange against whatever came in.
    let cookie = match Cookie::from_bytes(&[0x5a; 256]) {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut server = ServerAuth::with_nonce(cookie.clone(), Nonce([7; 32]));
    let mut client = ClientAuth::with_nonce(Some(cookie), Nonce([9; 32]));
    let mut hello = Hello::parse(
        "OPUS-TUNNEL/1 PLAY\nName: n\nCodec: opus\nRate: 48000\nChannels: 2\nFrame-Usec: 20000\n\n",
    )
    .expect("fixed hello parses");
    let _ = client.hello_text(&mut hello);
    let mut it = messages.iter();
    if let Some(first) = it.next() {
        if let Ok(h) = Hello::parse(first) {
            let _ = server.on_hello(first, &h);
        }
        if let Ok(r) = Reply::parse(first) {
            let _ = client.on_reply(&r);
        }
    }
    for m in it {
        // A forged proof never passes.
        assert!(server.on_auth(m).is_err());
        if let Ok(r) = Reply::parse(m) {
            let _ = client.on_reply(&r);
        }
    }
});
