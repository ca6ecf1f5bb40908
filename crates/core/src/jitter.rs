//! Jitter buffer: reorders RTP packets by sequence number and reports gaps so that the
//! caller can conceal them (Opus PLC).
//!
//! The caller pushes packets as they arrive and pops one entry each time the next packet is
//! due for playout. A gap is reported at once as [`Playout::Missing`] — one per missing
//! packet — if a later packet is already buffered; packets that arrive after their slot was
//! played or concealed are [`PushResult::Late`]. Sequence numbers wrap around (16 bit).
//! A jump of more than [`MAX_JUMP`] packets forward or [`MAX_MISORDER`] backward is taken
//! as a restart of the stream: the buffer resets and starts again from that packet. On a
//! new SSRC the caller should call [`JitterBuffer::reset`] itself.

use std::collections::BTreeMap;

/// A forward jump (in packets) larger than this restarts the buffer.
pub const MAX_JUMP: i64 = 3000;
/// A backward step (in packets) larger than this restarts the buffer.
pub const MAX_MISORDER: i64 = 100;

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Buffered.
    Accepted,
    /// Already buffered: dropped.
    Duplicate,
    /// Older than what was already played (or concealed): dropped.
    Late,
    /// The buffer is full: dropped and counted.
    Overflow,
}

/// The next thing to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// A packet to decode.
    Packet {
        /// Its RTP timestamp.
        timestamp: u32,
        /// Its payload.
        payload: Vec<u8>,
        /// When it arrived (the caller's clock, as given to [`JitterBuffer::push_at`]);
        /// `None` for a packet that did not arrive itself (rebuilt).
        arrived: Option<u64>,
    },
    /// A lost packet to conceal.
    Missing {
        /// Its inferred RTP timestamp.
        timestamp: u32,
        /// Its inferred duration in RTP ticks (from the timestamps around the gap).
        ticks: u32,
    },
}

/// Reordering buffer of RTP packets; see the module documentation.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    capacity: usize,
    /// Packets by extended sequence number.
    packets: BTreeMap<u64, (u32, Vec<u8>, Option<u64>)>,
    /// Extended sequence number of the next packet to play.
    next: Option<u64>,
    /// Extended sequence number and timestamp of the last packet played (not concealed).
    last_played: Option<(u64, u32)>,
    overflows: u64,
    late: u64,
    duplicates: u64,
    restarts: u64,
}

/// Extended sequence numbers start here so that earlier packets stay positive.
const EXT_BASE: u64 = 1 << 32;

impl JitterBuffer {
    /// A buffer holding at most `capacity_packets` packets (at least 1).
    pub fn new(capacity_packets: usize) -> Self {
        JitterBuffer {
            capacity: capacity_packets.max(1),
            packets: BTreeMap::new(),
            next: None,
            last_played: None,
            overflows: 0,
            late: 0,
            duplicates: 0,
            restarts: 0,
        }
    }

