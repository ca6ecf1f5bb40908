//! Encryption end to end (issue 19), between two real PulseAudio daemons:
//!
//! sender daemon: `module-tunnel-sink-opus compression=none` → a capturing TCP proxy (written
//! here: it forwards the bytes and keeps a copy of what the tunnel sends) → receiver daemon:
//! `module-opus-protocol-tcp`, playing into its `null` sink, recorded at `null.monitor`.
//!
//! * At the defaults (with a cookie: `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`) the tone
//!   arrives, and a spectral check of the captured bytes after the hello finds no trace of it;
//!   with `encryption=none` on both ends the same check finds it (PCM on the wire).
//! * A byte flipped in flight closes the tunnel (the receiver logs the record that failed),
//!   which reconnects and plays again; both daemons live.
//! * PulseAudio → PipeWire and PipeWire → PulseAudio run encrypted at the defaults.
//! * A receiver with `encryption=required` refuses a cleartext tunnel with `426`, which the
//!   sender logs, and nothing plays.
//!
//! `OPUS_TUNNEL_REQUIRE_MODULES=1 cargo test --release -p opus-tunnel-tests --test encryption
//! -- --test-threads=1` (after scripts/build-modules.sh).
use opus_tunnel_tests::daemon::tunnel_logs as logs;
use opus_tunnel_tests::{analyse_stereo, Daemon, Recorder};
use opus_tunnel_tests::{begin_tunnel as begin, free_port, play_loop, tone_loop, wait};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const LEFT: f64 = 1000.0;
const RIGHT: f64 = 1500.0;
const LEVEL: f64 = -12.0;
/// The most of the tunnel's stream the proxy keeps (about 10 s of 48 kHz stereo PCM).
const KEEP: usize = 2_000_000;

/// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>` and keeps a copy of the first
/// connection's tunnel → receiver bytes.
struct CapturingProxy {
    port: u16,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    upstream: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl CapturingProxy {
    fn start(target: u16) -> CapturingProxy {
        Self::start_flipping(target, None)
    }

    /// The same, flipping one bit of the byte at `flip` (counted from the first byte the
    /// tunnel sends) on the first connection.
    fn start_flipping(target: u16, flip: Option<usize>) -> CapturingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, u2, n2) = (stop.clone(), upstream.clone(), connections.clone());
        let thread = thread::spawn(move || {
            let mut pumps = Vec::new();
            let mut first = true;
            while !s2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                // As the tunnel's own sockets: without this, Nagle's algorithm on the proxy's
                // sockets holds a packet back now and then for up to ~40 ms (a delayed ACK),
                // which no tunnel's real path does.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                n2.fetch_add(1, Ordering::SeqCst);
                let keep = first.then(|| u2.clone());
                let flip_at = if first { flip } else { None };
                first = false;
                let (Ok(c2), Ok(s_2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pumps.push(pump(c2, s_2, keep, flip_at, s2.clone()));
                pumps.push(pump(server, client, None, None, s2.clone()));
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        CapturingProxy {
            port,
            connections,
            stop,
            upstream,
            thread: Some(thread),
        }
    }

    /// The tunnel → receiver bytes of the first connection so far.
    fn upstream(&self) -> Vec<u8> {
        self.upstream.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

impl Drop for CapturingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    keep: Option<Arc<Mutex<Vec<u8>>>>,
    flip: Option<usize>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 16384];
        let mut seen = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            };
            if let Some(k) = &keep {
                if let Ok(mut k) = k.lock() {
                    let room = KEEP.saturating_sub(k.len()).min(n);
                    k.extend_from_slice(&buf[..room]);
                }
            }
            if let Some(at) = flip {
                if (seen..seen + n).contains(&at) {
                    buf[at - seen] ^= 0x04;
                }
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    })
}

/// The bytes after the first blank line (the end of the hello).
fn after_hello(stream: &[u8]) -> &[u8] {
    match stream.windows(2).position(|w| w == b"\n\n") {
        Some(p) => &stream[p + 2..],
        None => &[],
    }
}

/// How much of a signal's energy lies at `freq`: the bytes read as 16-bit samples (both byte
/// orders, both alignments: the best is kept) at 96 kHz (48 kHz stereo interleaved, so each
/// channel's tone is there), in blocks of 4800 samples, the Goertzel power at `freq` as a share
/// of the block's energy (1.0 for a pure tone at `freq`; about 2/4800 for noise), averaged.
fn tone_share(bytes: &[u8], freq: f64) -> f64 {
    const N: usize = 4800;
    let fs = 96_000.0;
    let mut best = 0.0f64;
    for offset in 0..2 {
        for big_endian in [false, true] {
            let samples: Vec<f64> = bytes[offset.min(bytes.len())..]
                .chunks_exact(2)
                .map(|b| {
                    let v = if big_endian {
                        i16::from_be_bytes([b[0], b[1]])
                    } else {
                        i16::from_le_bytes([b[0], b[1]])
                    };
                    f64::from(v)
                })
                .collect();
            let w = 2.0 * std::f64::consts::PI * freq / fs;
            let (mut sum, mut blocks) = (0.0, 0usize);
            for block in samples.chunks_exact(N) {
                let energy: f64 = block.iter().map(|x| x * x).sum();
                if energy <= 0.0 {
                    continue;
                }
                let (mut re, mut im) = (0.0, 0.0);
                for (n, x) in block.iter().enumerate() {
                    re += x * (w * n as f64).cos();
                    im -= x * (w * n as f64).sin();
                }
                sum += 2.0 * (re * re + im * im) / (N as f64 * energy);
                blocks += 1;
            }
            if blocks > 0 {
                best = best.max(sum / blocks as f64);
            }
        }
    }
    best
}

fn cookie_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("encryption-test.cookie");
    let bytes: Vec<u8> = (0..256u32).map(|i| (i * 37 + 11) as u8).collect();
    std::fs::write(&path, bytes).expect("write the cookie");
    path
}

