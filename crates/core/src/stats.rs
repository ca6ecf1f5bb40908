//! Live statistics of a tunnel: lock-free counters shared between threads, the tunnel's
//! state, and a bitrate meter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// State of a tunnel connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelState {
    /// Connecting / handshaking.
    Connecting,
    /// Audio flows.
    Streaming,
    /// Connected, nothing plays (paused).
    Idle,
    /// Link lost, waiting to reconnect.
    Reconnecting,
    /// Closed for good.
    Closed,
}

impl TunnelState {
    /// Lower-case name: `connecting`, `streaming`, `idle`, `reconnecting`, `closed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TunnelState::Connecting => "connecting",
            TunnelState::Streaming => "streaming",
            TunnelState::Idle => "idle",
            TunnelState::Reconnecting => "reconnecting",
            TunnelState::Closed => "closed",
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> TunnelState {
        match v {
            0 => TunnelState::Connecting,
            1 => TunnelState::Streaming,
            2 => TunnelState::Idle,
            3 => TunnelState::Reconnecting,
            _ => TunnelState::Closed,
        }
    }
}

impl std::fmt::Display for TunnelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one tunnel, shared as `Arc<Stats>`. Update a counter with
/// `stats.underruns.fetch_add(1, Ordering::Relaxed)` or [`Stats::add`]; read them all at
/// once with [`Stats::snapshot`]. Starts in [`TunnelState::Connecting`] with all zeros.
#[derive(Debug)]
pub struct Stats {
    /// Bytes written to the socket.
    pub bytes_sent: AtomicU64,
    /// Bytes read from the socket.
    pub bytes_received: AtomicU64,
    /// RTP packets sent.
    pub packets_sent: AtomicU64,
    /// RTP packets received.
    pub packets_received: AtomicU64,
    /// Playback ran dry (receiver) / capture had nothing (sender).
    pub underruns: AtomicU64,
    /// Too much data: some had to be dropped.
    pub overruns: AtomicU64,
    /// Frames concealed with Opus PLC (or silence for PCM).
    pub plc_frames: AtomicU64,
    /// Packets that arrived after their playout time.
    pub late_packets: AtomicU64,
    /// Reconnections made.
    pub reconnects: AtomicU64,
    /// Frames dropped (link down, queue full).
    pub dropped_frames: AtomicU64,
    state: AtomicU8,
    encryption: AtomicU8,
    /// `transport=udp`: what the UDP path counts (all zero over TCP).
    pub udp: UdpCounters,
}

/// What the UDP transport counts ([`crate::udp`]).
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// The transport in use: 0 TCP, 1 UDP.
    transport: AtomicU8,
    /// Audio packets that did not arrive (gaps in the sequence), recovered or not: rebuilt
    /// from parity, decoded from FEC, or concealed.
    pub packets_lost: AtomicU64,
    /// Lost frames decoded from the next packet's Opus in-band FEC (SILK and hybrid frames).
    pub fec_frames: AtomicU64,
    /// Lost packets rebuilt from a parity block.
    pub parity_frames: AtomicU64,
    /// Lost packets that the sender sent again on request ([`crate::rtp::Control::Nack`])
    /// and that came in time to play.
    pub repaired_frames: AtomicU64,
    /// The sender: packets sent again on the receiver's request.
    pub repairs_sent: AtomicU64,
    /// Datagrams dropped: from another address than the peer's, not authentic, replayed,
    /// malformed.
    pub dropped: AtomicU64,
}

impl UdpCounters {
    /// Sets the transport in use.
    pub fn set_transport(&self, t: crate::udp::Transport) {
        let v = match t {
            crate::udp::Transport::Tcp => 0,
            crate::udp::Transport::Udp => 1,
            crate::udp::Transport::Rtp => 2,
        };
        self.transport.store(v, Ordering::Relaxed);
    }

