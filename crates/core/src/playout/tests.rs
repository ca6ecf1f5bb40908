//! Unit tests of the controller: the phases, a start's latency, concealment and the maximum.

use super::*;

const RATE: u32 = 48_000;

fn controller(target: Target, max_ms: u64) -> Controller {
    Controller::new(
        PlayoutConfig {
            rate: RATE,
            channels: 2,
            target,
            min_usec: 0,
            max_usec: max_ms * 1000,
        },
        120,
        32.0,
    )
    .unwrap()
}

/// Runs the counting resampler at ratio 1 over a plan, and returns the plan. Like rubato's,
/// it keeps its delay's worth (32 frames) of the first audio it reads.
fn feed(c: &mut Controller) -> Plan {
    let plan = c.plan();
    if plan.trim_frames != 0 {
        c.on_trimmed(0, 0);
    }
    let n = plan.feed_frames;
    let first = c.produced() == c.stats().inserted_frames;
    let out = if first { n.saturating_sub(32) } else { n };
    c.on_produced(n, out);
    plan
}

/// The device pulls 10 ms at `at_ms`, as much as the ring holds, and reports it.
fn pull(c: &mut Controller, consumed: &mut u64, missing: &mut u64, at_ms: f64) {
    let take = (c.produced() - *consumed).min(480);
    *consumed += take;
    *missing += 480 - take;
    c.on_device(us(at_ms), *consumed, *missing);
}

/// 10 ms from `t_ms` with no packet: the worker wakes every millisecond and conceals what
/// the engine asks for, then the device pulls. Returns the frames concealed.
fn conceal_and_pull(c: &mut Controller, consumed: &mut u64, missing: &mut u64, t_ms: f64) -> usize {
    let mut concealed = 0;
    for ms in 0..10 {
        while let Some(n) = c.conceal_needed(us(t_ms + f64::from(ms))) {
            c.on_conceal(n as u64);
            concealed += n;
        }
        feed(c);
    }
    pull(c, consumed, missing, t_ms + 0.5);
    concealed
}

fn us(ms: f64) -> u64 {
    (ms * 1000.0) as u64 + 1_000_000
}

#[test]
fn waits_for_the_device_then_starts_at_the_target() {
    let mut c = controller(Target::Fixed(30_000), 1000);
    c.on_packet(us(0.0), 0, 480);
    feed(&mut c);
    assert_eq!(c.state(), PlayoutState::Buffering, "no device yet");
    c.on_device(us(1.0), 0, 0);
    c.on_device(us(6.0), 0, 240);
    feed(&mut c);
    // 6 ms on, the latency is 16 ms: more than a wake-up (10 ms) short of the target, so it
    // waits.
    assert_eq!(c.state(), PlayoutState::Buffering, "waits for the latency");
    assert_eq!(c.produced(), 0);
    // 5 ms later it is 9 ms short: playout starts with the first packet, behind exactly as
    // much silence.
    let t = 11.0;
    c.on_device(us(t), 0, 480);
    feed(&mut c);
    assert_eq!(c.state(), PlayoutState::Playing);
    let lat = c.latency_usec(us(t));
    assert!(
        (lat as i64 - 30_000).abs() <= 100,
        "latency {lat} µs at the start"
    );
    assert_eq!(c.stats().underruns, 0);
    // Nothing received was cut: the 480 frames and the silence ahead of them are there.
    assert!(
        c.produced() + c.fifo_frames() >= 480 + 400,
        "{} + {}",
        c.produced(),
        c.fifo_frames()
    );
    assert_eq!(c.stats().dropped_frames, 0);
}

/// A start between two of the device's pulls: the pull after it takes the part of the period
/// the device's line has run since the last one from the new audio, and the resampler keeps
/// its delay's worth of it; the start counts both, so the latency reads the target once the
/// audio plays (counting neither, it read 25.0 ms).
#[test]
fn a_start_between_pulls_lands_on_the_target() {
    let mut c = controller(Target::Fixed(30_000), 1000);
    let (mut consumed, mut missing) = (0, 0);
    for at in [1.0, 11.0, 21.0] {
        pull(&mut c, &mut consumed, &mut missing, at);
    }
    // 30 ms of audio at once, 5 ms after the last pull.
    c.on_packet(us(26.0), 0, 1440);
    feed(&mut c);
    assert_eq!(c.state(), PlayoutState::Playing);
    for at in [31.0, 41.0] {
        pull(&mut c, &mut consumed, &mut missing, at);
        let lat = c.latency_usec(us(at));
        assert!(
            (lat as i64 - 30_000).abs() <= 100,
            "latency {lat} µs at {at} ms"
        );
    }
    assert_eq!(c.stats().underruns, 0);
}

