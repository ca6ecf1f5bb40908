//! In-process loopback tests: the real receiver (`server`), the real tunnel sink sender
//! (`client::start_play`) and the real record client (`client::start_record`) on 127.0.0.1,
//! against a fake daemon that implements `session::Daemon`. Each covers one behaviour of the
//! network side in well under a second: the refusals (400, 403, 404, 415, 503, 505),
//! cookie authentication, audio both ways, reconnects, pause and resume, parking of record
//! streams, and the knob relay.
//!
//! `cargo test --release -p opus-tunnel-core --test loopback`
use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::auth::Cookie;
use opus_tunnel_core::client::{start_play, start_record, RecordClientConfig};
use opus_tunnel_core::codec::StreamFormat;
use opus_tunnel_core::decode::Playback;
use opus_tunnel_core::encode::{Feeder, Shared, WorkerConfig};
use opus_tunnel_core::handshake::{Direction, Hello, Reply, SUPPORTED, VERSION};
use opus_tunnel_core::params::{Compression, FrameSize, OpusKnobs, ServerAddr};
use opus_tunnel_core::plain_rtp::{self, RtpReceiver, SendConfig};
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_core::secure::{self, Mode, Pattern};
use opus_tunnel_core::server::{Host, Receiver, RecvConfig};
use opus_tunnel_core::session::{Daemon, NewStream, Refusal, Sessions, StreamHandle};
use opus_tunnel_core::udp::Transport;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const RATE: u32 = 48_000;
const CH: u8 = 2;
/// The fake devices' period.
const BLOCK: Duration = Duration::from_millis(10);
const BLOCK_FRAMES: usize = 480;

// ---- the fake daemon ---------------------------------------------------------------------------

/// What the fake daemon's streams did, for the tests to read.
#[derive(Default)]
struct Seen {
    /// Everything the play streams took out of their rings (interleaved).
    played: Mutex<Vec<f32>>,
    /// The last properties published on any stream.
    props: Mutex<Vec<(String, String)>>,
    captures_opened: AtomicUsize,
    captures_closed: AtomicUsize,
    /// The knobs the capture's encoder used at its last block.
    capture_knobs: Mutex<Option<OpusKnobs>>,
    /// The next play stream the daemon looks at is "killed" (as `pactl kill-sink-input`
    /// does).
    kill: AtomicBool,
}

