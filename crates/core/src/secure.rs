//! Encryption of everything after the hello: the Noise protocol framework, through the `snow`
//! crate (no cryptography of our own).
//!
//! The hello and its reply stay readable text (capability detection, refusals a person can
//! read). A version 2 hello carries `Encryption: noise` (or `none`); the `200` reply names
//! what was chosen (`Encryption: Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`,
//! `Noise_NN_25519_ChaChaPoly_BLAKE2s` or `none`). With a Noise pattern, the two handshake
//! messages follow the `200` as RFC 4571 frames (the tunnel is the initiator, the receiver
//! the responder), and from then on every byte either end sends travels in Noise transport
//! messages ("records"), each framed with its 2-byte length: the RTP, RTCP and control
//! frames inside them are exactly the cleartext protocol's.
//!
//! * With a cookie (the receiver asked for it and the tunnel proved it): `NNpsk0`, the cookie
//!   as pre-shared key (SHA-256 of the cookie when it is not 32 bytes): only the two holders
//!   of the cookie can complete it; ephemeral X25519 keys give forward secrecy.
//! * Without one (peers admitted by `auth-ip-acl` or `auth-anonymous`): `NN`, ephemeral keys
//!   only: a passive listener hears nothing, an active man in the middle is not kept out
//!   (no shared secret to tell him apart).
//!
//! The prologue binds the hello and the `200` reply exactly as they crossed the wire, so a
//! change to the readable part (a downgrade of `Encryption`, a changed codec) fails the
//! handshake. Nonces are the record counters of each direction (Noise's transport rule): a
//! tampered, replayed, reordered, dropped or truncated record fails to decrypt, and the
//! connection closes (the tunnel reconnects).
use crate::auth::Cookie;
use crate::framing::{self, Deframer, MAX_FRAME_LEN};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The pattern with a cookie as pre-shared key.
pub const PATTERN_PSK: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The pattern without a shared secret.
pub const PATTERN_NN: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";
/// The `Encryption` value (and property) of a cleartext tunnel.
pub const NONE: &str = "none";
/// What a version 2 hello asks for when it wants encryption.
pub const REQUEST_NOISE: &str = "noise";
/// The header of the hello (what the tunnel wants) and of the `200` (what was chosen).
pub const HEADER: &str = "Encryption";
/// Bytes an AEAD tag adds to each record.
pub const TAG_LEN: usize = 16;
/// Most cleartext bytes in one record (a record, tag included, fits the 16-bit frame length).
pub const MAX_RECORD_PLAIN: usize = MAX_FRAME_LEN - TAG_LEN;
/// Most bytes in one Noise handshake message we accept (ours are 32 and 48).
const MAX_HANDSHAKE_MSG: usize = 1024;

/// The `encryption=` argument of the tunnels and the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Tunnel: encrypt whenever the peer can; cleartext (with a warning) only for a peer of
    /// the older wire version. Receiver: encrypt whenever the tunnel asks.
    #[default]
    Auto,
    /// Never cleartext: a tunnel refuses an older receiver; a receiver answers a cleartext
    /// tunnel `426 Encryption Required`.
    Required,
    /// Cleartext (debugging): a tunnel asks for none; a receiver refuses encryption.
    None,
}

impl Mode {
    /// `auto`, `required` or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Required => "required",
            Mode::None => "none",
        }
    }

    /// Parses the argument `key` (`auto` when not given); the error names the key.
    pub fn parse(key: &str, value: Option<&str>) -> Result<Mode, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(Mode::Auto),
            Some(v) if v == "auto" => Ok(Mode::Auto),
            Some(v) if v == "required" => Ok(Mode::Required),
            Some(v) if v == "none" => Ok(Mode::None),
            Some(v) => Err(format!(
                "{key}: {v:?} is not accepted (auto, required or none)"
            )),
        }
    }
}

/// A Noise pattern this implementation speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// [`PATTERN_NN`].
    Nn,
    /// [`PATTERN_PSK`].
    NnPsk0,
}

impl Pattern {
    /// The pattern's full Noise name.
    pub fn name(&self) -> &'static str {
        match self {
            Pattern::Nn => PATTERN_NN,
            Pattern::NnPsk0 => PATTERN_PSK,
        }
    }

    /// The pattern of a full Noise name (case-sensitive, as Noise names are).
    pub fn from_name(name: &str) -> Option<Pattern> {
        match name.trim() {
            PATTERN_NN => Some(Pattern::Nn),
            PATTERN_PSK => Some(Pattern::NnPsk0),
            _ => None,
        }
    }
}