/// A pull that finds the ring empty after the start but before the start's audio is in it
/// (the worker still making it) is no underrun; a short pull once the audio plays is.
#[test]
fn only_a_short_pull_after_the_audio_reached_the_device_is_an_underrun() {
    let mut c = controller(Target::Fixed(30_000), 1000);
    let (mut consumed, mut missing) = (0, 0);
    pull(&mut c, &mut consumed, &mut missing, 1.0);
    c.on_packet(us(5.0), 0, 1440);
    feed(&mut c);
    assert_eq!(c.state(), PlayoutState::Playing);
    // The device raced the worker: it found nothing.
    missing += 480;
    c.on_device(us(5.2), consumed, missing);
    assert_eq!(c.stats().underruns, 0);
    // Then it takes the audio, and once that has run out (no packet comes, nothing is
    // concealed here) a pull finds the ring short.
    pull(&mut c, &mut consumed, &mut missing, 11.0);
    assert!(consumed > 0);
    assert_eq!(c.stats().underruns, 0);
    let mut at = 21.0;
    while c.stats().underruns == 0 && at < 200.0 {
        pull(&mut c, &mut consumed, &mut missing, at);
        at += 10.0;
    }
    assert_eq!(
        c.stats().underruns,
        1,
        "a pull short of audio once it played"
    );
}

#[test]
fn a_late_stream_is_concealed_and_a_long_gap_is_a_pause() {
    let mut c = controller(Target::Fixed(20_000), 1000);
    let mut consumed = 0;
    let mut missing = 0;
    let mut t = 0.0;
    let mut pos = 0i64;
    // 10 ms packets and 10 ms pulls for a second.
    for _ in 0..100 {
        c.on_packet(us(t), pos, 480);
        pos += 480;
        feed(&mut c);
        pull(&mut c, &mut consumed, &mut missing, t + 0.5);
        t += 10.0;
    }
    assert_eq!(c.state(), PlayoutState::Playing);
    let before = c.stats();
    // The stream stops: the engine conceals up to MAX_CONCEAL_SEC, then buffers.
    let mut concealed = 0;
    for _ in 0..100 {
        // The worker wakes every millisecond while the engine asks it to.
        concealed += conceal_and_pull(&mut c, &mut consumed, &mut missing, t);
        t += 10.0;
    }
    let st = c.stats();
    assert_eq!(st.concealments, before.concealments + 1, "{st:?}");
    assert!(concealed as f64 >= MAX_CONCEAL_SEC * f64::from(RATE));
    assert_eq!(st.state, PlayoutState::Buffering, "the pause");
    // Packets return: a new start, not a jump.
    c.on_packet(us(t), pos + 48_000, 480);
    assert_eq!(c.stats().discontinuities, 0);
}

/// 10 ms packets and 10 ms pulls for a second, then packet 100 is lost: the engine conceals
/// its time and goes on into packet 101's (it conceals for the device's next pull at once).
/// Packet 101 arrives `late_ms` after its due time. Packet 100's stand-in is `stand_in`
/// frames: 480 (the decoder's, its overlap with the engine's concealment skipped), 0 (the
/// engine concealed all of it: the decoder adds nothing, the loss is still told), or none
/// at all (`None`). Returns the latency before the loss and after packet 101 is in, µs.
fn loss_then_packet_101(late_ms: f64, stand_in: Option<u64>) -> (u64, u64) {
    let mut c = controller(Target::Fixed(20_000), 1000);
    let (mut consumed, mut missing) = (0, 0);
    let mut t = 0.0;
    for k in 0..100 {
        c.on_packet(us(t), k * 480, 480);
        feed(&mut c);
        pull(&mut c, &mut consumed, &mut missing, t + 0.5);
        t += 10.0;
    }
    let before = c.latency_usec(us(t));
    let arrival = t + 10.0 + late_ms;
    while c.covered_from(101 * 480) == 0 || t < arrival {
        conceal_and_pull(&mut c, &mut consumed, &mut missing, t);
        t += 10.0;
    }
    // Packet 100 is given up (the decoder conceals what the engine did not), then packet 101
    // (held behind it by the jitter buffer, or late) is handed over.
    match stand_in {
        Some(0) => {
            c.on_audio(us(t), None, 101 * 480, 0);
        }
        Some(n) => {
            c.on_audio(us(t), None, 100 * 480, n);
        }
        None => {}
    }
    c.on_audio(us(t), Some(us(arrival)), 101 * 480, 480);
    feed(&mut c);
    (before, c.latency_usec(us(t)))
}