/// A thread that runs at the device's pace until stopped.
struct Device {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    fn run<T: Send + 'static>(
        mut state: T,
        mut step: impl FnMut(&mut T) + Send + 'static,
    ) -> (Device, Arc<Mutex<Option<T>>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let back = Arc::new(Mutex::new(None));
        let (s2, b2) = (stop.clone(), back.clone());
        let thread = thread::spawn(move || {
            let mut next = Instant::now();
            while !s2.load(Ordering::SeqCst) {
                step(&mut state);
                next += BLOCK;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            *b2.lock().unwrap() = Some(state);
        });
        (
            Device {
                stop,
                thread: Some(thread),
            },
            back,
        )
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

struct FakePlay {
    _device: Device,
    seen: Arc<Seen>,
    killed: std::cell::Cell<bool>,
}

impl StreamHandle for FakePlay {
    /// Killed once when the test asks ([`Seen::kill`]), for good.
    fn gone(&self) -> bool {
        if self.seen.kill.swap(false, Ordering::SeqCst) {
            self.killed.set(true);
        }
        self.killed.get()
    }
    fn publish(&self, props: &[(String, String)]) {
        *self.seen.props.lock().unwrap() = props.to_vec();
    }
}

/// A capture stream: its device thread feeds a 440 Hz tone to the encoder and gives the
/// feeder back when stopped.
struct FakeCapture {
    device: Device,
    back: Arc<Mutex<Option<(Feeder, Tone)>>>,
    seen: Arc<Seen>,
}

impl StreamHandle for FakeCapture {
    fn gone(&self) -> bool {
        false
    }
    fn publish(&self, props: &[(String, String)]) {
        *self.seen.props.lock().unwrap() = props.to_vec();
    }
}

/// One sink (`speakers`), one source (`mic`, a 440 Hz tone); `refuse_play` makes every play
/// stream fail as a daemon that is out of streams would.
struct Fake {
    seen: Arc<Seen>,
    refuse_play: bool,
}

impl Daemon for Fake {
    type Play = FakePlay;
    type Capture = FakeCapture;
    type Parked = Feeder;
    type Source = ();

    fn open_play(
        &mut self,
        device: Option<&str>,
        new: NewStream<'_, Playback>,
    ) -> Result<(FakePlay, String), Refusal> {
        let mut playback = new.io;
        if !matches!(device, None | Some("speakers")) {
            return Err(Refusal::no_device("sink", device));
        }
        if self.refuse_play {
            return Err(Refusal::refused("the daemon refused the stream"));
        }
        let seen = self.seen.clone();
        let mut buf = vec![0f32; BLOCK_FRAMES * usize::from(CH)];
        let (device, _) = Device::run((), move |_| {
            playback.pop(&mut buf);
            seen.played.lock().unwrap().extend_from_slice(&buf);
        });
        let play = FakePlay {
            _device: device,
            seen: self.seen.clone(),
            killed: std::cell::Cell::new(false),
        };
        Ok((play, "speakers".into()))
    }

    fn resolve_source(&mut self, wanted: Option<&str>) -> Result<((), String), Refusal> {
        match wanted {
            None | Some("mic") => Ok(((), "mic".into())),
            Some(other) => Err(Refusal::no_device("source", Some(other))),
        }
    }

    fn park(&mut self, feeder: Feeder) -> Feeder {
        feeder
    }

    fn open_capture(
        &mut self,
        _source: &(),
        new: NewStream<'_, Feeder>,
    ) -> Result<FakeCapture, String> {
        let feeder = new.io;
        self.seen.captures_opened.fetch_add(1, Ordering::SeqCst);
        let seen = self.seen.clone();
        let (device, back) = Device::run((feeder, Tone::new(440.0)), move |(feeder, tone)| {
            let bytes: Vec<u8> = tone.block().iter().flat_map(|v| v.to_le_bytes()).collect();
            feeder.push(&bytes, true);
            *seen.capture_knobs.lock().unwrap() = Some(feeder.knobs());
        });
        Ok(FakeCapture {
            device,
            back,
            seen: self.seen.clone(),
        })
    }

    fn close_capture(&mut self, mut stream: FakeCapture) -> Option<Feeder> {
        stream.device.stop();
        self.seen.captures_closed.fetch_add(1, Ordering::SeqCst);
        let back = stream.back.lock().unwrap().take();
        back.map(|(feeder, _)| feeder)
    }
}

// ---- signals -----------------------------------------------------------------------------------

/// A stereo sine at -12 dBFS, a block at a time.
struct Tone {
    freq: f64,
    n: u64,
}

impl Tone {
    fn new(freq: f64) -> Tone {
        Tone { freq, n: 0 }
    }

    fn block(&mut self) -> Vec<f32> {
        let mut v = Vec::with_capacity(BLOCK_FRAMES * usize::from(CH));
        for _ in 0..BLOCK_FRAMES {
            let t = self.n as f64 / f64::from(RATE);
            let x = (0.25 * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as f32;
            v.extend((0..CH).map(|_| x));
            self.n += 1;
        }
        v
    }
}

/// The left channel's frequency, RMS level and length (frames) over its non-silent part, its
/// first 20 ms (the codec's onset) left out.
fn analyse(interleaved: &[f32]) -> (f64, f64, usize) {
    let left: Vec<f32> = interleaved.chunks(usize::from(CH)).map(|f| f[0]).collect();
    let Some(first) = left.iter().position(|v| v.abs() > 0.01) else {
        return (0.0, 0.0, 0);
    };
    let last = left.iter().rposition(|v| v.abs() > 0.01).unwrap_or(0);
    let first = first + 960;
    if last <= first + 480 {
        return (0.0, 0.0, 0);
    }
    let part = &left[first..=last];
    // Upward zero crossings, placed between samples by linear interpolation: the frequency is
    // the number of whole periods between the first and the last over their distance.
    let crossings: Vec<f64> = part
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + f64::from(w[0] / (w[0] - w[1])))
        .collect();
    let freq = match (crossings.first(), crossings.last()) {
        (Some(a), Some(b)) if b > a => (crossings.len() - 1) as f64 * f64::from(RATE) / (b - a),
        _ => 0.0,
    };
    let power = part.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / part.len() as f64;
    (freq, power.sqrt(), part.len())
}

/// Waits until `cond` holds, at most `limit`; whether it did.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    cond()
}

// ---- the rig -----------------------------------------------------------------------------------

/// The receiver on 127.0.0.1 with the fake daemon's main thread behind it.
struct Rig {
    receiver: Option<Receiver>,
    /// The fake daemon's side, for a plain RTP receiver beside the tunnels'.
    host: Arc<dyn Host>,
    addr: SocketAddr,
    seen: Arc<Seen>,
    main: Option<(mpsc::Sender<bool>, JoinHandle<()>)>,
}

fn config() -> RecvConfig {
    RecvConfig {
        anonymous: true,
        acl: None,
        cookie: None,
        target_usec: 0,
        min_usec: 0,
        max_usec: 1_000_000,
        max_connections: 4,
        external_resampler: false,
        encryption: Mode::Auto,
        udp_port: None,
        realtime: None,
    }
}

impl Rig {
    fn start(cfg: RecvConfig, refuse_play: bool) -> Rig {
        let seen = Arc::new(Seen::default());
        let (wake_tx, wake_rx) = mpsc::channel::<bool>();
        let (host_tx, host_rx) = mpsc::channel();
        let s2 = seen.clone();
        let w2 = wake_tx.clone();
        // The daemon's main thread: services the sessions when woken, publishes every 100 ms.
        let main = thread::spawn(move || {
            let mut fake = Fake {
                seen: s2,
                refuse_play,
            };
            let mut sessions: Sessions<Fake> = Sessions::new(None, None);
            sessions.set_waker(move || {
                let _ = w2.send(false);
            });
            host_tx.send(sessions.host()).unwrap();
            loop {
                match wake_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(true) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Ok(false) => sessions.service(&mut fake),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sessions.service(&mut fake);
                        sessions.publish();
                    }
                }
            }
            sessions.shutdown();
        });
        let host = host_rx.recv().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = Receiver::start(listener, cfg, host.clone()).unwrap();
        let addr = receiver.local_addr();
        Rig {
            receiver: Some(receiver),
            host,
            addr,
            seen,
            main: Some((wake_tx, main)),
        }
    }

    fn server(&self) -> ServerAddr {
        ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }

    /// 100 ms of audio reach the fake sink within 2 s.
    fn hears_audio(&self) -> bool {
        wait_for(Duration::from_secs(2), || {
            played_tone(&self.seen).2 >= 4_800
        })
    }

    fn prop(&self, key: &str) -> Option<String> {
        let p = self.seen.props.lock().unwrap();
        p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some((tx, main)) = self.main.take() {
            let _ = tx.send(true);
            let _ = main.join();
        }
    }
}

/// A tunnel sink's sender with a device that plays `freq` while `running` is set.
struct Sender {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    device: Device,
    running: Arc<AtomicBool>,
}

impl Sender {
    fn start(addr: ServerAddr, device: Option<&str>, cookie: Option<Cookie>, freq: f64) -> Sender {
        Sender::start_with(addr, device, cookie, freq, Mode::Auto)
    }

    fn start_with(
        addr: ServerAddr,
        device: Option<&str>,
        cookie: Option<Cookie>,
        freq: f64,
        encryption: Mode,
    ) -> Sender {
        Sender::start_on(addr, device, cookie, freq, encryption, Transport::Tcp)
    }

