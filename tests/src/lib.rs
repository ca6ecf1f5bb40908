//! Integration-test harness of the Opus tunnel modules.
//!
//! Everything here drives *real* PulseAudio daemons: [`Daemon`] starts a private
//! `pulseaudio` with its own directories, socket and null sink; [`play`], [`play_loop`] and
//! [`record`] move known signals in and out through `pacat`/`parec`; the `analysis` functions
//! measure what arrived; [`CountingProxy`] sits on the TCP link and counts the bytes on the wire.
//!
//! Tests that need our modules call [`require_modules`] first, which prints `SKIP: ...` and
//! returns `false` when the built modules are absent.

pub mod analysis;
pub mod clicks;
pub mod daemon;
pub mod impair;
pub mod linkcheck;
pub mod netem;
pub mod pipewire;
pub mod process;
pub mod proxy;
pub mod schedstat;
pub mod signal;
pub mod tcp;
pub mod timed;
pub mod wait;

pub use analysis::{
    active_region, analyse_stereo, channel, dominant_frequency, dropouts, has_tone, left_tone,
    rms_dbfs, steady_part, Dropout, StereoReport,
};
pub use daemon::{
    free_port, module_dir, modules_present, require_modules, stock_module_dir, Daemon,
    DaemonBuilder,
};
pub use impair::{Impairment, ImpairmentProxy};
pub use netem::{Dir, DirStats, Link, Loss, Netem, Netns};
pub use proxy::CountingProxy;
pub use signal::{
    dbfs_to_amplitude, play, play_loop, record, record_raw, tone, tone_loop, write_s16le, Player,
    Recorder, CHANNELS, RATE,
};

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests that measure timing or audio: hold the guard for the whole test.
///
/// `cargo test` runs the tests of one file on several threads unless `--test-threads=1`
/// is given; this keeps them one at a time either way. A panic in an earlier test does not
/// poison the lock for the next ones.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes each packet carries on the wire besides its payload: the RTP header (12) and the
/// RFC 4571 length (2).
pub const FRAMING_BYTES: f64 = 14.0;

/// What an encrypted tunnel (the default) adds to each packet: its record's length (2) and
/// authentication tag (16).
pub const ENCRYPTION_BYTES: f64 = 18.0;

/// The wire rate (bit/s) of `payload` bit/s sent in 20 ms packets (50 a second) through an
/// encrypted tunnel, the default: +12.8 kbit/s.
pub fn encrypted_wire_rate(payload: f64) -> f64 {
    payload + 50.0 * (FRAMING_BYTES + ENCRYPTION_BYTES) * 8.0
}

/// Our PulseAudio tunnel sink module (the sender).
pub const SENDER: &str = "module-tunnel-sink-opus";
/// Our PulseAudio receiver module.
pub const RECEIVER: &str = "module-opus-protocol-tcp";

/// [`begin`] for a test of a tunnel from [`SENDER`] to [`RECEIVER`].
pub fn begin_tunnel(test: &str) -> Option<MutexGuard<'static, ()>> {
    begin(test, &[SENDER, RECEIVER])
}

/// The start of a test of our modules: [`require_modules`], then the [`serial`] guard to
/// hold for the whole test; `None` (the test then returns and passes) when they are missing.
pub fn begin(test: &str, modules: &[&str]) -> Option<MutexGuard<'static, ()>> {
    require_modules(test, modules).then(serial)
}

/// `props[key]`, or `"?"` when it is missing (for printing).
pub fn prop_or_unknown<'a>(props: &'a HashMap<String, String>, key: &str) -> &'a str {
    props.get(key).map(String::as_str).unwrap_or("?")
}

/// `n` pseudo-random bytes from the xorshift64 generator started at `seed` (not 0): the same
/// bytes for the same seed.
pub fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Asserts that the property `key` of `props` is `want`.
#[track_caller]
pub fn assert_prop(props: &HashMap<String, String>, key: &str, want: &str) {
    assert_eq!(props.get(key).map(String::as_str), Some(want), "{key}");
}
