//! The state one tunnel's threads share: the connection's thread (network, decoding or
//! encoding), the daemon's main thread (its stream, its properties) and the daemon's real-time
//! thread (the ring's fill level, restarts).
use crate::encode;
use crate::handshake::Hello;
use crate::net::Conn;
use crate::playout::{PlayoutState, PlayoutStats};
use crate::report::{Counters, Received, Report, State};
use crate::stats::{BitrateMeter, Stats};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// `ConnShared::device_latency` before the daemon glue said anything.
const NO_DEVICE_LATENCY: u64 = u64::MAX;

/// What the connection thread shares with the main thread and the sink's IO thread.
pub struct ConnShared {
    /// `<sender's name>@<sender's host>`, for log lines.
    pub label: String,
    /// Sample rate of the stream.
    pub rate: u32,
    /// Channels of the stream.
    pub channels: u8,
    /// Channel map in PulseAudio's text form, as the sender gave it.
    pub channel_map: String,
    /// The device the sender asked for (`None`: the receiver's choice).
    pub device: Option<String>,
    /// Receive buffer target, µs.
    pub target_usec: u64,
    /// Counters of this connection.
    pub stats: Stats,
    /// The connection ended (set by its thread).
    pub closed: AtomicBool,
    /// The stream was killed or the module unloads: the connection thread should end.
    pub(crate) killed: AtomicBool,
    /// The sender said it paused (no stream plays into its sink).
    pub paused: AtomicBool,
    /// Nothing to play and nothing left in the ring: the host may cork the stream (and let
    /// its device sleep) until this is false again. Set by the connection thread, which
    /// wakes the host when it changes.
    pub(crate) quiet: AtomicBool,
    /// The connection, for [`kill`](Self::kill) to wake its thread out of a long read.
    pub(crate) sock: OnceLock<Conn>,
    /// Samples in the ring after the last pop.
    pub(crate) fill: AtomicU64,
    meter: Mutex<BitrateMeter>,
    peer: String,
    /// Record tunnels: the capture's sender side (stopped when the connection is killed).
    pub(crate) record: OnceLock<Arc<encode::Shared>>,
    /// Record tunnels: the far end has readers, so the capture should run.
    pub(crate) recording: AtomicBool,
    /// The engine restarted: the real-time side drops the ring's samples up to this count of
    /// samples ever written into it (what it held at the restart, not what came after).
    pub(crate) discard_until: AtomicU64,
    /// The clock both threads time the stream with (µs since the connection began).
    epoch: Instant,
    /// The playout engine's figures, refreshed by the connection thread every 100 ms.
    pub(crate) playout: Mutex<Option<PlayoutStats>>,
    /// The engine's ratio (f64 bits), for an external resampler.
    pub(crate) ratio_bits: AtomicU64,
    /// The receiving device's latency for this stream, µs (see
    /// [`note_device_latency_usec`](Self::note_device_latency_usec)).
    device_latency: AtomicU64,
}