    fn start_on(
        addr: ServerAddr,
        device: Option<&str>,
        cookie: Option<Cookie>,
        freq: f64,
        encryption: Mode,
        transport: Transport,
    ) -> Sender {
        let cfg = WorkerConfig {
            addr,
            remote_sink: device.map(str::to_string),
            name: "loop".into(),
            host: "test".into(),
            compression: Compression::Opus,
            fmt: StreamFormat {
                rate: RATE,
                channels: CH,
            },
            sample_format: SampleFormat::F32Le,
            channel_map: "front-left,front-right".into(),
            block_usec: 10_000,
            cookie,
            encryption,
            transport,
            realtime: None,
        };
        let (feeder, shared, worker) = start_play(cfg, OpusKnobs::default(), 192_000).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let r2 = running.clone();
        let (device, _) = Device::run((feeder, Tone::new(freq), None), move |(f, tone, was)| {
            let on = r2.load(Ordering::SeqCst);
            if *was != Some(on) {
                f.set_running(on);
                *was = Some(on);
            }
            let bytes: Vec<u8> = tone.block().iter().flat_map(|v| v.to_le_bytes()).collect();
            f.push(&bytes, on);
        });
        Sender {
            shared,
            worker: Some(worker),
            device,
            running,
        }
    }

    fn state(&self) -> String {
        self.shared.stats.state().as_str().to_string()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.device.stop();
        if let Some(w) = self.worker.take() {
            self.shared.stop_and_join(w);
        }
    }
}

/// Sends `hello` (or raw text) and reads the reply.
fn handshake(addr: SocketAddr, text: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\n\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let end = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(buf.len(), |p| p + 2);
    Reply::parse(&String::from_utf8_lossy(&buf[..end])).unwrap()
}

fn hello(direction: Direction, device: Option<&str>) -> Hello {
    Hello {
        version: VERSION,
        direction,
        name: "raw".into(),
        host: "test".into(),
        device: device.map(str::to_string),
        codec: Compression::Opus,
        rate: RATE,
        channels: CH,
        channel_map: "front-left,front-right".into(),
        frame_usec: 20_000,
        target_latency_usec: None,
        fields: Default::default(),
    }
}

fn played_tone(seen: &Seen) -> (f64, f64, usize) {
    analyse(&seen.played.lock().unwrap())
}

/// The tone over the last `frames` of `interleaved` (its steady part: a start may cut or glide,
/// see the README's known limits).
fn steady_tone(interleaved: &[f32], frames: usize) -> (f64, f64, usize) {
    let keep = (frames * usize::from(CH)).min(interleaved.len());
    analyse(&interleaved[interleaved.len() - keep..])
}

/// The tests run one at a time: each runs real-time threads (devices, encoder, decoder), and
/// eight at once on two cores starve them.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the tests ---------------------------------------------------------------------------------

#[test]
fn refusals_bad_request_version_format() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let r = handshake(rig.addr, "GET / HTTP/1.1\nHost: x\n\n");
    assert_eq!(r.status, 400, "{r:?}");
    let text = hello(Direction::Play, None).to_text().replacen(
        &format!("OPUS-TUNNEL/{VERSION}"),
        "OPUS-TUNNEL/99",
        1,
    );
    let r = handshake(rig.addr, &text);
    assert_eq!(r.status, 505, "{r:?}");
    assert_eq!(
        r.fields.get("Supported").map(String::as_str),
        Some(SUPPORTED)
    );
    let mut h = hello(Direction::Play, None);
    h.rate = 12_345;
    let r = handshake(rig.addr, &h.to_text());
    assert_eq!(r.status, 415, "{r:?}");
}

#[test]
fn refusals_no_such_device() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let r = handshake(rig.addr, &hello(Direction::Play, Some("nowhere")).to_text());
    assert_eq!(
        (r.status, r.reason.as_str()),
        (404, "no sink named \"nowhere\"")
    );
    let r = handshake(
        rig.addr,
        &hello(Direction::Record, Some("nowhere")).to_text(),
    );
    assert_eq!(
        (r.status, r.reason.as_str()),
        (404, "no source named \"nowhere\"")
    );
}

#[test]
fn refusals_forbidden_and_unavailable() {
    let _serial = serial();
    // Nobody anonymous, an ACL that does not hold 127.0.0.1, no cookie: 403.
    let mut cfg = config();
    cfg.anonymous = false;
    cfg.acl = Some(IpAcl::parse("auth-ip-acl", "10.0.0.0/8").unwrap());
    let rig = Rig::start(cfg, false);
    let r = handshake(rig.addr, &hello(Direction::Play, None).to_text());
    assert_eq!(r.status, 403, "{r:?}");
    drop(rig);
    // The daemon refuses the stream: 503 with its reason.
    let rig = Rig::start(config(), true);
    let r = handshake(rig.addr, &hello(Direction::Play, None).to_text());
    assert_eq!(
        (r.status, r.reason.as_str()),
        (503, "the daemon refused the stream")
    );
    drop(rig);
    // A refused tunnel gives up its place before its answer is written: with room for one,
    // peers refused back to back each hear the daemon's reason, never `max_connections`.
    let mut cfg = config();
    cfg.max_connections = 1;
    let rig = Rig::start(cfg, true);
    for _ in 0..300 {
        let r = handshake(rig.addr, &hello(Direction::Play, None).to_text());
        assert_eq!(
            (r.status, r.reason.as_str()),
            (503, "the daemon refused the stream")
        );
    }
    drop(rig);
    // One connection too many: 503.
    let mut cfg = config();
    cfg.max_connections = 1;
    let rig = Rig::start(cfg, false);
    let first = Sender::start(rig.server(), None, None, 1000.0);
    assert!(wait_for(Duration::from_secs(2), || first.state() == "streaming"));
    let r = handshake(rig.addr, &hello(Direction::Play, None).to_text());
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.reason.contains("max_connections=1"), "{r:?}");
}

