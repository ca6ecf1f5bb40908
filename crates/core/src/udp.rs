//! `transport=udp`: the handshake, authentication and control stay on the TCP connection; the
//! audio (RTP) travels in UDP datagrams: a play tunnel's from the tunnel to the receiver's
//! `udp_port` (default 4715), a record tunnel's from that port to the tunnel.
//!
//! The hello asks `Transport: udp`; a receiver that can answers its `200` with
//! `Transport: udp`, `Udp-Port: N` and `Udp-Token: T` (a random 32-bit number naming the
//! connection); one that cannot (no UDP socket, an older peer) answers `Transport: tcp` or
//! nothing, and the tunnel logs that it fell back to TCP.
//!
//! A record tunnel (the tunnel source) receives: its desktop end sends probes
//! ([`KIND_PROBE`]) from a socket of its own to the far end's `Udp-Port`, and the far end
//! sends the audio from that port to the address the probes come from, so that the desktop
//! end needs no open port (NAT and firewalls there pass the answers to its probes). Until the
//! first probe arrives the far end sends its audio over TCP. The `200` is
//! covered by the cookie's signature and the Noise prologue, so neither can be changed on the
//! way.
//!
//! A datagram is
//!
//! ```text
//! token (u32, big-endian) | counter (u64, big-endian) | body
//! ```
//!
//! The counter starts at 0 and grows by one a datagram. In cleartext the body is the inner
//! message; on an encrypted connection it is the inner message sealed with the connection's
//! Noise transport key of that direction (through `snow`'s stateless transport, the nonce
//! being `2^63 + counter`: the TCP records use the nonces from 0 up, so the two never meet),
//! 16 bytes of tag added. The inner message is a kind byte and its bytes: [`KIND_RTP`] and an
//! RTP packet, [`KIND_PARITY`] and a parity block ([`ParityEncoder`]), [`KIND_PROBE`] (a record
//! tunnel's probe), or [`KIND_CONTROL`] and an RTCP packet from the receiving end back to the
//! sending end (repair requests).
//!
//! The receiver takes a datagram only from the IP address of the connection its token names,
//! only if it opens (encrypted), and only if its counter is new to a 1024-wide window
//! ([`ReplayWindow`]); everything else is dropped and counted, and never touches the stream.
//!
//! Loss protection: Opus in-band FEC (SILK and hybrid frames: the receiver decodes a lost
//! frame from the next packet), and one XOR parity block after every [`parity_group`] audio
//! packets (those of [`PARITY_SPAN_USEC`] of audio), which rebuilds any one lost packet of the
//! group (CELT frames too) when the block arrives before the lost packet's turn to play; and,
//! with `Udp-Repair: nack` on both sides ([`HEADER_REPAIR`]), repairs: the receiving end asks
//! for a burst of lost packets again ([`Repairs`], [`REPAIR_GAP_USEC`]) and the sending end
//! sends them again from its [`History`].
use crate::secure::SecureError;
use snow::StatelessTransportState;
use std::sync::Arc;

/// The receiver's UDP port when `udp_port=` is not given.
pub const DEFAULT_PORT: u16 = 4715;
/// The hello's request (`udp` or `tcp`) and the `200`'s grant.
pub const HEADER_TRANSPORT: &str = "Transport";
/// The `200`: the UDP port granted.
pub const HEADER_PORT: &str = "Udp-Port";
/// The `200`: the token naming the connection in every datagram.
pub const HEADER_TOKEN: &str = "Udp-Token";
/// The hello and the `200`: `Udp-Repair: nack`, this end takes part in repairs (it asks for
/// bursts of lost packets again with [`crate::rtp::Control::Nack`], and sends again what the
/// other end asks for). The `200` carries it only for a hello that did; without it the
/// receiving end never asks.
pub const HEADER_REPAIR: &str = "Udp-Repair";
/// The value of [`HEADER_REPAIR`].
pub const REPAIR_NACK: &str = "nack";
/// Bytes before the body: token and counter.
pub const HEADER_LEN: usize = 12;

/// The sequence numbers a control datagram's body ([`KIND_CONTROL`]) asks for again; nothing
/// for a body that does not parse.
pub fn repair_requests(rtcp: &[u8]) -> Vec<u16> {
    crate::rtp::parse_rtcp(rtcp)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| match c {
            crate::rtp::Control::Nack(seqs) => seqs,
            _ => Vec::new(),
        })
        .collect()
}

/// What the sending end of a UDP tunnel hears back in datagrams that opened (its token, its
/// key, a new counter): the repair requests, waiting for its worker, and when the far end last
/// spoke. A far end whose reports on the TCP connection are held back (TCP's retransmission
/// backoff on a lossy link doubles up to seconds while the datagrams pass) is alive while its
/// datagrams come: its keepalives ([`KIND_CONTROL`], every second) and probes
/// ([`KIND_PROBE`]).
#[derive(Debug, Clone, Default)]
pub struct Heard(Arc<std::sync::Mutex<HeardState>>);

#[derive(Debug, Default)]
struct HeardState {
    requests: Vec<u16>,
    at: Option<std::time::Instant>,
}

impl Heard {
    /// Repair requests kept waiting at most (four full ones).
    pub const MAX_REQUESTS: usize = 4 * crate::rtp::MAX_NACK;

    /// A datagram of `kind` with `body` opened: the far end spoke. Its repair requests, if any,
    /// wait for the worker (at most [`Heard::MAX_REQUESTS`]); returns whether there were any.
    pub fn datagram(&self, kind: u8, body: &[u8]) -> bool {
        let seqs = if kind == KIND_CONTROL {
            repair_requests(body)
        } else {
            Vec::new()
        };
        let Ok(mut s) = self.0.lock() else {
            return false;
        };
        s.at = Some(std::time::Instant::now());
        let room = Self::MAX_REQUESTS.saturating_sub(s.requests.len());
        let asked = !seqs.is_empty();
        s.requests.extend(seqs.into_iter().take(room));
        asked
    }