impl ConnShared {
    /// Ends the connection (its stream was killed, or the receiver stops).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(t) = self.record.get() {
            t.stop();
        }
        if let Some(s) = self.sock.get() {
            s.shutdown_read();
        }
    }

    /// Nothing to play (the sender paused, or has sent nothing yet) and the stream's ring is
    /// empty: the host may cork the stream until this turns false (the connection thread
    /// wakes the host, [`crate::server::Host::changed`], when it does).
    pub fn quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }

    /// Record tunnels: whether the capture should run (the far end has readers). The host
    /// corks its recording stream while this is false.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    /// The connection has ended; its stream should go.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Microseconds since the connection began (monotonic; cheap enough for the real-time
    /// thread).
    pub fn now_usec(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The daemon glue of a receiver tells, at each pull of the device, how long the device
    /// takes to play what the stream hands it, µs: what the device holds when it pulls and
    /// what the daemon queues for the stream beyond the ring (PulseAudio: the sink's latency,
    /// the sink input's render queue and the pull's own length, since the playout engine's
    /// line of pulls takes a pull's frames over the period before it; PipeWire: the stream's
    /// delay, queue and resampler). With the receive buffer's mean fill (`latency_usec`) this is the time from
    /// the network to the speaker. The figure kept is a running average over about 16 pulls
    /// (the device's own pattern moves each reading). Lock-free; one writer, the daemon's
    /// real-time thread.
    pub fn note_device_latency_usec(&self, usec: u64) {
        let old = self.device_latency.load(Ordering::Relaxed);
        let new = if old == NO_DEVICE_LATENCY {
            usec
        } else {
            // old + (usec - old) / 16, in integers
            (old * 15 + usec) / 16
        };
        self.device_latency.store(new, Ordering::Relaxed);
    }

    /// The receiving device's latency for this stream, µs, as the daemon glue last told it
    /// (0 until then); what the receiver's reports should carry as `device_latency_usec`.
    pub fn device_latency_usec(&self) -> u64 {
        match self.device_latency.load(Ordering::Relaxed) {
            NO_DEVICE_LATENCY => 0,
            v => v,
        }
    }

    /// Records the ring's fill level (samples) after a pop.
    pub fn set_fill(&self, samples: usize) {
        self.fill.store(samples as u64, Ordering::Relaxed);
    }

    /// Interleaved samples of this stream as a duration, µs.
    pub fn samples_to_usec(&self, samples: usize) -> u64 {
        let per_sec = u64::from(self.rate) * u64::from(self.channels);
        samples as u64 * 1_000_000 / per_sec.max(1)
    }

    /// The playout engine's latest figures, if it runs.
    pub(crate) fn playout_stats(&self) -> Option<PlayoutStats> {
        self.playout.lock().ok().and_then(|p| *p)
    }

    fn latency_usec(&self) -> u64 {
        self.samples_to_usec(self.fill.load(Ordering::Relaxed) as usize)
    }

    /// The statistics as `opus.tunnel.*` properties (call about once a second: the bitrate is
    /// measured between calls).
    pub fn stat_properties(&self) -> Vec<(String, String)> {
        self.report().properties()
    }

    /// The statistics (call about once a second: the bitrate is measured between calls).
    pub fn report(&self) -> Report {
        if let Some(t) = self.record.get() {
            // A record tunnel served here: the capture's sending side.
            let mut r = t.report();
            if !self.recording() {
                r.state = State::Idle;
            }
            r.peer = Some(self.peer.clone());
            return r;
        }
        let s = self.stats.snapshot();
        let udp = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s_enc = self.stats.encryption().as_str();
        let bitrate = match self.meter.lock() {
            Ok(mut m) => m.sample(Instant::now(), s.bytes_received),
            Err(_) => 0,
        };
        let p = self.playout.lock().ok().and_then(|p| *p);
        let state = match p.map(|p| p.state) {
            _ if self.paused.load(Ordering::Relaxed) => State::Idle,
            Some(PlayoutState::Buffering) => State::Buffering,
            Some(PlayoutState::Playing) => State::Streaming,
            None => s.state.into(),
        };
        Report {
            state,
            peer: Some(self.peer.clone()),
            bitrate,
            reconnects: None,
            encryption: s_enc,
            transport: self.stats.udp.transport().as_str(),
            counters: Counters::Received(Received {
                latency_usec: p.map_or_else(|| self.latency_usec(), |p| p.latency_usec),
                target_latency_usec: p.map_or(self.target_usec, |p| p.target_usec),
                drift_ppm: p.map_or(0.0, |p| p.drift_ppm),
                underruns: p.map_or(0, |p| p.underruns),
                overruns: s.overruns + p.map_or(0, |p| p.overruns),
                plc_frames: s.plc_frames,
                late_packets: s.late_packets,
                bytes_received: s.bytes_received,
                device_latency_usec: self.device_latency_usec(),
                packets_lost: udp(&self.stats.udp.packets_lost),
                fec_frames: udp(&self.stats.udp.fec_frames),
                parity_frames: udp(&self.stats.udp.parity_frames),
                repaired_frames: udp(&self.stats.udp.repaired_frames),
                udp_dropped: udp(&self.stats.udp.dropped),
            }),
        }
    }
}

pub(crate) fn new_conn(hello: &Hello, target_usec: u64, peer: String) -> Arc<ConnShared> {
    Arc::new(ConnShared {
        label: format!("{}@{}", hello.name, hello.host),
        rate: hello.rate,
        channels: hello.channels,
        channel_map: hello.channel_map.clone(),
        device: hello.device.clone(),
        target_usec,
        stats: Stats::new(),
        closed: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        quiet: AtomicBool::new(false),
        sock: OnceLock::new(),
        fill: AtomicU64::new(0),
        epoch: Instant::now(),
        playout: Mutex::new(None),
        meter: Mutex::new(BitrateMeter::default()),
        peer,
        record: OnceLock::new(),
        recording: AtomicBool::new(false),
        discard_until: AtomicU64::new(0),
        ratio_bits: AtomicU64::new(1.0f64.to_bits()),
        device_latency: AtomicU64::new(NO_DEVICE_LATENCY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::Hello;

    #[test]
    fn device_latency_is_averaged_over_pulls() {
        let hello = Hello::opus_stereo_play("tun".to_string(), "h".into());
        let c = new_conn(&hello, 60_000, "peer".into());
        assert_eq!(c.device_latency_usec(), 0);
        c.note_device_latency_usec(5_000);
        assert_eq!(c.device_latency_usec(), 5_000);
        // A device whose readings alternate 0 and 10 ms averages 5 ms, within 0.4 ms.
        for i in 0..200 {
            c.note_device_latency_usec(if i % 2 == 0 { 0 } else { 10_000 });
        }
        let v = c.device_latency_usec();
        assert!((4_600..=5_400).contains(&v), "{v}");
        // A step to 20 ms is followed within 64 pulls to 0.4 ms.
        for _ in 0..64 {
            c.note_device_latency_usec(20_000);
        }
        let v = c.device_latency_usec();
        assert!((19_600..=20_000).contains(&v), "{v}");
    }
}