#[test]
fn a_tone_plays_through() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let tx = Sender::start(rig.server(), Some("speakers"), None, 1000.0);
    let enough = wait_for(Duration::from_secs(2), || {
        played_tone(&rig.seen).2 >= 24_000
    });
    let n = played_tone(&rig.seen).2;
    let (freq, rms, _) = steady_tone(&rig.seen.played.lock().unwrap(), 14_400);
    assert!(enough, "only {n} frames of audio arrived");
    assert!((freq - 1000.0).abs() < 5.0, "tone at {freq:.1} Hz");
    let db = 20.0 * (rms / (0.25 / 2f64.sqrt())).log10();
    assert!(db.abs() < 1.5, "level {db:+.2} dB off");
    assert_eq!(tx.state(), "streaming");
    assert!(tx.shared.stats.snapshot().bytes_sent > 0);
    // The stream's statistics reach its properties.
    assert!(wait_for(Duration::from_secs(1), || rig
        .prop("opus.tunnel.state")
        .is_some()));
    assert_eq!(
        rig.prop("opus.tunnel.peer")
            .map(|p| p.starts_with("127.0.0.1:")),
        Some(true)
    );
}

#[test]
fn cookie_authentication() {
    let _serial = serial();
    let cookie = Cookie::from_bytes(&[7u8; 256]).unwrap();
    let mut cfg = config();
    cfg.anonymous = false;
    cfg.cookie = Some(cookie.clone());
    let rig = Rig::start(cfg, false);
    let wrong = Sender::start(
        rig.server(),
        None,
        Some(Cookie::from_bytes(&[8u8; 256]).unwrap()),
        500.0,
    );
    thread::sleep(Duration::from_millis(300));
    assert_ne!(wrong.state(), "streaming");
    assert_eq!(played_tone(&rig.seen).2, 0, "a wrong cookie played");
    drop(wrong);
    let right = Sender::start(rig.server(), None, Some(cookie), 1000.0);
    assert!(rig.hears_audio());
    assert_eq!(right.state(), "streaming");
    // The cookie keys the encryption.
    assert_eq!(
        right.shared.stats.encryption(),
        secure::State::Noise(Pattern::NnPsk0)
    );
    assert!(wait_for(Duration::from_secs(1), || rig
        .prop("opus.tunnel.encryption")
        .as_deref()
        == Some(secure::PATTERN_PSK)));
    let (freq, _, _) = steady_tone(&rig.seen.played.lock().unwrap(), 4_800);
    assert!((freq - 1000.0).abs() < 10.0, "tone at {freq:.1} Hz");
}

#[test]
fn a_killed_stream_reconnects() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let tx = Sender::start(rig.server(), None, None, 1000.0);
    assert!(rig.hears_audio());
    rig.seen.kill.store(true, Ordering::SeqCst);
    assert!(
        wait_for(Duration::from_secs(3), || tx
            .shared
            .stats
            .snapshot()
            .reconnects
            == 1
            && tx.state() == "streaming"),
        "no reconnect: state {}",
        tx.state()
    );
    rig.seen.played.lock().unwrap().clear();
    assert!(rig.hears_audio());
}

#[test]
fn pause_and_resume() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let tx = Sender::start(rig.server(), None, None, 1000.0);
    assert!(rig.hears_audio());
    tx.running.store(false, Ordering::SeqCst);
    assert!(wait_for(Duration::from_secs(1), || tx.state() == "idle"));
    assert!(wait_for(Duration::from_secs(1), || rig
        .prop("opus.tunnel.state")
        .as_deref()
        == Some("idle")));
    rig.seen.played.lock().unwrap().clear();
    tx.running.store(true, Ordering::SeqCst);
    assert!(rig.hears_audio());
    assert_eq!(tx.state(), "streaming");
    assert_eq!(tx.shared.stats.snapshot().reconnects, 0);
}

/// A record tunnel to the rig's "mic" (stereo, 48 kHz, Opus).
fn record_cfg(rig: &Rig, encryption: Mode, transport: Transport) -> RecordClientConfig {
    RecordClientConfig {
        addr: rig.server(),
        remote_source: Some("mic".into()),
        name: "mic-tunnel".into(),
        host: "test".into(),
        compression: Compression::Opus,
        fmt: StreamFormat {
            rate: RATE,
            channels: CH,
        },
        channel_map: "front-left,front-right".into(),
        target_usec: 0,
        min_usec: 0,
        max_usec: 1_000_000,
        cookie: None,
        encryption,
        transport,
        realtime: None,
    }
}

/// What a record tunnel's source posts, gathered by a device at the rig's pace.
fn record_into(mut playback: Playback) -> (Device, Arc<Mutex<Vec<f32>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    let mut buf = vec![0f32; BLOCK_FRAMES * usize::from(CH)];
    let (source, _) = Device::run((), move |_| {
        playback.pop(&mut buf);
        g2.lock().unwrap().extend_from_slice(&buf);
    });
    (source, got)
}

/// The mic's 440 Hz tone is recorded (300 ms of it within 2 s), at its level.
fn records_tone(got: &Mutex<Vec<f32>>) {
    got.lock().unwrap().clear();
    assert!(wait_for(Duration::from_secs(2), || analyse(
        &got.lock().unwrap()
    )
    .2 >= 14_400));
    let (freq, rms, _) = steady_tone(&got.lock().unwrap(), 9_600);
    assert!((freq - 440.0).abs() < 5.0, "tone at {freq:.1} Hz");
    let db = tone_db(rms);
    assert!(db.abs() < 1.5, "level {db:+.2} dB off");
}

/// An RMS level against the test tone's (0.25 peak), dB.
fn tone_db(rms: f64) -> f64 {
    20.0 * (rms / (0.25 / 2f64.sqrt())).log10()
}

