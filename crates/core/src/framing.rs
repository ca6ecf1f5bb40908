//! RFC 4571 framing of RTP and RTCP packets on a TCP stream: each packet is preceded by
//! its length as a 16-bit big-endian integer.

pub use crate::rtp::WireError;

/// Largest packet one frame can carry (the 16-bit length field).
pub const MAX_FRAME_LEN: usize = 65535;

/// Appends the 2-byte big-endian length of `packet` and `packet` to `out`.
/// Errors when `packet` is empty or longer than [`MAX_FRAME_LEN`]; `out` is then unchanged.
pub fn frame(packet: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    if packet.is_empty() {
        return Err(WireError::EmptyFrame);
    }
    let len = u16::try_from(packet.len()).map_err(|_| WireError::FrameTooLong {
        len: packet.len(),
        max: MAX_FRAME_LEN,
    })?;
    out.reserve(2 + packet.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Splits a TCP byte stream into RFC 4571 frames.
///
/// Feed it whatever the socket gave with [`push`](Self::push), then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. Memory is bounded: after
/// that drain the buffer holds at most one incomplete frame, i.e. at most `max_len + 1`
/// bytes (2-byte length + up to `max_len − 1` bytes of a frame), so the buffer never holds
/// more than `max_len + 2` bytes plus what the last `push` added. A frame announcing length
/// 0 or more than `max_len` is an error as soon as its 2-byte length is in; the stream
/// cannot be resynchronised, so every later call returns the same error (close the
/// connection).
#[derive(Debug, Clone)]
pub struct Deframer {
    buf: Vec<u8>,
    pos: usize,
    max_len: usize,
    failed: Option<WireError>,
}

impl Deframer {
    /// A deframer accepting frames of 1 … `max_len` bytes (`max_len` is capped at
    /// [`MAX_FRAME_LEN`]).
    pub fn new(max_len: usize) -> Self {
        Deframer {
            buf: Vec::new(),
            pos: 0,
            max_len: max_len.min(MAX_FRAME_LEN),
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's packet, `Ok(None)` if more bytes are needed, or an error for
    /// a length of 0 or above `max_len` (sticky).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            self.compact();
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([avail[0], avail[1]]));
        let err = if len == 0 {
            Some(WireError::EmptyFrame)
        } else if len > self.max_len {
            Some(WireError::FrameTooLong {
                len,
                max: self.max_len,
            })
        } else {
            None
        };
        if let Some(e) = err {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.pos = 0;
            return Err(e);
        }
        if avail.len() < 2 + len {
            self.compact();
            return Ok(None);
        }
        let pkt = avail[2..2 + len].to_vec();
        self.pos += 2 + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some(pkt))
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Takes the bytes held that have not been returned as frames (the deframer is then
    /// empty).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos.min(self.buf.len()));
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// Bytes held that have not been returned as frames yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl Default for Deframer {
    /// `Deframer::new(MAX_FRAME_LEN)`.
    fn default() -> Self {
        Deframer::new(MAX_FRAME_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes() {
        let mut out = vec![9];
        frame(&[1, 2, 3], &mut out).unwrap();
        assert_eq!(out, [9, 0, 3, 1, 2, 3]);
        assert_eq!(frame(&[], &mut out), Err(WireError::EmptyFrame));
        let big = vec![0u8; 65536];
        assert_eq!(
            frame(&big, &mut out),
            Err(WireError::FrameTooLong {
                len: 65536,
                max: 65535
            })
        );
        assert_eq!(out.len(), 6);
        frame(&big[..65535], &mut out).unwrap();
        assert_eq!(&out[6..8], &[0xff, 0xff]);
    }

    #[test]
    fn deframe_byte_by_byte_and_bulk() {
        let pkts: Vec<Vec<u8>> = (1..50u8).map(|n| vec![n; n as usize * 7]).collect();
        let mut stream = Vec::new();
        for p in &pkts {
            frame(p, &mut stream).unwrap();
        }
        // One byte at a time.
        let mut d = Deframer::new(1000);
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert!(d.buffered() <= 1000 + 1);
        }
        assert_eq!(got, pkts);
        assert_eq!(d.buffered(), 0);
        // All at once, and in odd chunks.
        for chunk in [stream.len(), 13, 333] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, pkts);
        }
    }

    #[test]
    fn deframe_errors_are_sticky() {
        let mut d = Deframer::new(100);
        d.push(&[0, 2, 1, 2, 0, 101]);
        assert_eq!(d.next_frame().unwrap(), Some(vec![1, 2]));
        let e = d.next_frame().unwrap_err();
        assert_eq!(e, WireError::FrameTooLong { len: 101, max: 100 });
        assert_eq!(e.to_string(), "frame of 101 bytes exceeds the limit of 100");
        d.push(&[0, 1, 5]);
        assert_eq!(d.next_frame().unwrap_err(), e);
        assert_eq!(d.buffered(), 3);

        let mut d = Deframer::new(100);
        d.push(&[0, 0]);
        assert_eq!(d.next_frame(), Err(WireError::EmptyFrame));

        let mut d = Deframer::new(100);
        d.push(&[0]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[3, 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 3);
        d.push(&[2, 3]);
        assert_eq!(d.next_frame(), Ok(Some(vec![1, 2, 3])));
        // What follows a frame comes back as bytes.
        let mut d = Deframer::new(100);
        d.push(&[0, 1, 9, 0, 5, 1]);
        assert_eq!(d.next_frame(), Ok(Some(vec![9])));
        assert_eq!(d.take_rest(), vec![0, 5, 1]);
        assert_eq!(d.buffered(), 0);
        // Capped at the field's range.
        assert_eq!(Deframer::new(1 << 20).max_len, MAX_FRAME_LEN);
    }
}