    /// The repair requests waiting.
    pub fn take_requests(&self) -> Vec<u16> {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut s.requests))
            .unwrap_or_default()
    }

    /// When the far end last spoke in a datagram.
    pub fn last(&self) -> Option<std::time::Instant> {
        self.0.lock().ok().and_then(|s| s.at)
    }
}

/// Whether headers carry `Udp-Repair: nack`.
pub fn offers_repair<'a>(fields: impl IntoIterator<Item = (&'a String, &'a String)>) -> bool {
    fields.into_iter().any(|(k, v)| {
        k.eq_ignore_ascii_case(HEADER_REPAIR) && v.trim().eq_ignore_ascii_case(REPAIR_NACK)
    })
}
/// The inner message is an RTP packet.
pub const KIND_RTP: u8 = 0;
/// The inner message is a parity block.
pub const KIND_PARITY: u8 = 1;
/// The inner message is a probe (no body) from the desktop end of a record tunnel to the
/// far end's UDP port: the far end sends the tunnel's audio to the address probes come from,
/// and the probes keep the way open through NAT and firewalls at the desktop's side
/// ([`PROBE_EVERY`] while someone records, [`PROBE_IDLE`] otherwise).
pub const KIND_PROBE: u8 = 2;
/// The inner message is control for the sending end: an RTCP packet of our APP controls
/// ([`crate::rtp::write_rtcp`]) from the receiving end: repair requests
/// ([`crate::rtp::Control::Nack`]) and, from a play tunnel's receiver, a keepalive every
/// second ([`Heard`]). They travel as datagrams, not on the TCP connection, where a lost
/// segment holds everything behind it until TCP resends it (on a lossy link, often longer than
/// the repair may take).
pub const KIND_CONTROL: u8 = 3;
/// How often a record tunnel probes while someone records from it.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a record tunnel probes while nobody records (NAT mappings last 30 s or more).
pub const PROBE_IDLE: std::time::Duration = std::time::Duration::from_secs(15);
/// The audio one parity block covers, µs: 6 packets of 20 ms, 12 of 10 ms. The block is one
/// more datagram a group, as long as the group's longest packet, so a group spans a fixed
/// time, not a fixed count: short frames do not pay twice the datagrams for it. A block
/// rebuilds a lost packet only if it arrives before that packet's turn to play, so at a
/// receive buffer of a couple of packets it rebuilds mostly the last packet or two of its
/// group, whatever the group's length: shorter groups rebuild more at more bytes. With 10 ms
/// frames over a lossless link the tone of `tests/tests/udp.rs` took 1.29× the TCP tunnel's
/// bytes (20 ms frames) with a block per 100 ms; this keeps UDP near 1.27×.
pub const PARITY_SPAN_USEC: u64 = 120_000;
/// The most packets one parity block covers (2.5 and 5 ms frames).
pub const MAX_PARITY_GROUP: usize = 16;

/// The audio packets one parity block covers, for packets of `packet_usec`: those of
/// [`PARITY_SPAN_USEC`], 2 to [`MAX_PARITY_GROUP`].
pub fn parity_group(packet_usec: u64) -> usize {
    (PARITY_SPAN_USEC / packet_usec.max(1)).clamp(2, MAX_PARITY_GROUP as u64) as usize
}
/// The largest datagram taken (an IPv4 UDP payload's limit).
pub const MAX_DATAGRAM: usize = 65_507;
/// Datagram nonces start here (TCP records count from 0).
const NONCE_BASE: u64 = 1 << 63;
/// Counters remembered behind the newest.
const WINDOW: u64 = 1024;

/// `transport=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Everything on the TCP connection (the default: it survives NX and SSH forwards).
    #[default]
    Tcp,
    /// Audio over UDP, control on TCP.
    Udp,
    /// Plain RTP over UDP, no handshake ([`crate::plain_rtp`]; `server=rtp://`, `rtp_port=`):
    /// never chosen by the `transport` argument.
    Rtp,
}

impl Transport {
    /// `tcp` or `udp`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Rtp => "rtp",
        }
    }

    /// Parses the argument `key` (`tcp` when not given); the error names the key.
    pub fn parse(key: &str, value: Option<&str>) -> Result<Transport, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(Transport::Tcp),
            Some(v) if v == "tcp" => Ok(Transport::Tcp),
            Some(v) if v == "udp" => Ok(Transport::Udp),
            Some(v) => Err(format!("{key}: {v:?} is not accepted (tcp or udp)")),
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than its header, or longer than allowed, or an empty body.
    Malformed,
    /// Its token names no connection.
    UnknownToken,
    /// It came from another address than the connection's peer.
    Foreign,
    /// It does not open with the connection's key (tampered, or another key).
    Tampered,
    /// Its counter was seen already, or is too old for the window.
    Replayed,
    /// The tunnel's queue is full (its thread does not keep up).
    Overflow,
}

impl Drop {
    /// For the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownToken => "unknown token",
            Drop::Foreign => "from another address than the tunnel's peer",
            Drop::Tampered => "does not authenticate",
            Drop::Replayed => "replayed",
            Drop::Overflow => "the tunnel's queue is full",
        }
    }
}