#[test]
fn a_packet_in_time_after_a_lost_one_keeps_the_latency() {
    for stand_in in [480, 0] {
        let (before, after) = loss_then_packet_101(0.0, Some(stand_in));
        assert!(
            after.abs_diff(before) < 1_000,
            "in time after a {stand_in}-frame stand-in: {before} µs before, {after} µs after"
        );
    }
    // Untold, the loss is no loss: the packet after it counts as late (the UDP receiver
    // did not tell a loss whose time the engine had concealed).
    let (before, after) = loss_then_packet_101(0.0, None);
    assert!(after > before + 2_000, "untold: {before} µs, {after} µs");
    // One that came after its turn at the target is late: played whole, the latency grows.
    let (before, after) = loss_then_packet_101(25.0, Some(480));
    assert!(
        after > before + 2_000,
        "late: {before} µs before, {after} µs after"
    );
}

#[test]
fn audio_beyond_the_maximum_is_cut_from_the_oldest() {
    let mut c = controller(Target::Fixed(20_000), 100);
    c.on_device(us(0.0), 0, 0);
    c.on_device(us(5.0), 0, 240);
    // 300 ms arrive at once: playout starts, and what passes the 100 ms maximum goes.
    for k in 0..30 {
        c.on_packet(us(6.0), k * 480, 480);
    }
    let first = c.plan();
    let second = c.plan();
    assert!(
        first.drop_frames + second.drop_frames > 0,
        "{first:?} {second:?}"
    );
    assert!(c.stats().overruns >= 1);
    assert!(c.latency_usec(us(6.0)) <= 100_000);
}

#[test]
fn config_is_checked() {
    let bad = PlayoutConfig {
        rate: RATE,
        channels: 2,
        target: Target::Fixed(2_000_000),
        min_usec: 0,
        max_usec: 1_000_000,
    };
    assert!(bad.validate().is_err());
    let bad = PlayoutConfig {
        min_usec: 2_000_000,
        target: Target::Auto,
        ..bad
    };
    assert!(bad.validate().is_err());
}

/// Runs a steady stream of 10 ms packets and pulls, then loses the packet at `lost`: the
/// engine conceals its start, and what comes for it later (`arrived`: a late packet, or
/// `None`: its stand-in from FEC, parity or the decoder's concealment) is handed over with
/// the next packet. Returns the latency before the loss and 200 ms after, µs.
fn latency_around_a_lost_packet(arrived_late: bool) -> (u64, u64, u64) {
    let mut c = controller(Target::Fixed(20_000), 1000);
    let (mut consumed, mut missing) = (0, 0);
    let mut t = 0.0;
    let mut pos = 0i64;
    let mut before = 0;
    for k in 0..140 {
        if k == 100 {
            before = c.latency_usec(us(t));
        }
        if k != 100 {
            if k == 101 {
                // What stands in for packet 100, then packet 101.
                let arrived = arrived_late.then(|| us(t));
                c.on_audio(us(t), arrived, pos - 480, 480);
            }
            c.on_packet(us(t), pos, 480);
        }
        pos += 480;
        conceal_and_pull(&mut c, &mut consumed, &mut missing, t);
        t += 10.0;
    }
    (before, c.latency_usec(us(t)), c.stats().concealed_frames)
}

#[test]
fn a_lost_packets_stand_in_adds_only_what_was_not_concealed() {
    let (before, after, concealed) = latency_around_a_lost_packet(false);
    assert!(concealed > 0, "the engine concealed the loss");
    assert!(
        after.abs_diff(before) < 1_000,
        "latency {before} µs before the loss, {after} µs after its stand-in came"
    );
    // A late packet, though, is played whole: the latency grows by what was concealed.
    let (before, after, _) = latency_around_a_lost_packet(true);
    assert!(
        after > before + 2_000,
        "late packet: latency {before} µs before, {after} µs after"
    );
}

/// A packet that comes after its time was concealed (a repair that missed its turn) plays
/// nothing, but sizes the target by its lateness, as an arrival in time would.
#[test]
fn a_packet_too_late_to_play_sizes_the_target() {
    let mut c = controller(Target::Auto, 1000);
    let (mut consumed, mut missing) = (0, 0);
    for k in 0..100u64 {
        c.on_packet(us(k as f64 * 10.0), (k * 480) as i64, 480);
        feed(&mut c);
        pull(&mut c, &mut consumed, &mut missing, k as f64 * 10.0 + 0.5);
    }
    let before = c.target_frames() / 48.0;
    assert!(before < 20.0, "target {before} ms on a steady stream");
    let fifo = c.fifo_frames();
    // Packet 50's repair, 480 ms after its time: its first frame waited that and the
    // packet's 10 ms.
    c.on_too_late(us(990.0), 50 * 480, 480);
    let after = c.target_frames() / 48.0;
    assert!(
        (after - before - 490.0).abs() < 2.0,
        "target {before} ms → {after} ms"
    );
    assert_eq!(c.fifo_frames(), fifo, "its audio is not used");
}