    /// The transport in use (TCP until a link grants UDP).
    pub fn transport(&self) -> crate::udp::Transport {
        match self.transport.load(Ordering::Relaxed) {
            1 => crate::udp::Transport::Udp,
            2 => crate::udp::Transport::Rtp,
            _ => crate::udp::Transport::Tcp,
        }
    }
}

/// A plain copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`Stats::bytes_received`].
    pub bytes_received: u64,
    /// See [`Stats::packets_sent`].
    pub packets_sent: u64,
    /// See [`Stats::packets_received`].
    pub packets_received: u64,
    /// See [`Stats::underruns`].
    pub underruns: u64,
    /// See [`Stats::overruns`].
    pub overruns: u64,
    /// See [`Stats::plc_frames`].
    pub plc_frames: u64,
    /// See [`Stats::late_packets`].
    pub late_packets: u64,
    /// See [`Stats::reconnects`].
    pub reconnects: u64,
    /// See [`Stats::dropped_frames`].
    pub dropped_frames: u64,
    /// State.
    pub state: TunnelState,
}

impl StatsSnapshot {
    /// Everything as properties under `opus.tunnel.*`, e.g. `("opus.tunnel.state",
    /// "streaming")`, `("opus.tunnel.underruns", "0")`.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        vec![
            ("opus.tunnel.state", self.state.as_str().to_string()),
            ("opus.tunnel.bytes_sent", self.bytes_sent.to_string()),
            (
                "opus.tunnel.bytes_received",
                self.bytes_received.to_string(),
            ),
            ("opus.tunnel.packets_sent", self.packets_sent.to_string()),
            (
                "opus.tunnel.packets_received",
                self.packets_received.to_string(),
            ),
            ("opus.tunnel.underruns", self.underruns.to_string()),
            ("opus.tunnel.overruns", self.overruns.to_string()),
            ("opus.tunnel.plc_frames", self.plc_frames.to_string()),
            ("opus.tunnel.late_packets", self.late_packets.to_string()),
            ("opus.tunnel.reconnects", self.reconnects.to_string()),
            (
                "opus.tunnel.dropped_frames",
                self.dropped_frames.to_string(),
            ),
        ]
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// All counters zero, state `Connecting`.
    pub fn new() -> Self {
        Stats {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            underruns: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            plc_frames: AtomicU64::new(0),
            late_packets: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            state: AtomicU8::new(TunnelState::Connecting.to_u8()),
            encryption: AtomicU8::new(crate::secure::State::None.to_u8()),
            udp: UdpCounters::default(),
        }
    }

    /// Sets what the current connection is encrypted with.
    pub fn set_encryption(&self, e: crate::secure::State) {
        self.encryption.store(e.to_u8(), Ordering::Relaxed);
    }

    /// What the current (or last) connection is encrypted with.
    pub fn encryption(&self) -> crate::secure::State {
        crate::secure::State::from_u8(self.encryption.load(Ordering::Relaxed))
    }

    /// Adds `n` to `counter` (relaxed ordering; lock-free, fine on real-time threads).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the state.
    pub fn set_state(&self, s: TunnelState) {
        self.state.store(s.to_u8(), Ordering::Relaxed);
    }

    /// The state.
    pub fn state(&self) -> TunnelState {
        TunnelState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Reads every counter (each read is atomic; the set is not one transaction).
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_sent: r(&self.bytes_sent),
            bytes_received: r(&self.bytes_received),
            packets_sent: r(&self.packets_sent),
            packets_received: r(&self.packets_received),
            underruns: r(&self.underruns),
            overruns: r(&self.overruns),
            plc_frames: r(&self.plc_frames),
            late_packets: r(&self.late_packets),
            reconnects: r(&self.reconnects),
            dropped_frames: r(&self.dropped_frames),
            state: self.state(),
        }
    }
}