#[test]
fn record_tunnel_parks_and_relays_knobs() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let cfg = record_cfg(&rig, Mode::Auto, Transport::Tcp);
    let (playback, client) = start_record(cfg, OpusKnobs::default()).unwrap();
    let (_source, got) = record_into(playback);
    // No reader: connected, nothing recorded.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.seen.captures_opened.load(Ordering::SeqCst), 0);
    client.set_running(true);
    records_tone(&got);
    assert_eq!(rig.seen.captures_opened.load(Ordering::SeqCst), 1);
    // Knobs relayed live to the far end's encoder.
    let mut knobs = client.knobs();
    knobs.bitrate = 24_000;
    client.set_knobs(knobs);
    assert!(wait_for(Duration::from_secs(1), || {
        rig.seen.capture_knobs.lock().unwrap().map(|k| k.bitrate) == Some(24_000)
    }));
    // The reader leaves: the capture is parked; it comes back with the next reader.
    client.set_running(false);
    let reaches = |n: &AtomicUsize, want| {
        wait_for(Duration::from_secs(1), || n.load(Ordering::SeqCst) == want)
    };
    assert!(reaches(&rig.seen.captures_closed, 1));
    client.set_running(true);
    assert!(reaches(&rig.seen.captures_opened, 2));
    let r = client.report();
    assert_eq!(r.reconnects, Some(0));
    // Both directions of a record tunnel are encrypted too.
    assert_eq!(r.encryption, secure::PATTERN_NN);
    assert!(r
        .properties()
        .contains(&("opus.tunnel.encryption".into(), secure::PATTERN_NN.into())));
}

// ---- encryption ----------------------------------------------------------------------------------

/// A TCP relay between a tunnel and the receiver, on 127.0.0.1. On its first connection it
/// can flip one bit of the byte at `flip_at` in the tunnel → receiver direction (counted from
/// the connection's first byte: past the hello, the `200` and the Noise handshake).
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(to: SocketAddr, flip_at: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s2, c2) = (stop.clone(), connections.clone());
        let thread = thread::spawn(move || {
            let mut pumps = Vec::new();
            while !s2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let n = c2.fetch_add(1, Ordering::SeqCst);
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let flip = if n == 0 { flip_at } else { None };
                let (c_r, s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pumps.push(pump(c_r, s_w, flip, s2.clone()));
                pumps.push(pump(server, client, None, s2.clone()));
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        Proxy {
            addr,
            stop,
            connections,
            thread: Some(thread),
        }
    }

    fn server(&self) -> ServerAddr {
        ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until either closes (or the proxy stops), flipping the byte at
/// `flip` once.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    flip: Option<usize>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut seen = 0usize;
        let mut buf = [0u8; 4096];
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
            if let Some(at) = flip {
                if (seen..seen + n).contains(&at) {
                    buf[at - seen] ^= 0x10;
                }
            }
            seen += n;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = to.shutdown(std::net::Shutdown::Both);
    })
}

#[test]
fn encrypted_by_default_and_shown_as_a_property() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let tx = Sender::start(rig.server(), None, None, 1000.0);
    assert!(rig.hears_audio());
    let (freq, _, _) = steady_tone(&rig.seen.played.lock().unwrap(), 4_800);
    assert!((freq - 1000.0).abs() < 10.0, "tone at {freq:.1} Hz");
    // No cookie (anonymous receiver): ephemeral keys only.
    assert_eq!(
        tx.shared.stats.encryption(),
        secure::State::Noise(Pattern::Nn)
    );
    assert!(tx
        .shared
        .stat_properties()
        .contains(&("opus.tunnel.encryption".into(), secure::PATTERN_NN.into())));
    assert!(wait_for(Duration::from_secs(1), || rig
        .prop("opus.tunnel.encryption")
        .as_deref()
        == Some(secure::PATTERN_NN)));
}

#[test]
fn a_flipped_byte_closes_the_link_and_the_tunnel_reconnects() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let proxy = Proxy::start(rig.addr, Some(6_000));
    let tx = Sender::start(proxy.server(), None, None, 1000.0);
    assert!(
        wait_for(Duration::from_secs(6), || tx
            .shared
            .stats
            .snapshot()
            .reconnects
            >= 1
            && tx.state() == "streaming"),
        "no reconnect after the flipped byte: state {}, {} connections",
        tx.state(),
        proxy.connections.load(Ordering::SeqCst)
    );
    assert!(proxy.connections.load(Ordering::SeqCst) >= 2);
    rig.seen.played.lock().unwrap().clear();
    assert!(rig.hears_audio());
    assert_eq!(
        tx.shared.stats.encryption(),
        secure::State::Noise(Pattern::Nn)
    );
}