fn sink_prop(d: &Daemon, sink: &str, key: &str) -> Option<String> {
    d.sink_properties(sink).ok()?.get(key).cloned()
}

/// A PCM tunnel through the capturing proxy with the receiver's and the tunnel's extra
/// arguments: whether the tone arrived, and the tone's share in the captured bytes after the
/// hello (the larger of the two channels' tones), and the sender's encryption property.
fn pcm_through_proxy(test: &str, receiver_args: &str, tunnel_args: &str) -> (f64, String) {
    let port = free_port();
    let receiver = Daemon::receiver("receiver", port, receiver_args);
    let proxy = CapturingProxy::start(port);
    let sender = Daemon::named("sender");
    sender.load_tunnel(
        "tun",
        proxy.port,
        &format!("compression=none {tunnel_args}"),
    );
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let _player = play_loop(&sender, "tun", tone_loop(LEFT, RIGHT, LEVEL));
    let waited = wait::wait_for_tone(
        |s| rec.read(s).ok(),
        0.5,
        (LEFT, RIGHT),
        Duration::from_secs(8),
    );
    assert!(
        waited.is_some(),
        "{test}: no tone on the receiver within 8 s{}",
        logs(&sender, &receiver)
    );
    let got = rec.read(2.0).expect("record");
    let r = analyse_stereo(&got, 0.0)
        .unwrap_or_else(|| panic!("{test}: the signal vanished{}", logs(&sender, &receiver)));
    r.assert_tone(LEFT, RIGHT, LEVEL, 5.0, 1.0);
    // At least 2 s of audio on the wire after the hello.
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.upstream().len() < 400_000 && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    let captured = proxy.upstream();
    let body = after_hello(&captured);
    let share = tone_share(body, LEFT).max(tone_share(body, RIGHT));
    let enc = sink_prop(&sender, "tun", "opus.tunnel.encryption").unwrap_or_default();
    println!(
        "{test}: tone after {waited:?}; {r:?}; captured {} bytes ({} after the hello); \
         tone share {share:.5}; sender opus.tunnel.encryption = {enc}",
        captured.len(),
        body.len()
    );
    assert!(
        body.len() > 200_000,
        "{test}: only {} bytes after the hello",
        body.len()
    );
    (share, enc)
}

