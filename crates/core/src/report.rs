//! A tunnel's statistics at one moment, typed: what the receiving side ([`Received`]) and the
//! sending side ([`Sent`]) count, with the one conversion to the `opus.tunnel.*` properties
//! that users read with `pactl list` or `pw-cli info` ([`Report::properties`]).
use std::collections::BTreeMap;

/// What a tunnel is doing, as the `opus.tunnel.state` property names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connecting or handshaking.
    Connecting,
    /// The receive buffer fills before playback starts.
    Buffering,
    /// Audio flows.
    Streaming,
    /// Connected, nothing plays or nothing reads.
    Idle,
    /// The link was lost; waiting to reconnect.
    Reconnecting,
    /// Closed for good.
    Closed,
}

impl State {
    /// The property's value: `connecting`, `buffering`, `streaming`, `idle`,
    /// `reconnecting`, `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Buffering => "buffering",
            State::Streaming => "streaming",
            State::Idle => "idle",
            State::Reconnecting => "reconnecting",
            State::Closed => "closed",
        }
    }

    /// Audio is expected to flow (so a tunnel nobody reads is idle instead).
    pub fn is_active(self) -> bool {
        matches!(self, State::Streaming | State::Buffering)
    }
}

impl From<crate::stats::TunnelState> for State {
    fn from(s: crate::stats::TunnelState) -> State {
        use crate::stats::TunnelState as T;
        match s {
            T::Connecting => State::Connecting,
            T::Streaming => State::Streaming,
            T::Idle => State::Idle,
            T::Reconnecting => State::Reconnecting,
            T::Closed => State::Closed,
        }
    }
}

/// What the receiving side of a tunnel counts (the receiver's streams, the tunnel source).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// Audio between the network and the device, µs.
    pub latency_usec: u64,
    /// What the receive buffer aims at, µs.
    pub target_latency_usec: u64,
    /// The drift correction, ppm.
    pub drift_ppm: f64,
    /// The device found nothing to play.
    pub underruns: u64,
    /// Audio thrown away: too much queued, or a restart.
    pub overruns: u64,
    /// Frames concealed (Opus PLC, or silence for PCM).
    pub plc_frames: u64,
    /// Packets that came too late or twice.
    pub late_packets: u64,
    /// Bytes read from the network.
    pub bytes_received: u64,
    /// The receiving device's latency for the stream, µs (0 where the receiving side is the
    /// tunnel source itself).
    pub device_latency_usec: u64,
    /// Audio packets that never arrived (UDP; recovered or not).
    pub packets_lost: u64,
    /// Lost frames decoded from Opus in-band FEC.
    pub fec_frames: u64,
    /// Lost packets rebuilt from parity.
    pub parity_frames: u64,
    /// Lost packets sent again on request that came in time (UDP).
    pub repaired_frames: u64,
    /// Datagrams dropped (foreign, not authentic, replayed, malformed).
    pub udp_dropped: u64,
}

/// What the sending side of a tunnel counts (the tunnel sink, a receiver's record streams).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent {
    /// Bytes written to the network.
    pub bytes_sent: u64,
    /// RTP and RTCP packets written.
    pub packets_sent: u64,
    /// Frames dropped before encoding (the link stalled).
    pub dropped_frames: u64,
    /// Packets sent again on the receiver's request (UDP).
    pub repairs_sent: u64,
    /// Blocks the device could not hand over (the worker was behind).
    pub overruns: u64,
    /// The end-to-end latency reported to the daemon, µs.
    pub latency_usec: u64,
    /// The network's one-way time, µs.
    pub network_usec: u64,
    /// The far end's last report (its `latency_usec`, `underruns`, ...).
    pub remote: BTreeMap<String, String>,
}

/// The counters of one side.
#[derive(Debug, Clone, PartialEq)]
pub enum Counters {
    /// The receiving side.
    Received(Received),
    /// The sending side.
    Sent(Sent),
}