#[test]
fn encryption_none_is_cleartext_and_refused_where_required() {
    let _serial = serial();
    // Both ends none: cleartext.
    let mut cfg = config();
    cfg.encryption = Mode::None;
    let rig = Rig::start(cfg, false);
    let tx = Sender::start_with(rig.server(), None, None, 1000.0, Mode::None);
    assert!(rig.hears_audio());
    assert_eq!(tx.shared.stats.encryption(), secure::State::None);
    assert!(wait_for(Duration::from_secs(1), || rig
        .prop("opus.tunnel.encryption")
        .as_deref()
        == Some("none")));
    drop(tx);
    // A tunnel that asks for encryption is refused by a receiver with encryption=none.
    let mut h = hello(Direction::Play, None);
    h.fields.insert("Encryption".into(), "noise".into());
    let r = handshake(rig.addr, &h.to_text());
    assert_eq!(r.status, 406, "{r:?}");
    let tx = Sender::start(rig.server(), None, None, 1000.0);
    thread::sleep(Duration::from_millis(400));
    assert_ne!(tx.state(), "streaming");
    drop(tx);
    drop(rig);
    // A receiver with encryption=required refuses cleartext: version 2 asking for none,
    // a version 2 hello without the header, and version 1.
    let mut cfg = config();
    cfg.encryption = Mode::Required;
    let rig = Rig::start(cfg, false);
    let mut h = hello(Direction::Play, None);
    h.fields.insert("Encryption".into(), "none".into());
    let r = handshake(rig.addr, &h.to_text());
    assert_eq!(r.status, 426, "{r:?}");
    assert!(r.reason.contains("requires encryption"), "{r:?}");
    let r = handshake(rig.addr, &hello(Direction::Play, None).to_text());
    assert_eq!(r.status, 426, "{r:?}");
    let mut h = hello(Direction::Play, None);
    h.version = 1;
    let r = handshake(rig.addr, &h.to_text());
    assert_eq!(r.status, 426, "{r:?}");
    assert!(r.reason.contains("version 1"), "{r:?}");
    let tx = Sender::start_with(rig.server(), None, None, 1000.0, Mode::None);
    thread::sleep(Duration::from_millis(400));
    assert_ne!(tx.state(), "streaming");
    assert_eq!(played_tone(&rig.seen).2, 0, "cleartext played");
    drop(tx);
    // An encrypting tunnel is welcome there.
    let tx = Sender::start_with(rig.server(), None, None, 1000.0, Mode::Required);
    assert!(rig.hears_audio());
    assert_eq!(
        tx.shared.stats.encryption(),
        secure::State::Noise(Pattern::Nn)
    );
}

#[test]
fn a_version_1_sender_is_served_in_cleartext() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let mut h = hello(Direction::Play, None);
    h.version = 1;
    let r = handshake(rig.addr, &h.to_text());
    assert_eq!((r.status, r.version), (200, 1), "{r:?}");
    assert_eq!(r.fields.get("Encryption"), None);
}

/// A receiver of protocol version 1 as it answers: `505` to any other version, `200` to a
/// version 1 hello, then it swallows the stream. Returns its address and the first lines of
/// the hellos it saw.
fn version_1_receiver(stop: Arc<AtomicBool>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut s, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let seen = s2.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(2).any(|w| w == b"\n\n") && !stop.load(Ordering::SeqCst) {
                    match s.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => {}
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let first = text.lines().next().unwrap_or("").to_string();
                seen.lock().unwrap().push(text);
                if !first.starts_with("OPUS-TUNNEL/1 ") {
                    let _ =
                        s.write_all(b"OPUS-TUNNEL/1 505 Version Not Supported\nSupported: 1\n\n");
                    return;
                }
                let _ = s.write_all(b"OPUS-TUNNEL/1 200 OK\nDevice: speakers\n\n");
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(0) = s.read(&mut chunk) {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn a_version_1_receiver_gets_cleartext_with_auto_and_a_refusal_with_required() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, hellos) = version_1_receiver(stop.clone());
    let server = ServerAddr::Tcp {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    let tx = Sender::start_with(server.clone(), None, None, 1000.0, Mode::Auto);
    assert!(wait_for(Duration::from_secs(3), || tx.state() == "streaming"));
    assert_eq!(tx.shared.stats.encryption(), secure::State::None);
    {
        let h = hellos.lock().unwrap();
        assert!(h[0].starts_with("OPUS-TUNNEL/2 PLAY\n"), "{h:?}");
        assert!(h[0].contains("\nEncryption: noise\n"), "{h:?}");
        assert!(h[1].starts_with("OPUS-TUNNEL/1 PLAY\n"), "{h:?}");
        assert!(!h[1].contains("Encryption"), "{h:?}");
    }
    drop(tx);
    hellos.lock().unwrap().clear();
    let tx = Sender::start_with(server, None, None, 1000.0, Mode::Required);
    thread::sleep(Duration::from_millis(500));
    assert_ne!(tx.state(), "streaming");
    {
        let h = hellos.lock().unwrap();
        assert!(!h.is_empty());
        assert!(h.iter().all(|t| t.starts_with("OPUS-TUNNEL/2 ")), "{h:?}");
    }
    drop(tx);
    stop.store(true, Ordering::SeqCst);
}

// ---- transport=udp ----------------------------------------------------------------------------

/// The tone arrives whole at `freq` and level: 1 s of it within 3 s, its last 0.3 s checked
/// (the starts themselves: `starts_play_cleanly_over_udp_and_tcp`).
fn hears_tone(rig: &Rig, freq_want: f64) {
    let enough = wait_for(Duration::from_secs(3), || {
        played_tone(&rig.seen).2 >= 48_000
    });
    let n = played_tone(&rig.seen).2;
    assert!(enough, "only {n} frames of audio arrived");
    let (freq, rms, _) = steady_tone(&rig.seen.played.lock().unwrap(), 14_400);
    assert!((freq - freq_want).abs() < 5.0, "tone at {freq:.1} Hz");
    let db = tone_db(rms);
    assert!(db.abs() < 1.5, "level {db:+.2} dB off");
}

#[test]
fn udp_transport_encrypted_and_cleartext() {
    let _serial = serial();
    for enc in [Mode::Auto, Mode::None] {
        let mut cfg = config();
        cfg.udp_port = Some(0);
        let rig = Rig::start(cfg, false);
        assert!(rig.receiver.as_ref().unwrap().udp_port().is_some());
        let tx = Sender::start_on(rig.server(), None, None, 1000.0, enc, Transport::Udp);
        hears_tone(&rig, 1000.0);
        assert_eq!(tx.shared.stats.udp.transport(), Transport::Udp);
        assert!(wait_for(Duration::from_secs(2), || rig
            .prop("opus.tunnel.transport")
            .as_deref()
            == Some("udp")));
        assert_eq!(rig.prop("opus.tunnel.udp_dropped").as_deref(), Some("0"));
        let props = tx.shared.stat_properties();
        assert!(props.contains(&("opus.tunnel.transport".into(), "udp".into())));
        // FEC is the encoder's business (on by default through the module arguments); the
        // receiver's reports carry the loss.
        assert!(wait_for(Duration::from_secs(3), || tx
            .shared
            .stat_properties()
            .iter()
            .any(|(k, v)| k == "opus.tunnel.remote.loss_pct" && v == "0")));
        let expect = if enc == Mode::None {
            secure::State::None
        } else {
            secure::State::Noise(Pattern::Nn)
        };
        assert_eq!(tx.shared.stats.encryption(), expect);
    }
}

#[test]
fn record_tunnel_over_udp_encrypted_and_cleartext() {
    let _serial = serial();
    for enc in [Mode::Auto, Mode::None] {
        let mut cfg = config();
        cfg.udp_port = Some(0);
        let rig = Rig::start(cfg, false);
        let knobs = OpusKnobs {
            frame_size: FrameSize::Ms10,
            fec: true,
            ..OpusKnobs::default()
        };
        let (playback, client) =
            start_record(record_cfg(&rig, enc, Transport::Udp), knobs).unwrap();
        let (_source, got) = record_into(playback);
        client.set_running(true);
        records_tone(&got);
        // Past the far end's wait for the first report of audio over UDP (3 s): both ends
        // still say udp, so the far end never fell back to TCP.
        thread::sleep(Duration::from_secs(4));
        let props = client.stat_properties();
        let has = |k: &str, v: &str| props.contains(&(format!("opus.tunnel.{k}"), v.into()));
        assert!(has("transport", "udp"), "{props:?}");
        assert!(has("udp_dropped", "0"), "{props:?}");
        assert_eq!(rig.prop("opus.tunnel.transport").as_deref(), Some("udp"));
        let expect = if enc == Mode::None {
            secure::NONE
        } else {
            secure::PATTERN_NN
        };
        assert!(has("encryption", expect), "{props:?}");
        // The reader leaves and comes back: the audio finds its way again.
        client.set_running(false);
        assert!(wait_for(Duration::from_secs(1), || rig
            .seen
            .captures_closed
            .load(Ordering::SeqCst)
            == 1));
        client.set_running(true);
        records_tone(&got);
        assert_eq!(client.report().reconnects, Some(0));
    }
}

#[test]
fn a_record_tunnel_falls_back_to_tcp_when_the_far_end_has_no_udp() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let cfg = record_cfg(&rig, Mode::Auto, Transport::Udp);
    let (playback, client) = start_record(cfg, OpusKnobs::default()).unwrap();
    let (_source, got) = record_into(playback);
    client.set_running(true);
    records_tone(&got);
    assert_eq!(client.report().transport, "tcp");
}

#[test]
fn udp_falls_back_to_tcp_when_the_receiver_has_no_udp() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let tx = Sender::start_on(rig.server(), None, None, 800.0, Mode::Auto, Transport::Udp);
    hears_tone(&rig, 800.0);
    assert_eq!(tx.shared.stats.udp.transport(), Transport::Tcp);
    assert!(wait_for(Duration::from_secs(2), || rig
        .prop("opus.tunnel.transport")
        .as_deref()
        == Some("tcp")));
}