/// What a connection ended up with, as statistics and properties show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Cleartext (or not connected yet).
    #[default]
    None,
    /// Encrypted with this pattern.
    Noise(Pattern),
}

impl State {
    /// The property value: the pattern's name, or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::None => NONE,
            State::Noise(p) => p.name(),
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            State::None => 0,
            State::Noise(Pattern::Nn) => 1,
            State::Noise(Pattern::NnPsk0) => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::Noise(Pattern::Nn),
            2 => State::Noise(Pattern::NnPsk0),
            _ => State::None,
        }
    }
}

/// Why encryption failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// The Noise handshake failed (a wrong cookie, a changed hello, garbage).
    #[error("encryption handshake failed: {0}")]
    Handshake(String),
    /// A record did not decrypt: tampered, replayed, reordered, dropped or cut short.
    #[error("a record failed authentication (tampered, replayed, reordered or truncated data)")]
    Decrypt,
    /// The framing of the records is broken.
    #[error("bad record framing: {0}")]
    Framing(String),
    /// A record's counter would wrap (after 2^64 - 1 records; never in practice).
    #[error("record counter exhausted")]
    Exhausted,
}

/// The pre-shared key of a cookie: the cookie itself when it is 32 bytes, else its SHA-256.
pub fn psk_of(cookie: &Cookie) -> [u8; 32] {
    let b = cookie.bytes();
    let mut k = [0u8; 32];
    if b.len() == 32 {
        k.copy_from_slice(b);
    } else {
        k.copy_from_slice(&Sha256::digest(b));
    }
    k
}

/// The prologue both ends feed Noise: a label, then the hello and the `200` reply exactly as
/// they crossed the wire (each preceded by its length).
pub fn prologue(hello_text: &str, reply_text: &str) -> Vec<u8> {
    let mut p = b"opus-tunnel/2 noise\0".to_vec();
    for t in [hello_text, reply_text] {
        p.extend_from_slice(&(t.len() as u64).to_be_bytes());
        p.extend_from_slice(t.as_bytes());
    }
    p
}

/// One side of a Noise handshake in progress (no I/O: feed it messages).
pub struct Handshake {
    state: snow::HandshakeState,
    pattern: Pattern,
}

impl Handshake {
    /// Starts a handshake. `psk` is required for [`Pattern::NnPsk0`] and ignored otherwise.
    pub fn new(
        pattern: Pattern,
        initiator: bool,
        psk: Option<&[u8; 32]>,
        prologue: &[u8],
    ) -> Result<Handshake, SecureError> {
        let params: snow::params::NoiseParams = pattern
            .name()
            .parse()
            .map_err(|e| SecureError::Handshake(format!("{e:?}")))?;
        let mut b = snow::Builder::new(params).prologue(prologue);
        if pattern == Pattern::NnPsk0 {
            let k = psk.ok_or_else(|| {
                SecureError::Handshake("the pattern needs a pre-shared key (a cookie)".into())
            })?;
            b = b.psk(0, k);
        }
        let state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(|e| SecureError::Handshake(format!("{e:?}")))?;
        Ok(Handshake { state, pattern })
    }

    /// Our next handshake message.
    pub fn write(&mut self) -> Result<Vec<u8>, SecureError> {
        let mut out = vec![0u8; MAX_HANDSHAKE_MSG];
        let n = self
            .state
            .write_message(&[], &mut out)
            .map_err(|e| SecureError::Handshake(format!("{e:?}")))?;
        out.truncate(n);
        Ok(out)
    }

    /// The peer's handshake message (its payload must be empty).
    pub fn read(&mut self, msg: &[u8]) -> Result<(), SecureError> {
        if msg.len() > MAX_HANDSHAKE_MSG {
            return Err(SecureError::Handshake(format!(
                "a handshake message of {} bytes",
                msg.len()
            )));
        }
        let mut out = vec![0u8; MAX_HANDSHAKE_MSG];
        let n = self.state.read_message(msg, &mut out).map_err(|e| {
            SecureError::Handshake(match e {
                snow::Error::Decrypt => {
                    "the peer's handshake does not authenticate (a different cookie, or a \
                     changed hello)"
                        .to_string()
                }
                e => format!("{e:?}"),
            })
        })?;
        if n != 0 {
            return Err(SecureError::Handshake(
                "unexpected payload in a handshake message".into(),
            ));
        }
        Ok(())
    }