/// A device whose first pull came a whole graph cycle before its pace (PipeWire plays the
/// cycle that links a new stream at the quantum the graph had: 10 ms taken, then 43 ms
/// until the next pull): its line runs from the pulls after it. (Drawn through the first,
/// the line stood 43 ms ahead of the device for 2 s, the latency read that much low, and
/// when the first pull left the line's window it jumped from 30 to 73 ms.)
#[test]
fn a_first_pull_ahead_of_the_device_s_pace_is_not_its_line() {
    let mut c = controller(Target::Fixed(30_000), 1000);
    let (mut consumed, mut missing) = (0, 0);
    let mut lats = Vec::new();
    for k in 0..300u32 {
        let t = f64::from(k) * 10.0;
        c.on_packet(us(t), i64::from(k) * 480, 480);
        feed(&mut c);
        let at = match k {
            0 => Some(1.0),
            1..=4 => None,
            _ => Some(t + 4.0),
        };
        if let Some(at) = at {
            pull(&mut c, &mut consumed, &mut missing, at);
            feed(&mut c);
            if k > 10 {
                lats.push((at, c.latency_usec(us(at)) as f64 / 1000.0));
            }
        }
    }
    let steps: Vec<_> = lats
        .windows(2)
        .filter(|w| (w[1].1 - w[0].1).abs() > 2.0)
        .map(|w| (w[1].0, w[0].1, w[1].1))
        .collect();
    assert!(
        steps.is_empty(),
        "the latency stepped (ms at, from, to): {steps:?}"
    );
    assert!(c.skew_ppm().abs() < 1.0, "{}", c.skew_lines());
}

/// A shortfall without a loss (the path got longer: the packets come later, and once the
/// earliest arrivals of the old path have left the line's window the latency reads that much
/// less): one the loop would take seconds over asks for periods to be repeated at once; a
/// small one is left to silence and the loop (a pitch period repeated inside speech costs
/// PESQ).
#[test]
fn only_a_far_shortfall_is_made_up_by_repeating_periods() {
    for (longer_ms, repeat) in [(3.0, false), (10.0, true)] {
        let mut c = controller(Target::Fixed(60_000), 1000);
        let (mut consumed, mut missing) = (0, 0);
        // Packet k leaves at 10·k ms (arriving `longer_ms` later from packet 200 on); the
        // device pulls at 10·k + 5.5 ms.
        let mut events: Vec<(f64, Option<u64>)> = (0..450u64)
            .map(|k| {
                let d = if k >= 200 { longer_ms } else { 0.0 };
                (k as f64 * 10.0 + d, Some(k))
            })
            .chain((0..450u64).map(|k| (k as f64 * 10.0 + 5.5, None)))
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut plan = Plan::default();
        for (t, packet) in events {
            match packet {
                Some(k) => {
                    c.on_packet(us(t), (k * 480) as i64, 480);
                    let p = feed(&mut c);
                    if k >= 200 && p.trim_frames < plan.trim_frames {
                        plan = p;
                    }
                }
                None => pull(&mut c, &mut consumed, &mut missing, t),
            }
        }
        assert_eq!(c.stats().underruns + c.stats().concealments, 0);
        let short = -plan.trim_frames as f64 / 48.0;
        assert!(
            (short - longer_ms).abs() < 1.0,
            "{longer_ms} ms longer: {plan:?}"
        );
        assert_eq!(plan.reshape, repeat, "{longer_ms} ms longer: {plan:?}");
    }
}

/// How late a sender's blocks make its packets at most: PipeWire's 1024-frame quanta and
/// 960-frame packets, 960 (20 ms); 256-frame quanta, 192; a packet that is a multiple of the
/// block, or a block or packet not known, none.
#[test]
fn a_senders_block_ramp() {
    use super::controller::block_ramp;
    assert_eq!(block_ramp(1024, 960), 960);
    assert_eq!(block_ramp(256, 960), 192);
    assert_eq!(block_ramp(480, 960), 0);
    assert_eq!(block_ramp(480, 480), 0);
    assert_eq!(block_ramp(480, 240), 240);
    assert_eq!(block_ramp(0, 960), 0);
    assert_eq!(block_ramp(1024, 0), 0);
}