#[test]
fn junk_datagrams_do_not_disturb_a_udp_stream() {
    let _serial = serial();
    let mut cfg = config();
    cfg.udp_port = Some(0);
    let rig = Rig::start(cfg, false);
    let port = rig.receiver.as_ref().unwrap().udp_port().unwrap();
    let tx = Sender::start_on(rig.server(), None, None, 1000.0, Mode::Auto, Transport::Udp);
    assert!(rig.hears_audio());
    // Random datagrams, and datagrams of every short length, at the receiver's port while
    // the tone plays.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x = 99u64;
    let stop = Instant::now() + Duration::from_millis(800);
    let mut sent = 0;
    while Instant::now() < stop {
        let len = sent % 200;
        let d: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 40) as u8
            })
            .collect();
        let _ = junk.send_to(&d, ("127.0.0.1", port));
        sent += 1;
        if sent % 50 == 0 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    rig.seen.played.lock().unwrap().clear();
    hears_tone(&rig, 1000.0);
    assert_eq!(tx.shared.stats.udp.transport(), Transport::Udp);
    assert_eq!(tx.state(), "streaming");
}

/// A TCP forwarder on `listen` to `to` (one connection at a time, both directions).
fn tcp_forwarder(listen: &str, to: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(listen).unwrap();
    let at = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { return };
            let Ok(b) = TcpStream::connect(to) else {
                continue;
            };
            let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
            let (mut a, mut b) = (a, b);
            thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Both);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut b2, &mut a2);
                let _ = a2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    at
}

#[test]
fn blocked_udp_falls_back_to_tcp_on_the_same_connection() {
    let _serial = serial();
    let mut cfg = config();
    cfg.udp_port = Some(0);
    let rig = Rig::start(cfg, false);
    // Through a TCP forwarder on 127.0.0.2: the receiver grants UDP, but the datagrams go to
    // 127.0.0.2, where nothing listens (as a firewall would drop them).
    let fwd = tcp_forwarder("127.0.0.2:0", rig.addr);
    let addr = ServerAddr::Tcp {
        host: "127.0.0.2".into(),
        port: fwd.port(),
    };
    let tx = Sender::start_on(addr, None, None, 1000.0, Mode::Auto, Transport::Udp);
    assert!(wait_for(Duration::from_secs(2), || tx
        .shared
        .stats
        .udp
        .transport()
        == Transport::Udp));
    assert_eq!(
        played_tone(&rig.seen).2,
        0,
        "audio arrived over blocked UDP"
    );
    // After 3 s unanswered, the audio goes over TCP.
    assert!(wait_for(Duration::from_secs(5), || tx
        .shared
        .stats
        .udp
        .transport()
        == Transport::Tcp));
    hears_tone(&rig, 1000.0);
    assert_eq!(tx.shared.stats.snapshot().reconnects, 0);
}