    /// True once both messages have passed.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The two halves of the transport: what we send with, what we receive with.
    pub fn into_transport(self) -> Result<(Sealer, Opener), SecureError> {
        let pattern = self.pattern;
        let t = Arc::new(
            self.state
                .into_stateless_transport_mode()
                .map_err(|e| SecureError::Handshake(format!("{e:?}")))?,
        );
        Ok((
            Sealer {
                state: t.clone(),
                nonce: 0,
                pattern,
            },
            Opener {
                state: t,
                nonce: 0,
                deframer: Deframer::new(MAX_FRAME_LEN),
                failed: None,
            },
        ))
    }
}

/// The sending half: turns cleartext into framed records.
pub struct Sealer {
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    pattern: Pattern,
}

impl Sealer {
    /// The pattern the connection runs.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The connection's transport keys, for datagrams ([`crate::udp`]: they seal with
    /// explicit nonces from 2^63 up, which the records never reach).
    pub fn transport_key(&self) -> Arc<snow::StatelessTransportState> {
        self.state.clone()
    }

    /// Appends `plain` to `out` as records (one per [`MAX_RECORD_PLAIN`] bytes), each with its
    /// 2-byte length. On error `out` may hold part of the records: the stream is unusable.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        for chunk in plain.chunks(MAX_RECORD_PLAIN) {
            if self.nonce == u64::MAX {
                return Err(SecureError::Exhausted);
            }
            let n = self
                .state
                .write_message(self.nonce, chunk, &mut buf)
                .map_err(|e| SecureError::Framing(format!("{e:?}")))?;
            self.nonce += 1;
            framing::frame(&buf[..n], out).map_err(|e| SecureError::Framing(e.to_string()))?;
        }
        Ok(())
    }
}

/// The receiving half: splits the byte stream into records and opens them in order. Any
/// failure is final (sticky): close the connection.
pub struct Opener {
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    deframer: Deframer,
    failed: Option<SecureError>,
}

impl Opener {
    /// The connection's transport keys, for datagrams (see [`Sealer::transport_key`]).
    pub fn transport_key(&self) -> Arc<snow::StatelessTransportState> {
        self.state.clone()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.deframer.push(bytes);
        }
    }

    /// The next record's cleartext, `Ok(None)` when more bytes are needed, or the (sticky)
    /// error.
    pub fn next_plain(&mut self) -> Result<Option<Vec<u8>>, SecureError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.open_next();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.deframer = Deframer::new(MAX_FRAME_LEN);
        }
        r
    }

    fn open_next(&mut self) -> Result<Option<Vec<u8>>, SecureError> {
        let rec = match self.deframer.next_frame() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => return Err(SecureError::Framing(e.to_string())),
        };
        if rec.len() < TAG_LEN {
            return Err(SecureError::Decrypt);
        }
        if self.nonce == u64::MAX {
            return Err(SecureError::Exhausted);
        }
        let mut out = vec![0u8; rec.len()];
        let n = self
            .state
            .read_message(self.nonce, &rec, &mut out)
            .map_err(|_| SecureError::Decrypt)?;
        self.nonce += 1;
        out.truncate(n);
        Ok(Some(out))
    }

    /// Bytes received and not yet opened.
    pub fn buffered(&self) -> usize {
        self.deframer.buffered()
    }
}