/// A tunnel's statistics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What it is doing.
    pub state: State,
    /// The other end's address (receiver side).
    pub peer: Option<String>,
    /// Measured bitrate on the wire, bit/s.
    pub bitrate: u64,
    /// Links re-established after a loss (clients).
    pub reconnects: Option<u64>,
    /// What the connection is encrypted with: a Noise pattern's name, or `none`
    /// (property `opus.tunnel.encryption`).
    pub encryption: &'static str,
    /// `tcp` or `udp` (property `opus.tunnel.transport`).
    pub transport: &'static str,
    /// The side's counters.
    pub counters: Counters,
}

impl Report {
    /// The report as `opus.tunnel.*` properties.
    pub fn properties(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::with_capacity(16);
        let mut put = |k: &str, v: String| p.push((format!("opus.tunnel.{k}"), v));
        put("state", self.state.as_str().into());
        if let Some(peer) = &self.peer {
            put("peer", peer.clone());
        }
        put("bitrate", self.bitrate.to_string());
        put("encryption", self.encryption.to_string());
        put("transport", self.transport.to_string());
        match &self.counters {
            Counters::Received(r) => {
                put("latency_usec", r.latency_usec.to_string());
                put("target_latency_usec", r.target_latency_usec.to_string());
                put("drift_ppm", format!("{:.1}", r.drift_ppm));
                put("underruns", r.underruns.to_string());
                put("overruns", r.overruns.to_string());
                put("plc_frames", r.plc_frames.to_string());
                put("late_packets", r.late_packets.to_string());
                put("bytes_received", r.bytes_received.to_string());
                put("device_latency_usec", r.device_latency_usec.to_string());
                put("packets_lost", r.packets_lost.to_string());
                put("fec_frames", r.fec_frames.to_string());
                put("parity_frames", r.parity_frames.to_string());
                put("repaired_frames", r.repaired_frames.to_string());
                put("udp_dropped", r.udp_dropped.to_string());
                if let Some(n) = self.reconnects {
                    put("reconnects", n.to_string());
                }
            }
            Counters::Sent(s) => {
                put("bytes_sent", s.bytes_sent.to_string());
                put("packets_sent", s.packets_sent.to_string());
                if let Some(n) = self.reconnects {
                    put("reconnects", n.to_string());
                }
                put("dropped_frames", s.dropped_frames.to_string());
                put("repairs_sent", s.repairs_sent.to_string());
                put("overruns", s.overruns.to_string());
                put("latency_usec", s.latency_usec.to_string());
                put("network_usec", s.network_usec.to_string());
                for (k, v) in &s.remote {
                    put(&format!("remote.{k}"), v.clone());
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: State, reconnects: Option<u64>, counters: Counters) -> Vec<(String, String)> {
        let r = Report {
            state,
            peer: Some("127.0.0.1:5000".into()),
            bitrate: 64_000,
            reconnects,
            encryption: "none",
            transport: "tcp",
            counters,
        };
        r.properties()
    }

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn properties_of_both_sides() {
        let received = Received {
            latency_usec: 60_000,
            drift_ppm: 12.345,
            ..Default::default()
        };
        let p = report(State::Buffering, None, Counters::Received(received));
        assert_eq!(get(&p, "opus.tunnel.state"), Some("buffering"));
        assert_eq!(get(&p, "opus.tunnel.peer"), Some("127.0.0.1:5000"));
        assert_eq!(get(&p, "opus.tunnel.drift_ppm"), Some("12.3"));
        assert_eq!(get(&p, "opus.tunnel.latency_usec"), Some("60000"));
        assert_eq!(get(&p, "opus.tunnel.reconnects"), None);
        assert_eq!(get(&p, "opus.tunnel.encryption"), Some("none"));
        assert_eq!(p.len(), 19);
        let mut sent = Sent {
            bytes_sent: 10,
            ..Default::default()
        };
        sent.remote.insert("latency_usec".into(), "61000".into());
        let p = report(State::Idle, Some(2), Counters::Sent(sent));
        assert_eq!(get(&p, "opus.tunnel.state"), Some("idle"));
        assert_eq!(get(&p, "opus.tunnel.reconnects"), Some("2"));
        assert_eq!(get(&p, "opus.tunnel.remote.latency_usec"), Some("61000"));
        assert_eq!(get(&p, "opus.tunnel.bytes_sent"), Some("10"));
    }
}