/// Measures a bitrate from samples of a growing byte counter over a sliding window.
#[derive(Debug, Clone)]
pub struct BitrateMeter {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Default for BitrateMeter {
    /// A 2-second window.
    fn default() -> Self {
        BitrateMeter::new(Duration::from_secs(2))
    }
}

impl BitrateMeter {
    /// A meter averaging over `window` (use ~2 s).
    pub fn new(window: Duration) -> Self {
        BitrateMeter {
            window: window.max(Duration::from_millis(1)),
            samples: VecDeque::new(),
        }
    }

    /// Records that `total_bytes` had been counted at `now` and returns the bitrate in bit/s
    /// over the last window (0 until two samples some time apart exist). A counter that goes
    /// backwards (reset) restarts the measurement. Memory is bounded (~34 samples kept).
    pub fn sample(&mut self, now: Instant, total_bytes: u64) -> u64 {
        if let Some(&(_, last)) = self.samples.back() {
            if total_bytes < last {
                self.samples.clear();
            }
        }
        let min_gap = self.window / 32;
        match self.samples.back() {
            Some(&(t, _)) if now.saturating_duration_since(t) < min_gap => {}
            _ => self.samples.push_back((now, total_bytes)),
        }
        // Keep exactly one sample at or before the window start as the reference.
        while self.samples.len() > 2 {
            let second = self.samples[1].0;
            if now.saturating_duration_since(second) >= self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let Some(&(t0, b0)) = self.samples.front() else {
            return 0;
        };
        let dt = now.saturating_duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0;
        }
        ((total_bytes - b0) as f64 * 8.0 / dt).round() as u64
    }

    /// Forgets all samples.
    pub fn reset(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn state_names() {
        assert_eq!(TunnelState::Connecting.as_str(), "connecting");
        assert_eq!(TunnelState::Streaming.as_str(), "streaming");
        assert_eq!(TunnelState::Idle.as_str(), "idle");
        assert_eq!(TunnelState::Reconnecting.as_str(), "reconnecting");
        assert_eq!(TunnelState::Closed.to_string(), "closed");
        for s in [
            TunnelState::Connecting,
            TunnelState::Streaming,
            TunnelState::Idle,
            TunnelState::Reconnecting,
            TunnelState::Closed,
        ] {
            assert_eq!(TunnelState::from_u8(s.to_u8()), s);
        }
    }

    #[test]
    fn shared_counters() {
        let s = Arc::new(Stats::new());
        assert_eq!(s.state(), TunnelState::Connecting);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        Stats::add(&s.bytes_sent, 3);
                        s.underruns.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        s.set_state(TunnelState::Streaming);
        let snap = s.snapshot();
        assert_eq!(snap.bytes_sent, 12000);
        assert_eq!(snap.underruns, 4000);
        assert_eq!(snap.plc_frames, 0);
        assert_eq!(snap.state, TunnelState::Streaming);
        let props = snap.properties();
        assert_eq!(props[0], ("opus.tunnel.state", "streaming".to_string()));
        assert!(props.contains(&("opus.tunnel.underruns", "4000".to_string())));
        assert_eq!(props.len(), 11);
    }

    #[test]
    fn bitrate_meter() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        assert_eq!(m.sample(t0, 0), 0);
        // 8000 bytes per second = 64 kbit/s, sampled every 20 ms for 5 s.
        let mut last = 0;
        for i in 1..=250u64 {
            let t = t0 + Duration::from_millis(20 * i);
            last = m.sample(t, 160 * i);
        }
        assert_eq!(last, 64_000);
        assert!(m.samples.len() <= 40);
        // Rate drops to 32 kbit/s: after a full window the meter shows it.
        let mut bytes = 160 * 250;
        for i in 251..=400u64 {
            bytes += 80;
            let t = t0 + Duration::from_millis(20 * i);
            last = m.sample(t, bytes);
        }
        assert_eq!(last, 32_000);
        // Counter reset.
        let t = t0 + Duration::from_secs(9);
        assert_eq!(m.sample(t, 10), 0);
        assert_eq!(m.sample(t + Duration::from_secs(1), 1010), 8000);
    }
}