/// Runs a whole handshake in memory (both ends here): for tests, fuzzing and benchmarks.
/// Returns (initiator's sealer and opener, responder's sealer and opener).
#[allow(clippy::type_complexity)]
pub fn pair(
    pattern: Pattern,
    initiator_psk: Option<&[u8; 32]>,
    responder_psk: Option<&[u8; 32]>,
    prologue: &[u8],
) -> Result<((Sealer, Opener), (Sealer, Opener)), SecureError> {
    let mut i = Handshake::new(pattern, true, initiator_psk, prologue)?;
    let mut r = Handshake::new(pattern, false, responder_psk, prologue)?;
    let m1 = i.write()?;
    r.read(&m1)?;
    let m2 = r.write()?;
    i.read(&m2)?;
    Ok((i.into_transport()?, r.into_transport()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookie(seed: u8) -> Cookie {
        Cookie::from_bytes(&[seed; 256]).unwrap()
    }

    fn drain(o: &mut Opener) -> Result<Vec<u8>, SecureError> {
        let mut all = Vec::new();
        while let Some(p) = o.next_plain()? {
            all.extend_from_slice(&p);
        }
        Ok(all)
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("encryption", None), Ok(Mode::Auto));
        assert_eq!(
            Mode::parse("encryption", Some("Required")),
            Ok(Mode::Required)
        );
        assert_eq!(Mode::parse("encryption", Some(" none ")), Ok(Mode::None));
        let e = Mode::parse("tunnel.encryption", Some("tls")).unwrap_err();
        assert_eq!(
            e,
            "tunnel.encryption: \"tls\" is not accepted (auto, required or none)"
        );
        for s in [
            State::None,
            State::Noise(Pattern::Nn),
            State::Noise(Pattern::NnPsk0),
        ] {
            assert_eq!(State::from_u8(s.to_u8()), s);
        }
        assert_eq!(Pattern::from_name(PATTERN_PSK), Some(Pattern::NnPsk0));
        assert_eq!(Pattern::from_name("Noise_XX_25519_AESGCM_SHA256"), None);
    }

    #[test]
    fn psk_is_the_cookie_or_its_hash() {
        let c32 = Cookie::from_bytes(&[9u8; 32]).unwrap();
        assert_eq!(psk_of(&c32), [9u8; 32]);
        let c = cookie(1);
        assert_eq!(psk_of(&c).to_vec(), Sha256::digest([1u8; 256]).to_vec());
    }

    #[test]
    fn both_patterns_carry_data_both_ways() {
        let k = psk_of(&cookie(3));
        for (pattern, psk) in [(Pattern::Nn, None), (Pattern::NnPsk0, Some(&k))] {
            let ((mut is, mut io), (mut rs, mut ro)) = pair(pattern, psk, psk, b"p").unwrap();
            assert_eq!(is.pattern(), pattern);
            // Big enough to need several records.
            let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
            let mut wire = Vec::new();
            is.seal(&data, &mut wire).unwrap();
            assert_eq!(wire.len(), data.len() + 4 * (2 + TAG_LEN));
            // Cleartext does not show through.
            assert!(!wire.windows(64).any(|w| w == &data[1000..1064]));
            for c in wire.chunks(777) {
                ro.push(c);
            }
            assert_eq!(drain(&mut ro).unwrap(), data);
            let mut back = Vec::new();
            rs.seal(b"hello", &mut back).unwrap();
            io.push(&back);
            assert_eq!(drain(&mut io).unwrap(), b"hello");
        }
    }

    #[test]
    fn wrong_cookie_or_prologue_fails_the_handshake() {
        let (a, b) = (psk_of(&cookie(1)), psk_of(&cookie(2)));
        assert!(matches!(
            pair(Pattern::NnPsk0, Some(&a), Some(&b), b"p"),
            Err(SecureError::Handshake(_))
        ));
        let mut i = Handshake::new(Pattern::Nn, true, None, b"hello A").unwrap();
        let mut r = Handshake::new(Pattern::Nn, false, None, b"hello B").unwrap();
        let m1 = i.write().unwrap();
        r.read(&m1).unwrap();
        let m2 = r.write().unwrap();
        assert!(i.read(&m2).is_err());
        assert!(Handshake::new(Pattern::NnPsk0, true, None, b"").is_err());
        // Garbage as a handshake message.
        let mut r = Handshake::new(Pattern::NnPsk0, false, Some(&a), b"").unwrap();
        assert!(r.read(&[0u8; 5]).is_err());
        assert!(r.read(&[0u8; 4000]).is_err());
    }

    fn sealed_records(n: usize) -> (Vec<Vec<u8>>, Opener) {
        let ((mut s, _), (_, o)) = pair(Pattern::Nn, None, None, b"").unwrap();
        let recs = (0..n)
            .map(|i| {
                let mut w = Vec::new();
                s.seal(&[i as u8; 100], &mut w).unwrap();
                w
            })
            .collect();
        (recs, o)
    }

    #[test]
    fn tampered_replayed_reordered_truncated_records_fail() {
        // Tampered: every single bit flip anywhere in a record.
        let (recs, _) = sealed_records(1);
        for bit in 0..recs[0].len() * 8 {
            let ((mut s, _), (_, mut o)) = pair(Pattern::Nn, None, None, b"").unwrap();
            let mut w = Vec::new();
            s.seal(&[5u8; 100], &mut w).unwrap();
            w[bit / 8] ^= 1 << (bit % 8);
            o.push(&w);
            match o.next_plain() {
                Err(_) => {}
                // A flip in the length field can make the record look incomplete.
                Ok(None) => assert!(bit < 16, "bit {bit}"),
                Ok(Some(p)) => panic!("bit {bit} flipped and {} bytes opened", p.len()),
            }
        }
        // Replayed.
        let (recs, mut o) = sealed_records(2);
        o.push(&recs[0]);
        o.push(&recs[0]);
        assert!(o.next_plain().unwrap().is_some());
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        // Sticky.
        o.push(&recs[1]);
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        // Reordered.
        let (recs, mut o) = sealed_records(2);
        o.push(&recs[1]);
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        // Dropped.
        let (recs, mut o) = sealed_records(3);
        o.push(&recs[0]);
        o.push(&recs[2]);
        assert!(o.next_plain().unwrap().is_some());
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        // Truncated: a record cut short and followed by the next.
        let (recs, mut o) = sealed_records(2);
        let mut cut = recs[0].clone();
        cut.truncate(cut.len() - 3);
        let len = (cut.len() - 2) as u16;
        cut[..2].copy_from_slice(&len.to_be_bytes());
        o.push(&cut);
        o.push(&recs[1]);
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        // Shorter than a tag, and an empty frame.
        let (_, mut o) = sealed_records(0);
        o.push(&[0, 3, 1, 2, 3]);
        assert_eq!(o.next_plain(), Err(SecureError::Decrypt));
        let (_, mut o) = sealed_records(0);
        o.push(&[0, 0]);
        assert!(matches!(o.next_plain(), Err(SecureError::Framing(_))));
    }

    /// What encryption costs: the CPU time to seal and open one stream-second (50 packets of
    /// 20 ms), Opus at 64 kbit/s (160-byte packets) and 48 kHz stereo L16 (3840 bytes).
    /// `cargo test --release -p opus-tunnel-core --lib secure::tests::cost -- --ignored
    /// --nocapture`
    #[test]
    #[ignore]
    fn cost_per_stream_second() {
        for (what, len) in [("opus 64k", 160usize), ("L16 stereo", 3840)] {
            let ((mut s, _), (_, mut o)) = pair(Pattern::Nn, None, None, b"").unwrap();
            let pkt = vec![0x5a; len + 14];
            let seconds = 200;
            let t = std::time::Instant::now();
            let mut wire = Vec::new();
            for _ in 0..seconds * 50 {
                wire.clear();
                s.seal(&pkt, &mut wire).unwrap();
                o.push(&wire);
                assert_eq!(o.next_plain().unwrap().map(|p| p.len()), Some(pkt.len()));
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / seconds as f64;
            println!(
                "{what}: {us:.1} us of CPU per stream-second to seal and open ({:.4} % of a core)",
                us / 1e4
            );
        }
    }

    /// A small deterministic generator (no dependency for the test's randomness).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn random_and_flipped_ciphertext_never_panics_and_never_opens() {
        let mut rng = Lcg(0x5eed);
        for round in 0..2000 {
            let ((mut s, _), (_, mut o)) = pair(Pattern::Nn, None, None, b"").unwrap();
            let mut wire = Vec::new();
            let n = 1 + (rng.next() % 3) as usize;
            for _ in 0..n {
                let len = 1 + (rng.next() % 300) as usize;
                s.seal(&vec![0xA5; len], &mut wire).unwrap();
            }
            if round % 2 == 0 {
                // Random bytes instead of records.
                for b in wire.iter_mut() {
                    *b = rng.next() as u8;
                }
            } else {
                // One to four flipped bits.
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % wire.len();
                    wire[i] ^= 1 << (rng.next() % 8);
                }
            }
            let mut pos = 0;
            let mut opened = 0;
            let mut failed = false;
            while pos < wire.len() {
                let step = 1 + (rng.next() % 200) as usize;
                let end = (pos + step).min(wire.len());
                o.push(&wire[pos..end]);
                pos = end;
                loop {
                    match o.next_plain() {
                        Ok(Some(p)) => {
                            assert!(p.iter().all(|&b| b == 0xA5), "round {round}");
                            opened += 1;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break;
                }
            }
            // Damage never passes unnoticed: what opened came before the damage.
            assert!(failed || opened < n || o.buffered() > 0, "round {round}");
        }
    }
}
