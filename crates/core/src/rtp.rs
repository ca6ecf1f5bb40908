//! RTP (RFC 3550, Opus payload per RFC 7587) and the tunnel's control messages carried as
//! RTCP APP packets on the same connection (told apart by [`is_rtcp`], RFC 5761).
//!
//! Control messages are RTCP APP packets (PT 204) named `OTUN`, the message kind in the
//! 5-bit subtype field: 0 keepalive, 1 pause, 2 resume, 3 report, 4 knobs, 5 bye.
//! Reports and knob lists are UTF-8 text `key=value\n` lines; a bye carries a UTF-8 reason;
//! both are NUL-padded to 32 bits. Several messages may form one compound packet.

use rand::Rng;

/// Errors in wire data (RTP, RTCP, RFC 4571 framing). Every one names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A packet shorter than its fixed header.
    #[error("{what} packet of {len} bytes is shorter than its {min}-byte header")]
    TooShort {
        /// "RTP" or "RTCP".
        what: &'static str,
        /// Bytes received.
        len: usize,
        /// Minimum.
        min: usize,
    },
    /// RTP/RTCP version other than 2.
    #[error("{what} version {version}, expected 2")]
    Version {
        /// "RTP" or "RTCP".
        what: &'static str,
        /// Version received.
        version: u8,
    },
    /// CSRC list, header extension or padding that does not fit the packet.
    #[error("RTP packet of {len} bytes: {detail}")]
    RtpLayout {
        /// Packet length.
        len: usize,
        /// What does not fit.
        detail: &'static str,
    },
    /// An RTCP length field that does not match the data.
    #[error("RTCP packet claims {claimed} bytes but {available} remain")]
    RtcpLength {
        /// Bytes claimed by the length field.
        claimed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Bad padding in an RTCP packet.
    #[error("RTCP padding of {pad} bytes in a {len}-byte packet")]
    RtcpPadding {
        /// Padding count.
        pad: usize,
        /// Packet length.
        len: usize,
    },
    /// A control message whose body is not what its kind requires.
    #[error("control message: {0}")]
    Control(String),
    /// An RFC 4571 frame of length 0.
    #[error("empty frame")]
    EmptyFrame,
    /// An RFC 4571 frame longer than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLong {
        /// Length announced or given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Fixed RTP header fields we use (no CSRC list or extension is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RtpHeader {
    /// Marker bit: first packet after a silence/pause (talkspurt start).
    pub marker: bool,
    /// Payload type (7 bits; 96 Opus, 97 L16).
    pub payload_type: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp in RTP clock ticks.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Size of the RTP header written by [`write_rtp`].
pub const RTP_HEADER_LEN: usize = 12;

/// Clears `out` and writes a 12-byte RTP header (version 2, no padding, extension or CSRC;
/// payload type masked to 7 bits) followed by `payload`.
pub fn write_rtp(h: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(RTP_HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((u8::from(h.marker) << 7) | (h.payload_type & 0x7f));
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Parses an RTP packet: checks version 2, skips the CSRC list and any header extension,
/// removes padding. Returns the header and the payload (which may be empty).
pub fn parse_rtp(buf: &[u8]) -> Result<(RtpHeader, &[u8]), WireError> {
    let len = buf.len();
    if len < RTP_HEADER_LEN {
        return Err(WireError::TooShort {
            what: "RTP",
            len,
            min: RTP_HEADER_LEN,
        });
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(WireError::Version {
            what: "RTP",
            version,
        });
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let cc = usize::from(buf[0] & 0x0f);
    let h = RtpHeader {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7f,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    };
    let mut off = RTP_HEADER_LEN + 4 * cc;
    if off > len {
        return Err(WireError::RtpLayout {
            len,
            detail: "CSRC list runs past the end",
        });
    }
    if extension {
        if off + 4 > len {
            return Err(WireError::RtpLayout {
                len,
                detail: "header extension runs past the end",
            });
        }
        let words = usize::from(u16::from_be_bytes([buf[off + 2], buf[off + 3]]));
        off += 4 + 4 * words;
        if off > len {
            return Err(WireError::RtpLayout {
                len,
                detail: "header extension runs past the end",
            });
        }
    }
    let mut end = len;
    if padding {
        let pad = usize::from(buf[len - 1]);
        if pad == 0 || pad > len - off {
            return Err(WireError::RtpLayout {
                len,
                detail: "padding count is zero or larger than the payload",
            });
        }
        end -= pad;
    }
    Ok((h, &buf[off..end]))
}

/// RFC 5761 demultiplexing: true when the second byte (the RTCP packet type, or the RTP
/// marker bit and payload type) is in 192..=223, i.e. the packet is RTCP.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// RTCP packet type of APP packets.
pub const RTCP_APP: u8 = 204;
/// Name of our APP packets.
pub const APP_NAME: [u8; 4] = *b"OTUN";
/// Most entries in one report or knob list.
pub const MAX_ENTRIES: usize = 64;
/// Longest key in a report or knob list, bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value in a report or knob list, bytes.
pub const MAX_VALUE_LEN: usize = 512;
/// Longest bye reason, bytes.
pub const MAX_REASON_LEN: usize = 512;
/// Most sequence numbers in one [`Control::Nack`].
pub const MAX_NACK: usize = 64;

const SUB_KEEPALIVE: u8 = 0;
const SUB_PAUSE: u8 = 1;
const SUB_RESUME: u8 = 2;
const SUB_REPORT: u8 = 3;
const SUB_KNOBS: u8 = 4;
const SUB_BYE: u8 = 5;
const SUB_NACK: u8 = 6;

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Nothing to say; keeps the connection (and NAT/forwarding state) alive.
    Keepalive,
    /// The sender stops sending audio (nothing plays); the receiver should not count
    /// missing packets as losses.
    Pause,
    /// Audio resumes.
    Resume,
    /// Receiver feedback or statistics as key/value pairs (e.g. `opus.tunnel.latency`).
    Report(Vec<(String, String)>),
    /// Opus knob changes to relay, keys of [`crate::params::KNOB_KEYS`].
    Knobs(Vec<(String, String)>),
    /// The peer closes the connection, with a reason to log.
    Bye(String),
    /// `transport=udp`: the receiver asks for these audio packets (RTP sequence numbers)
    /// again: they were lost in a burst that concealment would not hide
    /// ([`crate::udp::REPAIR_GAP_USEC`]). At most [`MAX_NACK`]. Sent in a datagram
    /// ([`crate::udp::KIND_CONTROL`]), not on the TCP connection.
    Nack(Vec<u16>),
}

/// Truncates `s` to at most `max` bytes on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn clean_key(k: &str) -> String {
    truncate_str(k, MAX_KEY_LEN)
        .chars()
        .map(|c| if c == '=' || c.is_control() { '_' } else { c })
        .collect()
}

fn clean_text(v: &str, max: usize) -> String {
    truncate_str(v, max)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn write_app(ssrc: u32, subtype: u8, body: &[u8], out: &mut Vec<u8>) {
    let padded = body.len().div_ceil(4) * 4;
    let total = 12 + padded;
    let words = (total / 4 - 1) as u16;
    out.push(0x80 | (subtype & 0x1f));
    out.push(RTCP_APP);
    out.extend_from_slice(&words.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&APP_NAME);
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
}

/// Clears `out` and writes `msgs` as one compound RTCP packet of APP packets.
///
/// Writing never fails: keys longer than [`MAX_KEY_LEN`] and values longer than
/// [`MAX_VALUE_LEN`] bytes are truncated, control characters are replaced (`=` in a key by
/// `_`, control characters by `_` in keys and by a space in values), lists are cut to
/// [`MAX_ENTRIES`] entries and a bye reason to [`MAX_REASON_LEN`] bytes. One message always
/// fits an RFC 4571 frame; a compound of many large lists may not (then
/// [`crate::framing::frame`] refuses it — send them separately).
pub fn write_rtcp(ssrc: u32, msgs: &[Control], out: &mut Vec<u8>) {
    out.clear();
    let mut body = Vec::new();
    for m in msgs {
        body.clear();
        let sub = match m {
            Control::Keepalive => SUB_KEEPALIVE,
            Control::Pause => SUB_PAUSE,
            Control::Resume => SUB_RESUME,
            Control::Report(kv) | Control::Knobs(kv) => {
                for (k, v) in kv.iter().take(MAX_ENTRIES) {
                    body.extend_from_slice(clean_key(k).as_bytes());
                    body.push(b'=');
                    body.extend_from_slice(clean_text(v, MAX_VALUE_LEN).as_bytes());
                    body.push(b'\n');
                }
                if matches!(m, Control::Report(_)) {
                    SUB_REPORT
                } else {
                    SUB_KNOBS
                }
            }
            Control::Bye(reason) => {
                body.extend_from_slice(clean_text(reason, MAX_REASON_LEN).as_bytes());
                SUB_BYE
            }
            Control::Nack(seqs) => {
                // A count, then the sequence numbers (padding zeros cannot pass for one).
                let seqs = &seqs[..seqs.len().min(MAX_NACK)];
                body.extend_from_slice(&(seqs.len() as u16).to_be_bytes());
                for s in seqs {
                    body.extend_from_slice(&s.to_be_bytes());
                }
                SUB_NACK
            }
        };
        write_app(ssrc, sub, &body, out);
    }
}

fn parse_nack(body: &[u8]) -> Result<Vec<u16>, WireError> {
    let bad = |why: String| Err(WireError::Control(format!("NACK: {why}")));
    let Some((n, rest)) = body.split_first_chunk::<2>() else {
        return bad("no count".into());
    };
    let n = usize::from(u16::from_be_bytes(*n));
    if n > MAX_NACK {
        return bad(format!("{n} sequence numbers (at most {MAX_NACK})"));
    }
    if rest.len() < 2 * n || rest[2 * n..].iter().any(|&b| b != 0) || rest.len() - 2 * n > 3 {
        return bad(format!("{} bytes for {n} sequence numbers", rest.len()));
    }
    Ok(rest[..2 * n]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

fn parse_text(body: &[u8]) -> Result<&str, WireError> {
    let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    std::str::from_utf8(&body[..end])
        .map_err(|_| WireError::Control("text is not valid UTF-8".into()))
}

fn parse_kv(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let text = parse_text(body)?;
    let mut v = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        if v.len() == MAX_ENTRIES {
            return Err(WireError::Control(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let (k, val) = line
            .split_once('=')
            .ok_or_else(|| WireError::Control(format!("line without '=': {line:?}")))?;
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return Err(WireError::Control(format!(
                "key of {} bytes (1 to {MAX_KEY_LEN} allowed)",
                k.len()
            )));
        }
        if val.len() > MAX_VALUE_LEN {
            return Err(WireError::Control(format!(
                "value of {} bytes for {k:?} (at most {MAX_VALUE_LEN})",
                val.len()
            )));
        }
        if line.chars().any(|c| c.is_control()) {
            return Err(WireError::Control(format!("control character in {k:?}")));
        }
        v.push((k.to_string(), val.to_string()));
    }
    Ok(v)
}

/// Parses a (compound) RTCP packet and returns our control messages in order.
///
/// RTCP packets that are not ours (SR, RR, SDES, BYE, other APP names) and APP subtypes this
/// version does not know are skipped. Errors: a packet shorter than 4 bytes, a version
/// other than 2, a length field running past the buffer, bad padding, or a malformed
/// body of one of our messages (bad UTF-8, a line without `=`, over-long keys/values, more
/// than [`MAX_ENTRIES`] entries, a keepalive/pause/resume with a body).
pub fn parse_rtcp(buf: &[u8]) -> Result<Vec<Control>, WireError> {
    let mut msgs = Vec::new();
    let mut rest = buf;
    if rest.is_empty() {
        return Err(WireError::TooShort {
            what: "RTCP",
            len: 0,
            min: 4,
        });
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(WireError::TooShort {
                what: "RTCP",
                len: rest.len(),
                min: 4,
            });
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(WireError::Version {
                what: "RTCP",
                version,
            });
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if len > rest.len() {
            return Err(WireError::RtcpLength {
                claimed: len,
                available: rest.len(),
            });
        }
        let (pkt, next) = rest.split_at(len);
        rest = next;
        let mut end = len;
        if pkt[0] & 0x20 != 0 {
            let pad = usize::from(pkt[len - 1]);
            if pad == 0 || pad > len - 4 {
                return Err(WireError::RtcpPadding { pad, len });
            }
            end -= pad;
        }
        let pkt = &pkt[..end];
        if pkt[1] != RTCP_APP || pkt.len() < 12 || pkt[8..12] != APP_NAME {
            continue;
        }
        let body = &pkt[12..];
        let empty = |m: Control| {
            if body.iter().all(|&b| b == 0) {
                Ok(m)
            } else {
                Err(WireError::Control(format!("{m:?} with a body")))
            }
        };
        let m = match pkt[0] & 0x1f {
            SUB_KEEPALIVE => empty(Control::Keepalive)?,
            SUB_PAUSE => empty(Control::Pause)?,
            SUB_RESUME => empty(Control::Resume)?,
            SUB_REPORT => Control::Report(parse_kv(body)?),
            SUB_KNOBS => Control::Knobs(parse_kv(body)?),
            SUB_BYE => {
                let t = parse_text(body)?;
                if t.len() > MAX_REASON_LEN {
                    return Err(WireError::Control(format!(
                        "bye reason of {} bytes (at most {MAX_REASON_LEN})",
                        t.len()
                    )));
                }
                // The reason ends up in a log line: control characters (escape sequences,
                // newlines) become spaces, as the writer does.
                Control::Bye(clean_text(t, MAX_REASON_LEN))
            }
            SUB_NACK => Control::Nack(parse_nack(body)?),
            _ => continue,
        };
        msgs.push(m);
    }
    Ok(msgs)
}

/// Sender-side RTP state: SSRC, sequence number and timestamp (all random at start, as
/// RFC 3550 asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    pending_marker: bool,
}

impl RtpSender {
    /// A sender with random SSRC, initial sequence number and timestamp. The first packet
    /// carries the marker bit.
    pub fn new() -> Self {
        let mut r = rand::thread_rng();
        Self::with_state(r.gen(), r.gen(), r.gen())
    }

    /// A sender with the given SSRC, next sequence number and next timestamp (for tests and
    /// for resuming). The first packet carries the marker bit.
    pub fn with_state(ssrc: u32, seq: u16, timestamp: u32) -> Self {
        RtpSender {
            ssrc,
            seq,
            timestamp,
            pending_marker: true,
        }
    }

    /// The SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sequence number of the next packet.
    pub fn seq(&self) -> u16 {
        self.seq
    }

    /// Timestamp of the next packet.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Clears `out` and writes one RTP packet with the current sequence number and
    /// timestamp, then advances the sequence number by 1 and the timestamp by `ticks`
    /// (wrapping). The marker bit is set if `marker` is true or this is the first packet
    /// (after creation or after [`skip`](Self::skip)). Returns the header written.
    pub fn packetize(
        &mut self,
        payload_type: u8,
        ticks: u32,
        marker: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> RtpHeader {
        let h = RtpHeader {
            marker: marker || self.pending_marker,
            payload_type,
            seq: self.seq,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        write_rtp(&h, payload, out);
        self.pending_marker = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(ticks);
        h
    }

    /// Advances the timestamp by `ticks` without sending (a pause); the sequence number is
    /// unchanged and the next packet carries the marker bit.
    pub fn skip(&mut self, ticks: u32) {
        self.timestamp = self.timestamp.wrapping_add(ticks);
        self.pending_marker = true;
    }
}

impl Default for RtpSender {
    fn default() -> Self {
        RtpSender::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_exact_bytes_and_round_trip() {
        let h = RtpHeader {
            marker: true,
            payload_type: 96,
            seq: 0x1234,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
        };
        let mut out = vec![7, 7];
        write_rtp(&h, &[0xaa, 0xbb], &mut out);
        assert_eq!(
            out,
            [0x80, 0xe0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 0xaa, 0xbb]
        );
        let (h2, p) = parse_rtp(&out).unwrap();
        assert_eq!(h2, h);
        assert_eq!(p, [0xaa, 0xbb]);
        assert!(!is_rtcp(&out)); // 0xe0 = 224: RTP with marker and PT 96
    }

    #[test]
    fn rtp_csrc_extension_padding() {
        // CC=2, X=1, P=1.
        let mut b = vec![0xb2, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[9; 8]); // two CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 5, 5, 5, 5]); // extension of 1 word
        b.extend_from_slice(&[0x11, 0x22, 0x33]); // payload
        b.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let (h, p) = parse_rtp(&b).unwrap();
        assert_eq!(h.payload_type, 0x60);
        assert!(!h.marker);
        assert_eq!(h.seq, 1);
        assert_eq!(p, [0x11, 0x22, 0x33]);

        // Errors.
        assert!(matches!(
            parse_rtp(&b[..11]),
            Err(WireError::TooShort { len: 11, .. })
        ));
        let mut v1 = b.clone();
        v1[0] = 0x40 | (b[0] & 0x3f);
        assert_eq!(
            parse_rtp(&v1),
            Err(WireError::Version {
                what: "RTP",
                version: 1
            })
        );
        let mut cc = vec![0x8f, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cc.extend_from_slice(&[0; 20]);
        assert!(matches!(parse_rtp(&cc), Err(WireError::RtpLayout { .. })));
        let mut ext = vec![0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        ext.extend_from_slice(&[0; 8]);
        assert!(matches!(parse_rtp(&ext), Err(WireError::RtpLayout { .. })));
        assert!(parse_rtp(&ext[..14]).is_err());
        let mut pad = vec![0xa0, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0];
        assert!(parse_rtp(&pad).is_err()); // pad count 0
        *pad.last_mut().unwrap() = 4;
        assert!(parse_rtp(&pad).is_err()); // past the header
        *pad.last_mut().unwrap() = 3;
        assert_eq!(parse_rtp(&pad).unwrap().1, [] as [u8; 0]);
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x80, 204]));
        assert!(is_rtcp(&[0x80, 223]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x80, 96]));
        assert!(!is_rtcp(&[0x80]));
        let mut out = Vec::new();
        write_rtcp(1, &[Control::Keepalive], &mut out);
        assert!(is_rtcp(&out));
    }

    #[test]
    fn rtcp_exact_bytes() {
        let mut out = Vec::new();
        write_rtcp(0x0a0b_0c0d, &[Control::Pause], &mut out);
        assert_eq!(
            out,
            [0x81, 204, 0, 2, 0x0a, 0x0b, 0x0c, 0x0d, b'O', b'T', b'U', b'N']
        );
        write_rtcp(
            1,
            &[Control::Knobs(vec![("a".into(), "1".into())])],
            &mut out,
        );
        assert_eq!(
            out,
            [0x84, 204, 0, 3, 0, 0, 0, 1, b'O', b'T', b'U', b'N', b'a', b'=', b'1', b'\n']
        );
        write_rtcp(1, &[Control::Bye("x".into())], &mut out);
        assert_eq!(&out[..4], &[0x85, 204, 0, 3]);
        assert_eq!(&out[12..], &[b'x', 0, 0, 0]);
    }

    #[test]
    fn rtcp_round_trip_compound() {
        let msgs = vec![
            Control::Keepalive,
            Control::Pause,
            Control::Resume,
            Control::Report(vec![
                ("opus.tunnel.latency".into(), "40000".into()),
                ("opus.tunnel.underruns".into(), "0".into()),
                ("empty".into(), String::new()),
            ]),
            Control::Knobs(vec![("compression.bitrate".into(), "32000".into())]),
            Control::Bye("server shutting down — adieu".into()),
            Control::Report(vec![]),
            Control::Nack(vec![0, 65535, 7]),
            Control::Nack(vec![1, 2]),
            Control::Nack(vec![]),
        ];
        let mut out = Vec::new();
        write_rtcp(42, &msgs, &mut out);
        assert_eq!(out.len() % 4, 0);
        assert_eq!(parse_rtcp(&out).unwrap(), msgs);
    }

    #[test]
    fn rtcp_sanitises_on_write() {
        let long = "v".repeat(2000);
        let mut kv: Vec<(String, String)> =
            (0..100).map(|i| (format!("k{i}"), "x".into())).collect();
        kv[0] = ("a=b\nc".into(), format!("line1\nline2{long}"));
        let mut out = Vec::new();
        write_rtcp(
            1,
            &[Control::Report(kv), Control::Bye("a\nb".into())],
            &mut out,
        );
        let got = parse_rtcp(&out).unwrap();
        match &got[0] {
            Control::Report(kv) => {
                assert_eq!(kv.len(), MAX_ENTRIES);
                assert_eq!(kv[0].0, "a_b_c");
                assert!(kv[0].1.starts_with("line1 line2vvv"));
                assert_eq!(kv[0].1.len(), MAX_VALUE_LEN);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(got[1], Control::Bye("a b".into()));
    }

    fn app(sub: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_app(1, sub, body, &mut v);
        v
    }

    #[test]
    fn rtcp_skips_foreign_and_rejects_bad() {
        // A receiver report (PT 201, no report blocks) then our keepalive.
        let mut b = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        b.extend_from_slice(&app(0, &[]));
        // Another APP name and an unknown subtype are skipped.
        b.extend_from_slice(&[0x80, 204, 0, 2, 0, 0, 0, 1, b'X', b'Y', b'Z', b'W']);
        b.extend_from_slice(&app(17, b"future"));
        assert_eq!(parse_rtcp(&b).unwrap(), vec![Control::Keepalive]);

        assert!(parse_rtcp(&[]).is_err());
        assert!(parse_rtcp(&[0x80, 204]).is_err());
        assert!(matches!(
            parse_rtcp(&[0x80, 204, 0, 5, 0, 0, 0, 0]),
            Err(WireError::RtcpLength { claimed: 24, .. })
        ));
        assert!(matches!(
            parse_rtcp(&[0x40, 204, 0, 0]),
            Err(WireError::Version { version: 1, .. })
        ));
        // Trailing garbage shorter than a header.
        let mut t = app(0, &[]);
        t.extend_from_slice(&[0x80, 0]);
        assert!(parse_rtcp(&t).is_err());
        // Bad padding.
        let mut p = app(3, b"a=1\n");
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 0;
        assert!(matches!(parse_rtcp(&p), Err(WireError::RtcpPadding { .. })));
        let l = p.len();
        p[l - 1] = 200;
        assert!(parse_rtcp(&p).is_err());
        // Valid padding is honoured.
        let mut p = app(3, b"a=1\n\0\0\0\x04");
        p[0] |= 0x20;
        assert_eq!(
            parse_rtcp(&p).unwrap(),
            vec![Control::Report(vec![("a".into(), "1".into())])]
        );
        // Bodies.
        assert_eq!(
            parse_rtcp(&app(6, &[0, 2, 0, 9, 1, 0])).unwrap(),
            vec![Control::Nack(vec![9, 256])]
        );
        assert!(parse_rtcp(&app(6, &[])).is_err());
        assert!(parse_rtcp(&app(6, &[0, 4, 0, 9, 1, 0])).is_err()); // short
        assert!(parse_rtcp(&app(6, &[0, 1, 0, 9, 1, 0])).is_err()); // a number too many
        assert!(parse_rtcp(&app(6, &[0, 65, 0, 0])).is_err()); // over MAX_NACK
        assert!(parse_rtcp(&app(3, b"noequals\n")).is_err());
        assert!(parse_rtcp(&app(3, b"=v\n")).is_err());
        assert!(parse_rtcp(&app(4, b"k=\xff\n")).is_err());
        assert!(parse_rtcp(&app(4, b"k=a\rb\n")).is_err());
        assert!(parse_rtcp(&app(1, b"body")).is_err());
        let long_key = format!("{}=1\n", "k".repeat(MAX_KEY_LEN + 1));
        assert!(parse_rtcp(&app(3, long_key.as_bytes())).is_err());
        let long_val = format!("k={}\n", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(parse_rtcp(&app(3, long_val.as_bytes())).is_err());
        let many: String = (0..=MAX_ENTRIES).map(|i| format!("k{i}=1\n")).collect();
        assert!(parse_rtcp(&app(3, many.as_bytes())).is_err());
        let ok: String = (0..MAX_ENTRIES).map(|i| format!("k{i}=1\n")).collect();
        assert!(parse_rtcp(&app(3, ok.as_bytes())).is_ok());
    }

    #[test]
    fn sender_sequence_timestamp_marker() {
        let mut s = RtpSender::with_state(7, 65534, u32::MAX - 959);
        let mut out = Vec::new();
        let h = s.packetize(96, 960, false, &[1], &mut out);
        assert!(h.marker); // first packet
        assert_eq!((h.seq, h.timestamp, h.ssrc), (65534, u32::MAX - 959, 7));
        assert_eq!(parse_rtp(&out).unwrap().0, h);
        let h = s.packetize(96, 960, false, &[1], &mut out);
        assert!(!h.marker);
        assert_eq!((h.seq, h.timestamp), (65535, 0));
        let h = s.packetize(96, 960, false, &[1], &mut out);
        assert_eq!((h.seq, h.timestamp), (0, 960));
        s.skip(48000);
        assert_eq!(s.seq(), 1);
        assert_eq!(s.timestamp(), 1920 + 48000);
        let h = s.packetize(96, 960, false, &[1], &mut out);
        assert!(h.marker);
        assert_eq!((h.seq, h.timestamp), (1, 49920));
        let h = s.packetize(96, 960, true, &[1], &mut out);
        assert!(h.marker);
        let a = RtpSender::new();
        let b = RtpSender::new();
        assert_ne!(
            (a.ssrc(), a.seq(), a.timestamp()),
            (b.ssrc(), b.seq(), b.timestamp())
        );
    }
}
