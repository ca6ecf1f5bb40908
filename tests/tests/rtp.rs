//! Plain RTP/Opus (RFC 7587) against GStreamer (issue 18, item 3):
//!
//! a. our tunnel sink with `server=rtp://127.0.0.1:PORT` plays a stereo tone (1000 Hz left,
//!    1500 Hz right); `gst-launch-1.0 udpsrc ! rtpjitterbuffer ! rtpopusdepay ! opusdec`
//!    decodes it to the right tone (±5 Hz, ±1 dB, no dropout); the SDP is a property and a
//!    file; `encryption=required` with `rtp://` is refused at load.
//! b. `gst-launch-1.0 audiotestsrc ! opusenc ! rtpopuspay pt=96 ! udpsink` plays through our
//!    receiver's `rtp_port` (its null sink's monitor: the tone ±5 Hz, ±1 dB, no dropout),
//!    while garbage datagrams arrive on the same port.
//! c. a sender the receiver's `auth-ip-acl` does not admit plays nothing, and is logged.
//! d. the PipeWire receiver's `rtp.port` plays GStreamer's RTP/Opus likewise.
//!
//! Needs GStreamer (gstreamer1.0-tools, -plugins-base, -plugins-good: scripts/install-deps.sh);
//! without it the tests print `SKIP` (fail with `OPUS_TUNNEL_REQUIRE_MODULES=1`). Every
//! process a test starts (daemons, pacat/parec, gst-launch) is stopped when it ends, also on
//! failure. `cargo test --release -p opus-tunnel-tests --test rtp -- --test-threads=1`.

use opus_tunnel_tests::pipewire::{require_pw_modules, PipeWire};
use opus_tunnel_tests::process::{terminate, Signal};
use opus_tunnel_tests::{
    analyse_stereo, begin, free_port, play_loop, tone_loop, Daemon, Recorder, RECEIVER, SENDER,
};
use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LEFT: f64 = 1000.0;
const RIGHT: f64 = 1500.0;
const LEVEL: f64 = -12.0;

/// A free UDP port on 127.0.0.1 (bound, read, closed).
fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    s.local_addr().expect("local_addr").port()
}