/// Plain RTP/Opus: the tunnel sink's `rtp://` sender into the receiver's plain RTP port: the
/// tone arrives through the same playout, with its SDP; garbage datagrams and a sender the ACL
/// does not admit beside it are dropped and counted, and the stream plays on.
#[test]
fn plain_rtp_tone_through() {
    let _serial = serial();
    let rig = Rig::start(config(), false);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let rtp_in = RtpReceiver::start(
        sock,
        plain_rtp::RecvConfig {
            anonymous: false,
            acl: Some(IpAcl::parse("acl", "127.0.0.1").unwrap()),
            payload_type: 111,
            target_usec: 0,
            min_usec: 0,
            max_usec: 1_000_000,
            max_streams: 4,
            external_resampler: false,
        },
        rig.host.clone(),
    )
    .unwrap();
    let sdp_file = std::env::temp_dir().join(format!("ot-loopback-{}.sdp", std::process::id()));
    let cfg = WorkerConfig {
        addr: ServerAddr::Rtp {
            host: "127.0.0.1".into(),
            port,
        },
        remote_sink: None,
        name: "plain".into(),
        host: "test".into(),
        compression: Compression::Opus,
        fmt: StreamFormat {
            rate: RATE,
            channels: CH,
        },
        sample_format: SampleFormat::F32Le,
        channel_map: "front-left,front-right".into(),
        block_usec: 10_000,
        cookie: None,
        encryption: Mode::Auto,
        transport: Transport::Tcp,
        realtime: None,
    };
    let (feeder, shared, worker, info) = plain_rtp::start_play(
        cfg,
        OpusKnobs::default(),
        192_000,
        SendConfig {
            payload_type: 111,
            sdp_file: Some(sdp_file.clone()),
        },
    )
    .unwrap();
    let (mut device, _) = Device::run((feeder, Tone::new(1000.0), false), |(f, tone, was)| {
        if !*was {
            f.set_running(true);
            *was = true;
        }
        let bytes: Vec<u8> = tone.block().iter().flat_map(|v| v.to_le_bytes()).collect();
        f.push(&bytes, true);
    });
    let sdp = std::fs::read_to_string(&sdp_file).unwrap();
    let _ = std::fs::remove_file(&sdp_file);
    assert!(
        sdp.contains(&format!("m=audio {port} RTP/AVP 111\r\n")),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtpmap:111 opus/48000/2\r\n"), "{sdp}");
    assert_eq!(info.sdp(), sdp.replace("\r\n", "\n"));
    // Garbage from this host (not RTP, another payload type) while it plays.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20u8 {
        junk.send_to(&[i; 30], ("127.0.0.1", port)).unwrap();
        junk.send_to(
            &[0x80, 96, 0, i, 0, 0, 0, 0, 0, 0, 0, 1, 0xfc],
            ("127.0.0.1", port),
        )
        .unwrap();
    }
    assert!(rig.hears_audio(), "no audio through plain RTP");
    thread::sleep(Duration::from_millis(1500));
    let (freq, rms, frames) = steady_tone(&rig.seen.played.lock().unwrap(), 48_000);
    println!(
        "plain RTP: {freq:.1} Hz, rms {rms:.3}, {frames} frames; {} malformed; sent {} packets",
        rtp_in.malformed(),
        shared.stats.snapshot().packets_sent
    );
    assert!((freq - 1000.0).abs() < 5.0, "{freq}");
    // 0.25 peak: rms 0.177, ±1 dB.
    assert!((0.157..=0.198).contains(&rms), "{rms}");
    assert!(rtp_in.malformed() >= 40, "{}", rtp_in.malformed());
    let peer = rig.prop("opus.tunnel.peer").unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(shared.stats.state().as_str(), "streaming");
    device.stop();
    shared.stop_and_join(worker);
    drop(rtp_in);
}

/// Eight starts over each transport (by hand: `--ignored`, about 30 s): from the first 20 ms
/// on, every 50 ms of the tone within 5 Hz and 1 dB, no underrun, no concealed frame. Not in
/// CI: over UDP a packet later than the target allows still makes a start conceal a frame now
/// and then (the README's known limits have the runs and the trace).
#[test]
#[ignore]
fn starts_play_cleanly_over_udp_and_tcp() {
    let _serial = serial();
    let mut failed = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        for run in 0..8 {
            let mut cfg = config();
            cfg.udp_port = Some(0);
            let rig = Rig::start(cfg, false);
            let tx = Sender::start_on(rig.server(), None, None, 1000.0, Mode::Auto, transport);
            thread::sleep(Duration::from_millis(1800));
            let played = rig.seen.played.lock().unwrap().clone();
            let left: Vec<f32> = played.chunks(usize::from(CH)).map(|f| f[0]).collect();
            let first = left.iter().position(|v| v.abs() > 0.01).unwrap_or(0);
            let mut off = Vec::new();
            let w = 2400;
            let mut k = first + 960;
            while k + w <= left.len() {
                let ch = usize::from(CH);
                let (f, r, _) = analyse(&played[k * ch..(k + w) * ch]);
                let db = tone_db(r);
                if (f - 1000.0).abs() > 5.0 || db.abs() > 1.0 {
                    let at = (k - first) as f64 / 48_000.0;
                    off.push(format!("{at:.2}s {f:.0} Hz {db:+.1} dB"));
                }
                k += w;
            }
            let (und, plc) = (
                rig.prop("opus.tunnel.underruns"),
                rig.prop("opus.tunnel.plc_frames"),
            );
            eprintln!(
                "{transport:?} start {run}: {} ms played, underruns {und:?}, concealed {plc:?}, \
                 latency {:?} us, windows off: {off:?}",
                (left.len() - first) / 48,
                rig.prop("opus.tunnel.latency_usec"),
            );
            if !off.is_empty() || und.as_deref() != Some("0") || plc.as_deref() != Some("0") {
                failed.push(format!("{transport:?} start {run}"));
            }
            drop(tx);
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}