    /// Capacity in packets.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offers a packet. See [`PushResult`].
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: Vec<u8>) -> PushResult {
        self.push_at(seq, timestamp, payload, None)
    }

    /// Offers a packet that arrived at `arrived` (handed back with it by [`pop`](Self::pop)).
    pub fn push_at(
        &mut self,
        seq: u16,
        timestamp: u32,
        payload: Vec<u8>,
        arrived: Option<u64>,
    ) -> PushResult {
        let next = match self.next {
            Some(n) => n,
            None => {
                let n = EXT_BASE + u64::from(seq);
                self.next = Some(n);
                n
            }
        };
        let delta = i64::from(seq.wrapping_sub(next as u16) as i16);
        // i16 covers ±32767; a forward jump past MAX_JUMP or a far step back restarts.
        if !(-MAX_MISORDER..=MAX_JUMP).contains(&delta) {
            self.restarts += 1;
            self.reset();
            return self.push_at(seq, timestamp, payload, arrived);
        }
        if delta < 0 {
            self.late += 1;
            return PushResult::Late;
        }
        let ext = next + delta as u64;
        if self.packets.contains_key(&ext) {
            self.duplicates += 1;
            return PushResult::Duplicate;
        }
        if self.packets.len() >= self.capacity {
            self.overflows += 1;
            return PushResult::Overflow;
        }
        self.packets.insert(ext, (timestamp, payload, arrived));
        PushResult::Accepted
    }

    /// The next entry in sequence order: the packet, or `Missing` for each absent sequence
    /// number before the first buffered one. `None` when empty.
    pub fn pop(&mut self) -> Option<Playout> {
        let (&first, _) = self.packets.iter().next()?;
        let next = self.next.unwrap_or(first);
        if first <= next {
            let (timestamp, payload, arrived) = self.packets.remove(&first)?;
            self.next = Some(first + 1);
            self.last_played = Some((first, timestamp));
            return Some(Playout::Packet {
                timestamp,
                payload,
                arrived,
            });
        }
        // Gap before `first`.
        let (first_ts, _, _) = self.packets.get(&first)?;
        let Some((last_seq, last_ts)) = self.last_played else {
            // Nothing played yet: nothing to infer from, start at the first packet.
            self.next = Some(first);
            return self.pop();
        };
        let span = first - last_seq; // ≥ 2
        let ticks = (first_ts.wrapping_sub(last_ts) as u64 / span) as u32;
        let timestamp = last_ts.wrapping_add(ticks.wrapping_mul((next - last_seq) as u32));
        self.next = Some(next + 1);
        Some(Playout::Missing { timestamp, ticks })
    }

    /// Whether the next entry would be a gap ([`Playout::Missing`]): packets wait, but not
    /// the next one in sequence.
    pub fn gap_at_head(&self) -> bool {
        match (self.packets.keys().next(), self.next, self.last_played) {
            (Some(&first), Some(next), Some(_)) => first > next,
            _ => false,
        }
    }

    /// The payload of the next packet in sequence, if it is here (after a
    /// [`Playout::Missing`]: the packet that follows the lost one, whose in-band FEC may
    /// carry it).
    pub fn head_payload(&self) -> Option<&[u8]> {
        let next = self.next?;
        self.packets.get(&next).map(|(_, p, _)| p.as_slice())
    }

    /// Packets buffered.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// True when no packet is buffered.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Drops every packet and forgets the sequence position; the next push starts afresh.
    /// Counters are kept.
    pub fn reset(&mut self) {
        self.packets.clear();
        self.next = None;
        self.last_played = None;
    }

    /// Sequence number of the next packet to play, if known.
    pub fn next_seq(&self) -> Option<u16> {
        self.next.map(|n| n as u16)
    }

    /// Packets dropped because the buffer was full.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Packets dropped as late.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Duplicate packets dropped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Restarts detected from sequence jumps.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(ts: u32, b: u8) -> Playout {
        Playout::Packet {
            timestamp: ts,
            payload: vec![b],
            arrived: None,
        }
    }

    #[test]
    fn in_order() {
        let mut j = JitterBuffer::new(10);
        assert!(j.is_empty());
        assert_eq!(j.pop(), None);
        for i in 0..5u16 {
            assert_eq!(
                j.push(100 + i, 960 * u32::from(i), vec![i as u8]),
                PushResult::Accepted
            );
        }
        assert_eq!(j.len(), 5);
        for i in 0..5u32 {
            assert_eq!(j.pop(), Some(pkt(960 * i, i as u8)));
        }
        assert_eq!(j.pop(), None);
        assert_eq!(j.next_seq(), Some(105));
    }

    #[test]
    fn reorder_and_duplicates_and_late() {
        let mut j = JitterBuffer::new(10);
        j.push(10, 0, vec![0]);
        assert_eq!(j.push(12, 1920, vec![2]), PushResult::Accepted);
        assert_eq!(j.push(11, 960, vec![1]), PushResult::Accepted);
        assert_eq!(j.push(11, 960, vec![1]), PushResult::Duplicate);
        assert_eq!(j.pop(), Some(pkt(0, 0)));
        assert_eq!(j.pop(), Some(pkt(960, 1)));
        assert_eq!(j.push(11, 960, vec![1]), PushResult::Late);
        assert_eq!(j.push(10, 0, vec![0]), PushResult::Late);
        assert_eq!(j.pop(), Some(pkt(1920, 2)));
        assert_eq!((j.late(), j.duplicates()), (2, 1));
    }

    #[test]
    fn gap_gives_missing() {
        let mut j = JitterBuffer::new(10);
        j.push(1, 1000, vec![1]);
        j.push(4, 1000 + 3 * 480, vec![4]);
        assert_eq!(j.pop(), Some(pkt(1000, 1)));
        assert_eq!(
            j.pop(),
            Some(Playout::Missing {
                timestamp: 1480,
                ticks: 480
            })
        );
        // A late arrival for a concealed slot is refused.
        assert_eq!(j.push(2, 1480, vec![2]), PushResult::Late);
        // But one whose slot is still ahead fills the gap.
        assert_eq!(j.push(3, 1960, vec![3]), PushResult::Accepted);
        assert_eq!(j.pop(), Some(pkt(1960, 3)));
        assert_eq!(j.pop(), Some(pkt(2440, 4)));
        assert_eq!(j.pop(), None);
        // Two missing in a row.
        j.push(7, 2440 + 3 * 480, vec![7]);
        assert_eq!(
            j.pop(),
            Some(Playout::Missing {
                timestamp: 2920,
                ticks: 480
            })
        );
        assert_eq!(
            j.pop(),
            Some(Playout::Missing {
                timestamp: 3400,
                ticks: 480
            })
        );
        assert_eq!(j.pop(), Some(pkt(3880, 7)));
    }

    #[test]
    fn wrap_around() {
        let mut j = JitterBuffer::new(10);
        let ts0 = u32::MAX - 959;
        j.push(65534, ts0, vec![0]);
        j.push(1, ts0.wrapping_add(3 * 960), vec![3]);
        j.push(65535, ts0.wrapping_add(960), vec![1]);
        assert_eq!(j.pop(), Some(pkt(ts0, 0)));
        assert_eq!(j.pop(), Some(pkt(0, 1)));
        assert_eq!(
            j.pop(),
            Some(Playout::Missing {
                timestamp: 960,
                ticks: 960
            })
        );
        assert_eq!(j.pop(), Some(pkt(1920, 3)));
        assert_eq!(j.next_seq(), Some(2));
        // Many wraps in order.
        let mut j = JitterBuffer::new(4);
        for i in 0..200_000u32 {
            let seq = (i % 65536) as u16;
            assert_eq!(j.push(seq, i * 960, vec![]), PushResult::Accepted);
            assert_eq!(
                j.pop(),
                Some(Playout::Packet {
                    timestamp: i * 960,
                    payload: vec![],
                    arrived: None,
                })
            );
        }
    }

    #[test]
    fn overflow() {
        let mut j = JitterBuffer::new(3);
        for i in 0..3 {
            assert_eq!(j.push(i, 0, vec![]), PushResult::Accepted);
        }
        assert_eq!(j.push(3, 0, vec![]), PushResult::Overflow);
        assert_eq!(j.push(4, 0, vec![]), PushResult::Overflow);
        assert_eq!(j.overflows(), 2);
        assert_eq!(j.len(), 3);
        j.pop();
        assert_eq!(j.push(3, 0, vec![]), PushResult::Accepted);
        assert_eq!(j.capacity(), 3);
    }

    #[test]
    fn restart_on_jump() {
        let mut j = JitterBuffer::new(10);
        j.push(100, 0, vec![0]);
        j.pop();
        j.push(101, 960, vec![1]);
        // Far ahead: restart from it.
        assert_eq!(j.push(30000, 5, vec![9]), PushResult::Accepted);
        assert_eq!(j.restarts(), 1);
        assert_eq!(j.len(), 1);
        assert_eq!(j.pop(), Some(pkt(5, 9)));
        // Far behind: restart too.
        assert_eq!(j.push(29000, 7, vec![8]), PushResult::Accepted);
        assert_eq!(j.restarts(), 2);
        assert_eq!(j.pop(), Some(pkt(7, 8)));
        // Explicit reset (new SSRC).
        j.push(29001, 8, vec![]);
        j.reset();
        assert!(j.is_empty());
        assert_eq!(j.next_seq(), None);
        assert_eq!(j.push(5, 0, vec![5]), PushResult::Accepted);
        assert_eq!(j.pop(), Some(pkt(0, 5)));
    }

    /// A packet's arrival time comes back with it, also after it waited behind a gap.
    #[test]
    fn arrival_times_come_back() {
        let mut j = JitterBuffer::new(8);
        assert_eq!(j.push_at(1, 0, vec![1], Some(10)), PushResult::Accepted);
        assert_eq!(j.push_at(3, 1920, vec![3], Some(30)), PushResult::Accepted);
        assert_eq!(j.push_at(2, 960, vec![2], None), PushResult::Accepted);
        let arrivals: Vec<Option<u64>> = std::iter::from_fn(|| j.pop())
            .map(|p| match p {
                Playout::Packet { arrived, .. } => arrived,
                Playout::Missing { .. } => Some(u64::MAX),
            })
            .collect();
        assert_eq!(arrivals, [Some(10), None, Some(30)]);
    }
}