#[test]
fn pcm_tunnel_is_ciphertext_on_the_wire_and_cleartext_with_none() {
    let test = "pcm_tunnel_is_ciphertext_on_the_wire_and_cleartext_with_none";
    let Some(_g) = begin(test) else { return };
    let dir = std::env::temp_dir().join(format!("opus-tunnel-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cookie = cookie_file(&dir);
    // Defaults, with a cookie (the receiver asks every peer for it).
    let (encrypted, enc) = pcm_through_proxy(
        test,
        &format!("auth-cookie={}", cookie.display()),
        &format!("cookie={}", cookie.display()),
    );
    assert_eq!(enc, "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s");
    // Cleartext, for comparison: the same check must see the tone there.
    let (clear, enc) =
        pcm_through_proxy(test, "auth-anonymous=1 encryption=none", "encryption=none");
    assert_eq!(enc, "none");
    let _ = std::fs::remove_dir_all(&dir);
    println!("{test}: tone share on the wire: encrypted {encrypted:.5}, cleartext {clear:.5}");
    assert!(
        clear > 0.05,
        "the check does not find the tone in cleartext PCM (share {clear:.5})"
    );
    assert!(
        encrypted < 0.005,
        "the tone shows through the encryption (share {encrypted:.5}, cleartext {clear:.5})"
    );
}

#[test]
fn a_receiver_with_encryption_required_refuses_a_cleartext_tunnel() {
    let test = "a_receiver_with_encryption_required_refuses_a_cleartext_tunnel";
    let Some(_g) = begin(test) else { return };
    let port = free_port();
    let receiver = Daemon::receiver("receiver", port, "auth-anonymous=1 encryption=required");
    let sender = Daemon::named("sender");
    sender.load_tunnel("tun", port, "encryption=none");
    let until = Instant::now() + Duration::from_secs(8);
    let mut refused = false;
    while Instant::now() < until {
        if sender.log().contains("426") && receiver.log().contains("requires encryption") {
            refused = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let state = sink_prop(&sender, "tun", "opus.tunnel.state");
    let sender_line = sender
        .log()
        .lines()
        .find(|l| l.contains("426"))
        .map(str::to_string);
    println!("{test}: sender: {sender_line:?}; state {state:?}");
    assert!(
        refused,
        "no 426 refusal in the logs{}",
        logs(&sender, &receiver)
    );
    assert_ne!(state.as_deref(), Some("streaming"));
    assert_eq!(receiver.sink_input_count(), 0, "a cleartext stream plays");
    // The same receiver takes an encrypting tunnel (the default).
    let sender2 = Daemon::named("sender2");
    sender2.load_tunnel("tun", port, "");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until
        && sink_prop(&sender2, "tun", "opus.tunnel.encryption").as_deref()
            != Some("Noise_NN_25519_ChaChaPoly_BLAKE2s")
    {
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        sink_prop(&sender2, "tun", "opus.tunnel.encryption").as_deref(),
        Some("Noise_NN_25519_ChaChaPoly_BLAKE2s"),
        "{}",
        logs(&sender2, &receiver)
    );
}

#[test]
fn a_byte_flipped_in_flight_closes_the_tunnel_which_reconnects() {
    let test = "a_byte_flipped_in_flight_closes_the_tunnel_which_reconnects";
    let Some(_g) = begin(test) else { return };
    let port = free_port();
    let receiver = Daemon::receiver("receiver", port, "auth-anonymous=1");
    // PCM: about 190 kB a second, so the flip lands half a second into the audio.
    let proxy = CapturingProxy::start_flipping(port, Some(100_000));
    let sender = Daemon::named("sender");
    sender.load_tunnel("tun", proxy.port, "compression=none");
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let _player = play_loop(&sender, "tun", tone_loop(LEFT, RIGHT, LEVEL));
    let until = Instant::now() + Duration::from_secs(10);
    let mut reconnected = false;
    while Instant::now() < until {
        let n = sink_prop(&sender, "tun", "opus.tunnel.reconnects")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if n >= 1 && proxy.connections.load(Ordering::SeqCst) >= 2 {
            reconnected = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let line = receiver
        .log()
        .lines()
        .find(|l| l.contains("failed authentication"))
        .map(str::to_string);
    println!(
        "{test}: receiver: {line:?}; reconnected {reconnected}, {} connections",
        proxy.connections.load(Ordering::SeqCst)
    );
    assert!(
        line.is_some(),
        "the receiver did not log the record that failed{}",
        logs(&sender, &receiver)
    );
    assert!(
        reconnected,
        "the tunnel did not reconnect{}",
        logs(&sender, &receiver)
    );
    // The tone plays again after the reconnect, and both daemons live.
    let _ = rec.read(1.0);
    let waited = wait::wait_for_tone(
        |s| rec.read(s).ok(),
        0.5,
        (LEFT, RIGHT),
        Duration::from_secs(8),
    );
    assert!(
        waited.is_some(),
        "no tone after the reconnect{}",
        logs(&sender, &receiver)
    );
    assert!(receiver.is_alive() && sender.is_alive(), "a daemon died");
    assert_eq!(
        sink_prop(&sender, "tun", "opus.tunnel.encryption").as_deref(),
        Some("Noise_NN_25519_ChaChaPoly_BLAKE2s")
    );
}

/// Waits until `get` gives `want` (at most 8 s); what it gave last.
fn wait_value(mut get: impl FnMut() -> Option<String>, want: &str) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let v = get();
        if v.as_deref() == Some(want) || Instant::now() >= until {
            return v;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pulseaudio_and_pipewire_pairings_run_encrypted() {
    use opus_tunnel_tests::pipewire::{require_pw_modules, PipeWire};
    let test = "pulseaudio_and_pipewire_pairings_run_encrypted";
    const PW_RECEIVER: &str = "libpipewire-module-opus-protocol-tcp";
    const PW_SENDER: &str = "libpipewire-module-opus-tunnel";
    if !require_pw_modules(test, &[PW_RECEIVER, PW_SENDER]) {
        return;
    }
    let Some(_g) = begin(test) else { return };
    const NN: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";

    // PulseAudio tunnel → PipeWire receiver.
    let port = free_port();
    let pw = PipeWire::builder()
        .name("pw-receiver")
        .module(
            PW_RECEIVER,
            &format!("server.address = [ \"tcp:127.0.0.1:{port}\" ] auth.anonymous = true target.object = \"null\""),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_RECEIVER}: {e:#}"));
    let pa = Daemon::named("pa-sender");
    pa.load_tunnel("tun", port, "");
    let mut rec = pw.recorder("null.monitor");
    let _player = play_loop(&pa, "tun", tone_loop(LEFT, RIGHT, LEVEL));
    let waited = wait::wait_for_tone(
        |s| rec.read(s).ok(),
        0.5,
        (LEFT, RIGHT),
        Duration::from_secs(8),
    );
    let sender = wait_value(|| sink_prop(&pa, "tun", "opus.tunnel.encryption"), NN);
    let stream = wait_value(
        || {
            pw.nodes_where("application.name", "opus-tunnel")
                .first()
                .and_then(|s| s.get("opus.tunnel.encryption").cloned())
        },
        NN,
    );
    println!(
        "{test}: PA -> PW: tone after {waited:?}; sender {sender:?}; receiver stream {stream:?}"
    );
    assert!(
        waited.is_some(),
        "PA -> PW: no tone\n{}\n{}",
        pw.log(),
        pa.log_tail(30)
    );
    assert_eq!(sender.as_deref(), Some(NN));
    assert_eq!(stream.as_deref(), Some(NN));
    drop(_player);
    drop(rec);
    drop(pa);
    drop(pw);

    // PipeWire tunnel → PulseAudio receiver.
    let port = free_port();
    let receiver = Daemon::receiver("pa-receiver", port, "auth-anonymous=1");
    let pw = PipeWire::builder()
        .name("pw-sender")
        .module(
            PW_SENDER,
            &format!(
                "tunnel.mode = sink server.address = \"tcp:127.0.0.1:{port}\" remote.sink = \"null\" \
                 stream.props = {{ node.name = \"tun\" }}"
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {PW_SENDER}: {e:#}"));
    let node = wait_value(
        || {
            pw.node_props("tun")
                .and_then(|p| p.get("opus.tunnel.encryption").cloned())
        },
        NN,
    );
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let _player = pw.play_loop("tun", tone_loop(LEFT, RIGHT, LEVEL));
    let waited = wait::wait_for_tone(
        |s| rec.read(s).ok(),
        0.5,
        (LEFT, RIGHT),
        Duration::from_secs(8),
    );
    let line = receiver
        .log()
        .lines()
        .find(|l| l.contains("encryption: "))
        .map(str::to_string);
    println!("{test}: PW -> PA: tone after {waited:?}; tunnel node {node:?}; receiver: {line:?}");
    assert!(
        waited.is_some(),
        "PW -> PA: no tone\n{}\n{}",
        pw.log(),
        receiver.log_tail(30)
    );
    assert_eq!(node.as_deref(), Some(NN));
    assert!(
        line.is_some_and(|l| l.contains(NN)),
        "{}",
        receiver.log_tail(30)
    );
}