/// The token of a datagram, if it has a whole header.
pub fn token_of(dgram: &[u8]) -> Option<u32> {
    let b = dgram.get(..4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Accepts each counter once: the newest seen and a bitmap of the [`WINDOW`] before it
/// (RFC 6479's idea, in a plain bitmap).
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The newest counter accepted, plus one (0: none yet).
    top: u64,
    /// Bit `i` of the bitmap: counter `top - 1 - i` was accepted.
    bits: [u64; (WINDOW / 64) as usize],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> ReplayWindow {
        ReplayWindow::default()
    }

    /// Whether `n` would be accepted (new and not too old). Does not change the window.
    pub fn check(&self, n: u64) -> bool {
        if n >= self.top {
            return n != u64::MAX;
        }
        let back = self.top - 1 - n;
        back < WINDOW && !self.bit(back)
    }

    /// Checks `n` and, if accepted, remembers it.
    pub fn accept(&mut self, n: u64) -> bool {
        if !self.check(n) {
            return false;
        }
        if n >= self.top {
            let shift = n + 1 - self.top;
            self.shift(shift);
            self.top = n + 1;
            self.set(0);
        } else {
            self.set(self.top - 1 - n);
        }
        true
    }

    fn bit(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves every bit `by` places older (bits past the window fall off).
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = Default::default();
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        let n = self.bits.len();
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.bits[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }
}

/// The sending half: numbers, seals (when the connection is encrypted) and frames datagrams.
pub struct DgramSealer {
    key: Option<Arc<StatelessTransportState>>,
    token: u32,
    counter: u64,
}

impl DgramSealer {
    /// Datagrams for the connection `token`, sealed with `key` (`None`: cleartext).
    pub fn new(token: u32, key: Option<Arc<StatelessTransportState>>) -> DgramSealer {
        DgramSealer {
            key,
            token,
            counter: 0,
        }
    }

    /// `out` becomes the datagram carrying `kind` and `body`.
    pub fn seal(&mut self, kind: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        if self.counter >= NONCE_BASE - 1 {
            return Err(SecureError::Exhausted);
        }
        let n = self.counter;
        self.counter += 1;
        out.clear();
        out.extend_from_slice(&self.token.to_be_bytes());
        out.extend_from_slice(&n.to_be_bytes());
        match &self.key {
            None => {
                out.push(kind);
                out.extend_from_slice(body);
            }
            Some(k) => {
                let mut plain = Vec::with_capacity(body.len() + 1);
                plain.push(kind);
                plain.extend_from_slice(body);
                let start = out.len();
                out.resize(start + plain.len() + crate::secure::TAG_LEN, 0);
                let w = k
                    .write_message(NONCE_BASE | n, &plain, &mut out[start..])
                    .map_err(|e| SecureError::Framing(format!("{e:?}")))?;
                out.truncate(start + w);
            }
        }
        Ok(())
    }
}

/// A UDP socket of our own (any local address of `to`'s family) connected to `to`: the kernel
/// then passes only `to`'s datagrams to it.
pub fn connected_socket(to: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let any: std::net::SocketAddr = if to.is_ipv4() {
        ([0u8; 4], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.connect(to)?;
    Ok(sock)
}

/// The desktop end of a record tunnel's probes ([`KIND_PROBE`]): they open the way for the far
/// end's audio and keep it open.
pub struct Prober {
    sock: std::net::UdpSocket,
    sealer: DgramSealer,
    last: Option<std::time::Instant>,
    dgram: Vec<u8>,
}

impl Prober {
    /// Probes through `sock` (connected to the far end's UDP port), named `token`, sealed with
    /// `key`.
    pub fn new(
        sock: std::net::UdpSocket,
        token: u32,
        key: Option<Arc<StatelessTransportState>>,
    ) -> Prober {
        Prober {
            sock,
            sealer: DgramSealer::new(token, key),
            last: None,
            dgram: Vec::new(),
        }
    }

    /// Probes if one is due: the first at once, then every [`PROBE_EVERY`] while someone
    /// records (`running`), every [`PROBE_IDLE`] otherwise.
    pub fn tick(&mut self, running: bool) {
        let every = if running { PROBE_EVERY } else { PROBE_IDLE };
        if self.last.map_or(true, |t| t.elapsed() >= every) {
            self.probe();
        }
    }

    /// Sends a control datagram ([`KIND_CONTROL`]) to the far end.
    pub fn send_control(&mut self, rtcp: &[u8]) {
        if self
            .sealer
            .seal(KIND_CONTROL, rtcp, &mut self.dgram)
            .is_ok()
        {
            if let Err(e) = self.sock.send(&self.dgram) {
                log::debug!("UDP control: {e}");
            }
        }
    }

    /// Probes now (before asking the far end to record: its audio then has somewhere to go).
    pub fn probe(&mut self) {
        self.last = Some(std::time::Instant::now());
        if self.sealer.seal(KIND_PROBE, &[], &mut self.dgram).is_ok() {
            if let Err(e) = self.sock.send(&self.dgram) {
                log::debug!("UDP probe: {e}");
            }
        }
    }
}

/// The receiving half of one connection: opens datagrams, keeps out replays.
pub struct DgramOpener {
    key: Option<Arc<StatelessTransportState>>,
    window: ReplayWindow,
    plain: Vec<u8>,
}

impl DgramOpener {
    /// Opens datagrams sealed with `key` (`None`: cleartext).
    pub fn new(key: Option<Arc<StatelessTransportState>>) -> DgramOpener {
        DgramOpener {
            key,
            window: ReplayWindow::new(),
            plain: Vec::new(),
        }
    }

    /// The kind and body of a datagram (whose token the caller matched), or why it is
    /// dropped. A datagram that opens counts in the replay window; one that does not leaves
    /// the window as it was.
    pub fn open<'a>(&'a mut self, dgram: &'a [u8]) -> Result<(u8, &'a [u8]), Drop> {
        if dgram.len() <= HEADER_LEN || dgram.len() > MAX_DATAGRAM {
            return Err(Drop::Malformed);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&dgram[4..HEADER_LEN]);
        let n = u64::from_be_bytes(c);
        if n >= NONCE_BASE || !self.window.check(n) {
            return Err(Drop::Replayed);
        }
        let body = &dgram[HEADER_LEN..];
        match &self.key {
            None => {
                self.window.accept(n);
                Ok((body[0], &body[1..]))
            }
            Some(k) => {
                if body.len() <= crate::secure::TAG_LEN {
                    return Err(Drop::Malformed);
                }
                self.plain.resize(body.len(), 0);
                let len = k
                    .read_message(NONCE_BASE | n, body, &mut self.plain)
                    .map_err(|_| Drop::Tampered)?;
                if len == 0 {
                    return Err(Drop::Malformed);
                }
                self.window.accept(n);
                Ok((self.plain[0], &self.plain[1..len]))
            }
        }
    }
}

/// Whether an Opus packet (one or two channels, one frame) carries in-band FEC data for the
/// packet before it: a SILK or hybrid frame whose LBRR flag is set (read as libopus's
/// `opus_packet_has_lbrr` reads it: the flag follows the VAD flags in the first byte of the
/// frame). CELT-only packets never do.
pub fn opus_has_fec(packet: &[u8]) -> bool {
    let (Some(&toc), Some(&first)) = (packet.first(), packet.get(1)) else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 || toc & 0x3 != 0 {
        return false;
    }
    let ms = if config >= 12 {
        [10, 20][usize::from(config & 1)]
    } else {
        [10, 20, 40, 60][usize::from(config & 3)]
    };
    let frames = (ms / 20).max(1);
    let mut lbrr = (first >> (7 - frames)) & 1;
    if toc & 0x4 != 0 {
        lbrr |= (first >> (6 - 2 * frames)) & 1;
    }
    lbrr != 0
}

/// XOR parity over [`parity_group`] consecutive RTP packets (the idea of RFC 5109's XOR
/// protection, with our own small header): what is XORed is each packet's 2-byte length and
/// its bytes, zero-padded to the longest of the group, so that any one lost packet comes back
/// whole. A block is `first sequence number (u16) | packets (u8) | XOR`; its overhead is one
/// datagram (the longest packet's size, plus 3 + 2 bytes) a group.
#[derive(Debug, Default)]
pub struct ParityEncoder {
    first: u16,
    next: u16,
    count: usize,
    acc: Vec<u8>,
}

impl ParityEncoder {
    /// An encoder with no group open.
    pub fn new() -> ParityEncoder {
        ParityEncoder::default()
    }

    /// Adds the RTP packet `seq`; returns the group's parity block when this packet completes
    /// a group of `group` packets. A packet that does not follow the last one starts a new
    /// group.
    pub fn add(&mut self, seq: u16, rtp: &[u8], group: usize) -> Option<Vec<u8>> {
        let group = group.clamp(1, MAX_PARITY_GROUP);
        if self.count > 0 && seq != self.next {
            self.reset();
        }
        if self.count == 0 {
            self.first = seq;
            self.acc.clear();
            self.acc.extend_from_slice(&[0, 0, 0]);
        }
        xor_into(&mut self.acc, 3, rtp);
        self.count += 1;
        self.next = seq.wrapping_add(1);
        if self.count < group {
            return None;
        }
        let mut block = std::mem::take(&mut self.acc);
        block[..2].copy_from_slice(&self.first.to_be_bytes());
        block[2] = self.count as u8;
        self.count = 0;
        Some(block)
    }

    /// Forgets the open group (the stream paused or restarted).
    pub fn reset(&mut self) {
        self.count = 0;
        self.acc.clear();
    }
}

/// XORs `len(rtp) | rtp` into `acc` from `at`, growing `acc` with zeros as needed.
fn xor_into(acc: &mut Vec<u8>, at: usize, rtp: &[u8]) {
    let need = at + 2 + rtp.len();
    if acc.len() < need {
        acc.resize(need, 0);
    }
    let len = (rtp.len().min(usize::from(u16::MAX)) as u16).to_be_bytes();
    acc[at] ^= len[0];
    acc[at + 1] ^= len[1];
    for (a, b) in acc[at + 2..].iter_mut().zip(rtp) {
        *a ^= b;
    }
}

/// The receiving side of the parity: keeps the last packets and blocks, and rebuilds a lost
/// packet when its group's other packets and its block are in.
#[derive(Debug, Default)]
pub struct ParityDecoder {
    /// Recent RTP packets by sequence number (oldest first).
    packets: std::collections::VecDeque<(u16, Vec<u8>)>,
    /// Blocks whose group is not complete yet: first sequence number, packets, XOR.
    blocks: std::collections::VecDeque<(u16, u8, Vec<u8>)>,
}

/// Packets kept for rebuilding.
const KEEP_PACKETS: usize = 4 * MAX_PARITY_GROUP;
/// Blocks kept waiting.
const KEEP_BLOCKS: usize = 4;

impl ParityDecoder {
    /// An empty decoder.
    pub fn new() -> ParityDecoder {
        ParityDecoder::default()
    }

    /// Forgets everything (a new stream).
    pub fn reset(&mut self) {
        self.packets.clear();
        self.blocks.clear();
    }

    /// Remembers a received RTP packet (`seq` from its header); returns a packet rebuilt with
    /// its help, if any.
    pub fn on_packet(&mut self, seq: u16, rtp: &[u8]) -> Option<Vec<u8>> {
        if self.has(seq) {
            return None;
        }
        if self.packets.len() == KEEP_PACKETS {
            self.packets.pop_front();
        }
        self.packets.push_back((seq, rtp.to_vec()));
        self.try_blocks()
    }

    /// Takes a parity block; returns a packet rebuilt with its help, if any. A malformed
    /// block is ignored.
    pub fn on_block(&mut self, block: &[u8]) -> Option<Vec<u8>> {
        if block.len() < 5 {
            return None;
        }
        let first = u16::from_be_bytes([block[0], block[1]]);
        let count = block[2];
        if count == 0 || usize::from(count) > KEEP_PACKETS {
            return None;
        }
        if self.blocks.len() == KEEP_BLOCKS {
            self.blocks.pop_front();
        }
        self.blocks.push_back((first, count, block[3..].to_vec()));
        self.try_blocks()
    }

    fn has(&self, seq: u16) -> bool {
        self.packets.iter().any(|(s, _)| *s == seq)
    }

    /// Rebuilds from the first block that lacks exactly one packet; drops blocks whose group
    /// is complete.
    fn try_blocks(&mut self) -> Option<Vec<u8>> {
        let mut i = 0;
        while i < self.blocks.len() {
            let (first, count, _) = self.blocks[i];
            let missing: Vec<u16> = (0..u16::from(count))
                .map(|k| first.wrapping_add(k))
                .filter(|s| !self.has(*s))
                .collect();
            match missing.len() {
                0 => {
                    self.blocks.remove(i);
                }
                1 => {
                    let (_, _, xor) = self.blocks.remove(i)?;
                    let mut acc = xor;
                    for k in 0..u16::from(count) {
                        let s = first.wrapping_add(k);
                        if let Some((_, p)) = self.packets.iter().find(|(q, _)| *q == s) {
                            xor_into(&mut acc, 0, p);
                        }
                    }
                    if acc.len() < 2 {
                        return None;
                    }
                    let len = usize::from(u16::from_be_bytes([acc[0], acc[1]]));
                    let rtp = acc.get(2..2 + len)?.to_vec();
                    // Only a packet with the right sequence number counts.
                    let seq = rtp.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    if seq != Some(missing[0]) || len < 12 {
                        return None;
                    }
                    return Some(rtp);
                }
                _ => i += 1,
            }
        }
        None
    }
}

/// A gap of at least this much audio (a burst of lost packets) is asked for again
/// ([`crate::rtp::Control::Nack`]) even when the buffer is too short for the repair to come in
/// time; a repair sizes the receive buffer (its lateness, as any arrival's: played late or too
/// late to play), so that the next burst's repair comes in time. Opus's concealment hides a
/// few lost packets and fades longer gaps toward silence (on the WAN table's bursty link the
/// silent blocks came from runs of eight and more lost 10 ms packets). Shorter gaps are asked
/// for only once a repair's round trip is known and fits in what the buffer holds: after a
/// burst, while the link goes on losing packets, the buffer keeps covering a repair, and it
/// comes down as the target does, once the link has lost nothing for its window. A link that
/// loses single packets at random never enters that: at 2 % it loses five in a row once in 30
/// million packets (at 30 ms, three in a row, one such run in a 30 s WAN case put a 2 % link
/// in it).
pub const REPAIR_GAP_USEC: u64 = 50_000;
/// The audio a sender keeps for repairs, µs.
pub const HISTORY_USEC: u64 = 1_000_000;
/// The most packets a sender keeps for repairs: fewer than the jitter buffer takes back
/// ([`crate::jitter::MAX_MISORDER`]), so that a repair never reads as the sequence's restart.
pub const MAX_HISTORY: usize = 64;

/// The sender's side of repairs: the RTP packets of the last [`HISTORY_USEC`] (at most
/// [`MAX_HISTORY`]), by sequence number, to send again when the receiver asks.
#[derive(Debug, Default)]
pub struct History {
    packets: std::collections::VecDeque<(u16, Vec<u8>)>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Keeps the RTP packet `seq` (`packet_usec` of audio).
    pub fn keep(&mut self, seq: u16, rtp: &[u8], packet_usec: u64) {
        let most = (HISTORY_USEC / packet_usec.max(1)).clamp(1, MAX_HISTORY as u64) as usize;
        while self.packets.len() >= most {
            self.packets.pop_front();
        }
        self.packets.push_back((seq, rtp.to_vec()));
    }

    /// The packet `seq`, if still kept, to send again: each packet goes again once at most,
    /// so that requests never make more than twice the stream's traffic.
    pub fn take(&mut self, seq: u16) -> Option<Vec<u8>> {
        let i = self.packets.iter().rposition(|(s, _)| *s == seq)?;
        let p = std::mem::take(&mut self.packets[i].1);
        (!p.is_empty()).then_some(p)
    }

    /// Forgets everything (a pause, a new stream).
    pub fn reset(&mut self) {
        self.packets.clear();
    }
}

/// The receiver's side of repairs: which gaps to ask for again, and the repairs' round
/// trip. One request a lost packet; a repair is a packet that arrives after it was asked
/// for.
#[derive(Debug, Default)]
pub struct Repairs {
    /// Sequence numbers asked for, and when (oldest first).
    asked: std::collections::VecDeque<(u16, std::time::Instant)>,
    /// The shortest round trip of the last [`Repairs::ROUND_TRIPS`] repairs.
    round_trips: std::collections::VecDeque<std::time::Duration>,
}

/// Requests remembered.
const KEEP_ASKED: usize = 256;

/// A request no repair answered in this long is forgotten: the sender keeps a packet for
/// [`HISTORY_USEC`], so none can come after that and a round trip. (Kept, a request outlived
/// the sequence numbers' wrap, 11 minutes at 10 ms: the new packet with its number was
/// taken for its repair.)
const FORGET_ASKED: std::time::Duration = std::time::Duration::from_micros(2 * HISTORY_USEC);

impl Repairs {
    /// Round trips remembered.
    pub const ROUND_TRIPS: usize = 16;
    /// How long a gap waits for its repair before any round trip is known (the engine
    /// conceals up to half a second before it takes the stream for paused).
    pub const FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

    /// Nothing asked yet.
    pub fn new() -> Repairs {
        Repairs::default()
    }

    /// Forgets the requests (a new stream); the round trip is the link's and is kept.
    pub fn reset(&mut self) {
        self.asked.clear();
    }

    /// A packet arrived with `missing` lost packets of `packet_usec` each before it, the
    /// first of them `first`; `spare` is how long the gap may wait. Returns the sequence
    /// numbers to ask for: all of them if the gap is a burst (at least [`REPAIR_GAP_USEC`]
    /// of audio) or if a repair's round trip fits in `spare`; none otherwise.
    pub fn on_gap(
        &mut self,
        first: u16,
        missing: u16,
        packet_usec: u64,
        spare: std::time::Duration,
        now: std::time::Instant,
    ) -> Vec<u16> {
        let burst = u64::from(missing) * packet_usec >= REPAIR_GAP_USEC;
        let in_time = self.round_trip().is_some_and(|r| r < spare);
        if missing == 0 || !(burst || in_time) {
            return Vec::new();
        }
        self.forget_before(now);
        let seqs: Vec<u16> = (0..missing.min(crate::rtp::MAX_NACK as u16))
            .map(|k| first.wrapping_add(k))
            .collect();
        for &s in &seqs {
            if self.asked.len() == KEEP_ASKED {
                self.asked.pop_front();
            }
            self.asked.push_back((s, now));
        }
        seqs
    }

    /// Packet `seq` arrived at `now`: `Some(round trip)` if it is a repair.
    pub fn on_arrival(&mut self, seq: u16, now: std::time::Instant) -> Option<std::time::Duration> {
        self.forget_before(now);
        let i = self.asked.iter().position(|(s, _)| *s == seq)?;
        let (_, at) = self.asked.remove(i)?;
        let rt = now.saturating_duration_since(at);
        if self.round_trips.len() == Self::ROUND_TRIPS {
            self.round_trips.pop_front();
        }
        self.round_trips.push_back(rt);
        Some(rt)
    }

    /// Drops the requests asked for [`FORGET_ASKED`] or more before `now`.
    fn forget_before(&mut self, now: std::time::Instant) {
        while self
            .asked
            .front()
            .is_some_and(|&(_, at)| now.saturating_duration_since(at) >= FORGET_ASKED)
        {
            self.asked.pop_front();
        }
    }

    /// Until when a gap at packet `seq` waits for its repair, if it was asked for: twice the
    /// shortest recent round trip after the request ([`Repairs::FIRST_WAIT`] before the
    /// first repair). Playout conceals meanwhile, and a repair that comes plays late, whole:
    /// the latency grows by its lateness, which the target learns, so that the next burst's
    /// repair is in time.
    pub fn wait_until(&self, seq: u16) -> Option<std::time::Instant> {
        let (_, at) = self.asked.iter().find(|(s, _)| *s == seq)?;
        let wait = self.round_trip().map_or(Self::FIRST_WAIT, |r| 2 * r);
        Some(*at + wait)
    }

    /// The shortest round trip of the recent repairs (`None` before the first).
    pub fn round_trip(&self) -> Option<std::time::Duration> {
        self.round_trips.iter().min().copied()
    }

    /// Whether a repair that came `round_trip` after its request sizes the receive buffer:
    /// if that is the link's usual round trip (at most twice the shortest recent; a repair
    /// held up on the way says nothing about the next).
    pub fn sizes_buffer(&self, round_trip: std::time::Duration) -> bool {
        self.round_trip().map_or(true, |s| round_trip <= 2 * s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{parse_rtp, write_rtp, RtpHeader};
    use crate::secure::{pair, Pattern};

    fn rtp(seq: u16, len: usize) -> Vec<u8> {
        let h = RtpHeader {
            marker: false,
            payload_type: 96,
            seq,
            timestamp: u32::from(seq) * 960,
            ssrc: 7,
        };
        let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
        let mut out = Vec::new();
        write_rtp(&h, &payload, &mut out);
        out
    }

    #[test]
    fn transport_parses() {
        assert_eq!(Transport::parse("transport", None), Ok(Transport::Tcp));
        assert_eq!(
            Transport::parse("transport", Some(" UDP ")),
            Ok(Transport::Udp)
        );
        assert_eq!(
            Transport::parse("tunnel.transport", Some("sctp")).unwrap_err(),
            "tunnel.transport: \"sctp\" is not accepted (tcp or udp)"
        );
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3), "late but new");
        assert!(!w.accept(3));
        assert!(!w.accept(5));
        assert!(w.accept(1));
        // Far ahead: what falls out of the window is refused.
        assert!(w.accept(5000));
        assert!(!w.accept(5000 - WINDOW));
        assert!(w.accept(5000 - WINDOW + 1));
        assert!(!w.accept(6));
        // Shifts of every size keep the bits right.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut x = 1u64;
        let mut top = 0u64;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let step = (x >> 33) % 300;
            let n = if (x >> 20) % 3 == 0 {
                top + step
            } else {
                top.saturating_sub(step)
            };
            let fresh = !seen.contains(&n) && n + WINDOW >= top.max(1);
            let expect = fresh && (n >= top || top - 1 - n < WINDOW);
            assert_eq!(w.accept(n), expect, "n {n} top {top}");
            if expect {
                seen.insert(n);
                top = top.max(n + 1);
            }
        }
        assert!(!w.check(u64::MAX));
    }

    #[test]
    fn datagrams_cleartext_and_sealed() {
        let ((is, _), (_, ro)) = pair(Pattern::Nn, None, None, b"p").unwrap();
        let (ik, rk) = (is.transport_key(), ro.transport_key());
        for (sk, ok) in [(None, None), (Some(ik), Some(rk))] {
            let sealed = sk.is_some();
            let mut s = DgramSealer::new(0xdead_beef, sk);
            let mut o = DgramOpener::new(ok);
            let mut d = Vec::new();
            s.seal(KIND_RTP, b"hello", &mut d).unwrap();
            assert_eq!(token_of(&d), Some(0xdead_beef));
            assert_eq!(d.len(), HEADER_LEN + 6 + if sealed { 16 } else { 0 });
            assert_eq!(o.open(&d), Ok((KIND_RTP, &b"hello"[..])));
            // Replayed.
            assert_eq!(o.open(&d), Err(Drop::Replayed));
            let mut d2 = Vec::new();
            s.seal(KIND_PARITY, b"xy", &mut d2).unwrap();
            if sealed {
                // Every bit flip past the token fails, and leaves the window usable.
                for bit in 32..d2.len() * 8 {
                    let mut t = d2.clone();
                    t[bit / 8] ^= 1 << (bit % 8);
                    assert!(o.open(&t).is_err(), "bit {bit}");
                }
                assert!(!d2.windows(2).any(|w| w == b"xy"));
            }
            assert_eq!(o.open(&d2), Ok((KIND_PARITY, &b"xy"[..])));
            assert_eq!(o.open(&d[..HEADER_LEN]), Err(Drop::Malformed));
            assert_eq!(o.open(&[]), Err(Drop::Malformed));
        }
    }

    #[test]
    fn parity_groups_span_120_ms() {
        assert_eq!(parity_group(20_000), 6);
        assert_eq!(parity_group(10_000), 12);
        assert_eq!(parity_group(5_000), 16);
        assert_eq!(parity_group(2_500), MAX_PARITY_GROUP);
        assert_eq!(parity_group(40_000), 3);
        assert_eq!(parity_group(60_000), 2);
        assert_eq!(parity_group(0), MAX_PARITY_GROUP);
    }

    #[test]
    fn parity_rebuilds_any_one_lost_packet() {
        for (group, lost) in [4usize, 8, MAX_PARITY_GROUP]
            .into_iter()
            .flat_map(|g| (0..g).map(move |l| (g, l)))
        {
            let mut enc = ParityEncoder::new();
            let mut dec = ParityDecoder::new();
            let base = 65534u16; // wraps inside the group
            let pkts: Vec<Vec<u8>> = (0..group as u16)
                .map(|k| rtp(base.wrapping_add(k), 20 + 37 * usize::from(k)))
                .collect();
            let mut block = None;
            for (k, p) in pkts.iter().enumerate() {
                let seq = base.wrapping_add(k as u16);
                block = enc.add(seq, p, group);
                assert_eq!(block.is_some(), k + 1 == group);
                if k != lost {
                    assert_eq!(dec.on_packet(seq, p), None);
                }
            }
            let block = block.expect("a block after the group");
            assert_eq!(
                block.len(),
                3 + 2 + pkts.iter().map(Vec::len).max().unwrap()
            );
            let back = dec.on_block(&block).expect("rebuilt");
            assert_eq!(back, pkts[lost]);
            assert!(parse_rtp(&back).is_ok());
        }
        // Block first, packets later; two lost: nothing; garbage blocks: nothing.
        let mut enc = ParityEncoder::new();
        let pkts: Vec<Vec<u8>> = (10..14).map(|s| rtp(s, 50)).collect();
        let mut block = None;
        for (k, p) in pkts.iter().enumerate() {
            block = enc.add(10 + k as u16, p, 4);
        }
        let block = block.unwrap();
        let mut dec = ParityDecoder::new();
        assert_eq!(dec.on_block(&block), None);
        assert_eq!(dec.on_packet(10, &pkts[0]), None);
        assert_eq!(dec.on_packet(12, &pkts[2]), None);
        assert_eq!(dec.on_packet(13, &pkts[3]), Some(pkts[1].clone()));
        let mut dec = ParityDecoder::new();
        dec.on_packet(10, &pkts[0]);
        dec.on_packet(13, &pkts[3]);
        assert_eq!(dec.on_block(&block), None);
        for junk in [
            &[][..],
            &[1, 2, 3, 4][..],
            &[0, 10, 0, 1, 2][..],
            &[0, 10, 255, 9, 9][..],
        ] {
            assert_eq!(dec.on_block(junk), None);
        }
        // A gap in the sequence starts a new group.
        let mut enc = ParityEncoder::new();
        assert!(enc.add(1, &pkts[0], 4).is_none());
        assert!(enc.add(2, &pkts[0], 4).is_none());
        assert!(enc.add(7, &pkts[0], 4).is_none());
        assert!(enc.add(8, &pkts[0], 4).is_none());
        assert!(enc.add(9, &pkts[0], 4).is_none());
        assert!(enc.add(10, &pkts[0], 4).is_some());
    }

    #[test]
    fn fec_flag_of_real_packets() {
        use crate::codec::{Encoder, StreamFormat};
        use crate::params::{OpusKnobs, Signal};
        let fmt = StreamFormat {
            rate: 48_000,
            channels: 2,
        };
        for (fec, loss) in [(false, 0u8), (true, 10)] {
            let knobs = OpusKnobs {
                bitrate: 24_000,
                signal: Signal::Voice,
                fec,
                packet_loss: loss,
                ..OpusKnobs::default()
            };
            let mut enc = Encoder::new(crate::params::Compression::Opus, fmt, &knobs).unwrap();
            let mut with = 0;
            let mut out = Vec::new();
            for f in 0..100 {
                // Voiced syllables (200 ms on, 100 ms off, the pitch moving): SILK's voice
                // activity detection takes a steady sound for noise after a while.
                let pcm: Vec<f32> = (0..960 * 2)
                    .map(|i| {
                        let t = (f * 960 + i / 2) as f32 / 48_000.0;
                        let on = if t % 0.3 < 0.2 { 1.0 } else { 0.0 };
                        let f0 = 120.0 + 40.0 * (t * 2.0).sin();
                        on * (0.3 * (t * 2.0 * std::f32::consts::PI * f0).sin().powi(15)
                            + 0.05 * (t * 2.0 * std::f32::consts::PI * 700.0).sin())
                    })
                    .collect();
                enc.encode(&pcm, &mut out).unwrap();
                if opus_has_fec(&out) {
                    with += 1;
                }
            }
            if fec {
                assert!(with > 30, "{with} of 100 packets carry FEC");
            } else {
                assert_eq!(with, 0);
            }
        }
        assert!(!opus_has_fec(&[]));
        assert!(!opus_has_fec(&[0xfc, 0xff]), "CELT-only");
    }

    /// A sender keeps the last packets (a second, at most MAX_HISTORY) and gives each back
    /// once by sequence number, across the wrap.
    #[test]
    fn history_gives_the_last_packets_back_once() {
        let mut h = History::new();
        for k in 0..150u16 {
            let seq = 65_500u16.wrapping_add(k);
            h.keep(seq, &rtp(seq, 40), 10_000);
        }
        // 100 packets of 10 ms (at most MAX_HISTORY): the older ones are gone.
        let kept = 150 - MAX_HISTORY.min(100) as u16;
        assert!(h.take(65_500u16.wrapping_add(kept - 1)).is_none());
        let p = h.take(65_500u16.wrapping_add(kept)).unwrap();
        assert_eq!(parse_rtp(&p).unwrap().0.seq, 65_500u16.wrapping_add(kept));
        assert!(
            h.take(65_500u16.wrapping_add(kept)).is_none(),
            "sent again once"
        );
        assert!(h.take(65_500u16.wrapping_add(148)).is_some());
        h.reset();
        assert!(h.take(65_500u16.wrapping_add(149)).is_none());
    }

    /// Bursts are asked for at once; a single loss only once a repair's round trip is known
    /// to fit in the time the gap may wait. Repairs measure the round trip.
    #[test]
    fn repairs_ask_for_bursts_and_what_can_come_in_time() {
        use std::time::{Duration, Instant};
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut r = Repairs::new();
        // One 10 ms packet lost, or four, nothing known: concealment's.
        assert!(r.on_gap(10, 1, 10_000, ms(5), t0).is_empty());
        assert!(r.on_gap(10, 4, 10_000, ms(5), t0).is_empty());
        // Five (50 ms): a burst.
        assert_eq!(
            r.on_gap(65_534, 5, 10_000, ms(5), t0),
            vec![65_534, 65_535, 0, 1, 2]
        );
        assert_eq!(r.on_arrival(0, t0 + ms(90)), Some(ms(90)));
        assert_eq!(
            r.on_arrival(0, t0 + ms(95)),
            None,
            "asked once, repaired once"
        );
        assert_eq!(r.round_trip(), Some(ms(90)));
        assert!(r.sizes_buffer(ms(170)) && !r.sizes_buffer(ms(190)));
        // A single loss with 100 ms to spare: the repair can come in time.
        assert_eq!(r.on_gap(20, 1, 10_000, ms(100), t0), vec![20]);
        assert!(r.on_gap(30, 1, 10_000, ms(80), t0).is_empty());
        // Never more than a NACK holds.
        assert_eq!(
            r.on_gap(100, 500, 10_000, ms(0), t0).len(),
            crate::rtp::MAX_NACK
        );
        // A request no repair answered is forgotten once the sender cannot have the packet:
        // a packet with its number much later (after the numbers wrapped) is no repair.
        assert_eq!(
            r.on_gap(200, 5, 10_000, ms(0), t0),
            vec![200, 201, 202, 203, 204]
        );
        assert_eq!(r.on_arrival(201, t0 + ms(1500)), Some(ms(1500)));
        assert_eq!(r.on_arrival(202, t0 + FORGET_ASKED), None);
        assert_eq!(r.wait_until(203), None);
        r.reset();
        assert_eq!(r.on_arrival(1, t0 + ms(50)), None);
        assert_eq!(
            r.round_trip(),
            Some(ms(90)),
            "the link's round trip is kept"
        );
    }

    /// Every datagram that opened says the far end is alive; only repair requests wait for
    /// the worker (and wake it), at most `MAX_REQUESTS` of them.
    #[test]
    fn heard_keeps_when_the_far_end_spoke_and_its_requests() {
        let heard = Heard::default();
        assert_eq!(heard.last(), None);
        let mut keepalive = Vec::new();
        crate::rtp::write_rtcp(0, &[crate::rtp::Control::Keepalive], &mut keepalive);
        let before = std::time::Instant::now();
        assert!(!heard.datagram(KIND_CONTROL, &keepalive));
        assert!(heard.last().is_some_and(|at| at >= before));
        assert!(heard.take_requests().is_empty());
        assert!(!heard.datagram(KIND_PROBE, &[]));
        let mut nack = Vec::new();
        crate::rtp::write_rtcp(0, &[crate::rtp::Control::Nack(vec![5, 6])], &mut nack);
        assert!(heard.datagram(KIND_CONTROL, &nack));
        assert_eq!(heard.take_requests(), vec![5, 6]);
        assert!(heard.take_requests().is_empty());
        // A nack body as a probe asks for nothing.
        assert!(!heard.datagram(KIND_PROBE, &nack));
        let many: Vec<u16> = (0..crate::rtp::MAX_NACK as u16).collect();
        let mut full = Vec::new();
        crate::rtp::write_rtcp(0, &[crate::rtp::Control::Nack(many)], &mut full);
        for _ in 0..6 {
            heard.datagram(KIND_CONTROL, &full);
        }
        assert_eq!(heard.take_requests().len(), Heard::MAX_REQUESTS);
        // The clones share one state (the reader thread's and the worker's).
        let other = heard.clone();
        other.datagram(KIND_CONTROL, &nack);
        assert_eq!(heard.take_requests(), vec![5, 6]);
    }

    /// A control datagram's body gives the sequence numbers asked for, and nothing when it
    /// does not parse.
    #[test]
    fn repair_requests_from_a_control_body() {
        let mut rtcp = Vec::new();
        crate::rtp::write_rtcp(
            0,
            &[
                crate::rtp::Control::Keepalive,
                crate::rtp::Control::Nack(vec![7, 65_535]),
            ],
            &mut rtcp,
        );
        assert_eq!(repair_requests(&rtcp), vec![7, 65_535]);
        assert!(repair_requests(&rtcp[..rtcp.len() - 1]).is_empty());
        assert!(repair_requests(b"junk").is_empty());
    }

    #[test]
    fn junk_never_panics() {
        let ((is, _), (_, ro)) = pair(Pattern::Nn, None, None, b"").unwrap();
        let _ = is;
        let mut o = DgramOpener::new(Some(ro.transport_key()));
        let mut c = DgramOpener::new(None);
        let mut dec = ParityDecoder::new();
        let mut x = 7u64;
        for len in 0..2000usize {
            let d: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(3);
                    (x >> 40) as u8
                })
                .collect();
            let _ = o.open(&d);
            if let Ok((k, b)) = c.open(&d) {
                if k == KIND_PARITY {
                    let _ = dec.on_block(b);
                } else if b.len() >= 4 {
                    let _ = dec.on_packet(u16::from_be_bytes([b[2], b[3]]), b);
                }
            }
        }
    }
}