/// GStreamer's tools and the elements the tests use are there; otherwise SKIP (or, with
/// `OPUS_TUNNEL_REQUIRE_MODULES=1`, fail).
fn gstreamer_present(test: &str) -> bool {
    let elements = [
        "udpsrc",
        "udpsink",
        "rtpjitterbuffer",
        "rtpopusdepay",
        "rtpopuspay",
        "opusdec",
        "opusenc",
        "audiotestsrc",
        "audioconvert",
        "audioresample",
        "fdsink",
    ];
    let missing: Vec<&str> = elements
        .iter()
        .copied()
        .filter(|e| {
            !Command::new("gst-inspect-1.0")
                .arg(e)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIP: {test}: GStreamer elements missing ({}): apt-get install gstreamer1.0-tools \
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good",
        missing.join(", ")
    );
    if std::env::var_os("OPUS_TUNNEL_REQUIRE_MODULES").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    println!("{msg}");
    false
}

/// A running `gst-launch-1.0`, stopped (SIGTERM, then SIGKILL) when dropped; its stdout, if
/// piped, collected by a thread.
struct Gst {
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

impl Gst {
    fn start(pipeline: &[&str], collect_stdout: bool) -> Gst {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q").args(pipeline);
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        cmd.stdout(if collect_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start gst-launch-1.0: {e}"));
        let collect = |r: Option<Box<dyn Read + Send>>| {
            r.map(|mut r| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = r.read_to_end(&mut v);
                    v
                })
            })
        };
        let out = collect(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = collect(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        Gst {
            child: Some(child),
            out,
            err,
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops it; returns what it wrote to stdout and stderr.
    fn stop(&mut self) -> (Vec<u8>, String) {
        if let Some(mut c) = self.child.take() {
            // SIGINT first: gst-launch shuts its pipeline down.
            opus_tunnel_tests::process::signal(c.id(), Signal::INT);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            terminate(&mut c, Duration::from_secs(2));
        }
        let out = self
            .out
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (out, String::from_utf8_lossy(&err).into_owned())
    }
}

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn s16(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

const OPUS_RTP_CAPS: &str =
    "caps=application/x-rtp,media=(string)audio,clock-rate=(int)48000,encoding-name=(string)OPUS,payload=(int)96";

/// `audiotestsrc` (LEFT Hz on both channels at LEVEL) → Opus → RTP (payload type 96) → UDP to
/// 127.0.0.1:`port`.
fn gst_tone_sender(port: u16) -> Gst {
    let volume = format!("volume={:.4}", 10f64.powf(LEVEL / 20.0));
    Gst::start(
        &[
            "audiotestsrc",
            "wave=sine",
            &format!("freq={LEFT}"),
            &volume,
            "is-live=true",
            "!",
            "audio/x-raw,rate=48000,channels=2",
            "!",
            "audioconvert",
            "!",
            "opusenc",
            "!",
            "rtpopuspay",
            "pt=96",
            "!",
            "udpsink",
            "host=127.0.0.1",
            &format!("port={port}"),
        ],
        false,
    )
}

/// a. GStreamer decodes our `rtp://` stream to the right stereo tone.
#[test]
fn a_gstreamer_decodes_our_rtp_stream() {
    let test = "a_gstreamer_decodes_our_rtp_stream";
    let Some(_g) = begin(test, &[SENDER]) else {
        return;
    };
    if !gstreamer_present(test) {
        return;
    }
    let port = free_udp_port();
    let sender = Daemon::named("sender");
    // Plain RTP is always cleartext: encryption=required is refused at load.
    let e = sender
        .load_module(
            SENDER,
            &format!("sink_name=bad server=rtp://127.0.0.1:{port} encryption=required"),
        )
        .expect_err("encryption=required with rtp:// must be refused");
    let log = sender.log();
    assert!(
        log.contains("always cleartext"),
        "the refusal names the reason: {e}\n{}",
        sender.log_tail(20)
    );
    let sdp_path = sender.dir().join("rtp.sdp");
    sender
        .load_module(
            SENDER,
            &format!(
                "sink_name=rtp server=rtp://127.0.0.1:{port} sdp_file={}",
                sdp_path.display()
            ),
        )
        .unwrap_or_else(|e| panic!("load: {e}\n{}", sender.log_tail(30)));
    let sdp = std::fs::read_to_string(&sdp_path).expect("the SDP file");
    println!("{test}: SDP file:\n{sdp}");
    for line in [
        "v=0\r\n",
        "c=IN IP4 127.0.0.1\r\n",
        &format!("m=audio {port} RTP/AVP 96\r\n"),
        "a=rtpmap:96 opus/48000/2\r\n",
        "a=fmtp:96 sprop-stereo=1; sprop-maxcapturerate=48000\r\n",
        "a=ptime:20\r\n",
    ] {
        assert!(sdp.contains(line), "{line:?} missing from the SDP:\n{sdp}");
    }
    let listing = sender.pactl_ok(&["list", "sinks"]);
    assert!(
        listing.contains("a=rtpmap:96 opus/48000/2"),
        "the SDP as the sink's property:\n{listing}"
    );
    let props = sender.sink_properties("rtp").expect("sink rtp");
    assert_eq!(
        props.get("opus.tunnel.transport").map(String::as_str),
        Some("rtp")
    );

    let mut gst = Gst::start(
        &[
            "udpsrc",
            &format!("port={port}"),
            "address=127.0.0.1",
            OPUS_RTP_CAPS,
            "!",
            "rtpjitterbuffer",
            "latency=100",
            "!",
            "rtpopusdepay",
            "!",
            "opusdec",
            "!",
            "audioconvert",
            "!",
            "audioresample",
            "!",
            "audio/x-raw,format=S16LE,rate=48000,channels=2",
            "!",
            "fdsink",
            "fd=1",
            "sync=false",
        ],
        true,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gst.running(),
        "gst-launch-1.0 ended early: {:?}",
        gst.stop().1
    );
    let mut player = play_loop(&sender, "rtp", tone_loop(LEFT, RIGHT, LEVEL));
    std::thread::sleep(Duration::from_secs(6));
    let props = sender.sink_properties("rtp").expect("sink rtp");
    player.stop();
    std::thread::sleep(Duration::from_millis(300));
    let (out, err) = gst.stop();
    let got = s16(&out);
    println!(
        "{test}: GStreamer decoded {:.2} s; sink state {:?}, bitrate {:?}, packets {:?}, send errors {:?}",
        got.len() as f64 / 96_000.0,
        props.get("opus.tunnel.state"),
        props.get("opus.tunnel.bitrate"),
        props.get("opus.tunnel.packets_sent"),
        props.get("opus.tunnel.send_errors"),
    );
    let r = analyse_stereo(&got, 1.0).unwrap_or_else(|| {
        panic!(
            "GStreamer decoded no tone ({} bytes); gst stderr: {err}\n{}",
            out.len(),
            sender.log_tail(30)
        )
    });
    println!("{test}: {r:?}");
    assert!(r.seconds > 3.5, "steady part only {} s: {r:?}", r.seconds);
    r.assert_tone(LEFT, RIGHT, LEVEL, 5.0, 1.0);
}

/// b. GStreamer's RTP/Opus plays through our receiver's `rtp_port`, while garbage arrives on
/// the same port.
#[test]
fn b_gstreamer_plays_through_our_rtp_port() {
    let test = "b_gstreamer_plays_through_our_rtp_port";
    let Some(_g) = begin(test, &[RECEIVER]) else {
        return;
    };
    if !gstreamer_present(test) {
        return;
    }
    let rtp_port = free_udp_port();
    let receiver = Daemon::receiver(
        "receiver",
        free_port(),
        &format!("auth-ip-acl=127.0.0.1 rtp_port={rtp_port}"),
    );
    let mut rec = Recorder::start(&receiver, "null.monitor");
    let mut gst = gst_tone_sender(rtp_port);
    // Garbage from another socket on the same host: not RTP, another payload type, RTP with
    // nonsense numbers; dropped and counted, the stream plays on.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let noise = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut n = 0u32;
        while stop_rx.recv_timeout(Duration::from_millis(50)).is_err() {
            n += 1;
            // Random bytes, but never RTP version 2 (a random RTP/Opus packet of payload
            // type 96 would be a stream of its own, and rightly played).
            let mut junk: Vec<u8> = opus_tunnel_tests::pseudo_random_bytes(u64::from(n) + 1, 60);
            junk[0] &= 0x3f;
            let _ = s.send_to(&junk, ("127.0.0.1", rtp_port));
            let mut wrong_pt = vec![0x80, 97, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 0xfc];
            wrong_pt[3] = n as u8;
            let _ = s.send_to(&wrong_pt, ("127.0.0.1", rtp_port));
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        got.extend(rec.read(0.5).expect("record"));
        if opus_tunnel_tests::has_tone(&got, LEFT, LEFT, 5.0, 1.0) {
            break;
        }
    }
    let waited = started.elapsed();
    let steady = rec.read(4.0).expect("record");
    let inputs = receiver.pactl_ok(&["list", "sink-inputs"]);
    let _ = stop_tx.send(());
    let _ = noise.join();
    let (_, err) = gst.stop();
    let r = analyse_stereo(&steady, 0.0).unwrap_or_else(|| {
        panic!(
            "no tone from GStreamer through rtp_port (waited {waited:?}); gst: {err}\n{}",
            receiver.log_tail(40)
        )
    });
    println!("{test}: tone after {waited:?}; {r:?}");
    assert!(
        inputs.contains("opus.tunnel.transport = \"rtp\""),
        "the stream is marked as plain RTP:\n{inputs}"
    );
    assert!(r.seconds > 3.5, "steady part only {} s: {r:?}", r.seconds);
    r.assert_tone(LEFT, LEFT, LEVEL, 5.0, 1.0);
    let log = receiver.log();
    assert!(
        log.contains("plain RTP/Opus stream from 127.0.0.1:"),
        "{}",
        receiver.log_tail(30)
    );
    assert!(
        log.contains("dropped a datagram from 127.0.0.1:"),
        "the garbage is logged as dropped:\n{}",
        receiver.log_tail(30)
    );
    // The stream ends a few seconds after the sender stops (parec records the monitor: a
    // source-output, not a sink-input).
    let stopped = Instant::now();
    while receiver.sink_input_count() > 0 && stopped.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{test}: the stream ended {:?} after GStreamer stopped",
        stopped.elapsed()
    );
    assert_eq!(
        receiver.sink_input_count(),
        0,
        "the RTP stream should end after 3 s without packets:\n{}",
        receiver.pactl_ok(&["list", "sink-inputs"])
    );
}

/// c. A sender the receiver's `auth-ip-acl` does not admit plays nothing and is logged.
#[test]
fn c_sender_not_admitted_is_dropped() {
    let test = "c_sender_not_admitted_is_dropped";
    let Some(_g) = begin(test, &[RECEIVER]) else {
        return;
    };
    let rtp_port = free_udp_port();
    let receiver = Daemon::receiver(
        "receiver",
        free_port(),
        &format!("auth-ip-acl=10.9.9.9 rtp_port={rtp_port}"),
    );
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut pkt = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    pkt.extend_from_slice(&[0xfc, 0xff, 0xfe]);
    for i in 0..50u16 {
        pkt[2..4].copy_from_slice(&i.to_be_bytes());
        pkt[4..8].copy_from_slice(&(u32::from(i) * 960).to_be_bytes());
        s.send_to(&pkt, ("127.0.0.1", rtp_port)).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.sink_input_count(), 0, "nothing plays");
    let log = receiver.log();
    assert!(
        log.contains("dropped plain RTP from 127.0.0.1:")
            && log.contains("not admitted by auth-ip-acl"),
        "{}",
        receiver.log_tail(20)
    );
    // A receiver with rtp_port and only a cookie (neither an ACL nor auth-anonymous) cannot
    // load: a plain RTP sender cannot prove a cookie.
    let cookie = receiver.dir().join("test-cookie");
    std::fs::write(&cookie, opus_tunnel_tests::pseudo_random_bytes(7, 256)).expect("cookie");
    let e = receiver
        .load_module(
            RECEIVER,
            &format!(
                "port={} listen=127.0.0.1 auth-cookie={} rtp_port={}",
                free_port(),
                cookie.display(),
                free_udp_port()
            ),
        )
        .expect_err("rtp_port without an ACL must be refused");
    println!("{test}: refused as expected: {e}");
    assert!(
        receiver
            .log()
            .contains("rtp_port: plain RTP has no handshake"),
        "{}",
        receiver.log_tail(20)
    );
}

/// d. The PipeWire receiver's `rtp.port` plays GStreamer's RTP/Opus.
#[test]
fn d_gstreamer_plays_through_pipewire_rtp_port() {
    let test = "d_gstreamer_plays_through_pipewire_rtp_port";
    let module = "libpipewire-module-opus-protocol-tcp";
    if !require_pw_modules(test, &[module]) {
        return;
    }
    let _g = opus_tunnel_tests::serial();
    if !gstreamer_present(test) {
        return;
    }
    let rtp_port = free_udp_port();
    let pw = PipeWire::builder()
        .name("pw-receiver")
        .module(
            module,
            &format!(
                "server.address = [ \"tcp:127.0.0.1:{}\" ] auth.ip-acl = \"127.0.0.1\" \
                 target.object = \"null\" rtp.port = {rtp_port}",
                free_port()
            ),
        )
        .start()
        .unwrap_or_else(|e| panic!("PipeWire with {module}: {e:#}"));
    let mut rec = pw.recorder("null.monitor");
    let mut gst = gst_tone_sender(rtp_port);
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(15) {
        got.extend(rec.read(0.5).expect("record"));
        if opus_tunnel_tests::has_tone(&got, LEFT, LEFT, 5.0, 1.0) {
            break;
        }
    }
    let waited = started.elapsed();
    let xruns = pw.graph_xruns();
    let steady = rec.read(4.0).expect("record");
    let xruns = pw.graph_xruns() - xruns;
    let (_, err) = gst.stop();
    let mut r = analyse_stereo(&steady, 0.0).unwrap_or_else(|| {
        panic!(
            "no tone from GStreamer through rtp.port (waited {waited:?}); gst: {err}\n{}",
            pw.log()
        )
    });
    println!("{test}: tone after {waited:?}; {r:?}");
    assert!(r.seconds > 3.5, "steady part only {} s: {r:?}", r.seconds);
    if !r.dropouts.is_empty() {
        eprintln!("{test}: dropouts {:?}\n{}", r.dropouts, pw.log());
    }
    r.excuse_graph_xruns(test, xruns);
    r.assert_tone(LEFT, LEFT, LEVEL, 5.0, 1.0);
}
