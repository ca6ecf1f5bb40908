//! The demo: two private PulseAudio daemons on loopback, an Opus tunnel between them, a stereo
//! tone through it, and the figures measured on the way.
//!
//!     cargo run --release -p opus-tunnel-tests --bin demo      (after scripts/build-modules.sh)
//!
//! scripts/demo.sh sets up a fresh machine and runs this.
use opus_tunnel_tests::clicks::{self, ClickPlan};
use opus_tunnel_tests::{
    analyse_stereo, dropouts, free_port, require_modules, tone_loop, CountingProxy, Daemon,
    Recorder, CHANNELS, RATE,
};
use std::time::{Duration, Instant};

fn main() {
    if !require_modules(
        "demo",
        &["module-tunnel-sink-opus", "module-opus-protocol-tcp"],
    ) {
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn prop(d: &Daemon, sink: &str, key: &str) -> String {
    d.sink_properties(sink)
        .ok()
        .and_then(|p| p.get(key).cloned())
        .unwrap_or_else(|| "?".into())
}

fn run() -> anyhow::Result<()> {
    println!("== opus-tunnel demo: two private pulseaudio daemons on loopback");
    let receiver = Daemon::builder().name("receiver").start()?;
    let sender = Daemon::builder().name("sender").start()?;
    let port = free_port();
    let proxy = CountingProxy::start(port);
    receiver
        .load_module(
            "module-opus-protocol-tcp",
            &format!("port={port} auth-anonymous=1"),
        )
        .map_err(anyhow::Error::msg)?;
    println!(
        "receiver (pid {}): module-opus-protocol-tcp port={port} auth-anonymous=1",
        receiver.pid()
    );
    let args = format!(
        "sink_name=tun server=tcp:127.0.0.1:{} compression.bitrate=64000",
        proxy.port()
    );
    sender
        .load_module("module-tunnel-sink-opus", &args)
        .map_err(anyhow::Error::msg)?;
    println!(
        "sender   (pid {}): module-tunnel-sink-opus {args}",
        sender.pid()
    );
    println!(
        "          (through a byte-counting TCP proxy on port {})",
        proxy.port()
    );

    let mut rec = Recorder::start(&receiver, "null.monitor");
    let player = opus_tunnel_tests::play_loop(&sender, "tun", tone_loop(1000.0, 1500.0, -12.0));
    std::thread::sleep(Duration::from_secs(2));
    let _ = rec.read(0.5)?;
    let b0 = proxy.bytes_to_server();
    let t0 = Instant::now();
    let audio = rec.read(5.0)?;
    let secs = t0.elapsed().as_secs_f64();
    let wire = proxy.bytes_to_server() - b0;
    drop(player);
    let report = analyse_stereo(&audio, 0.0).ok_or_else(|| anyhow::anyhow!("no audio arrived"))?;
    let drops = dropouts(&audio, CHANNELS).len();
    println!("\n== a 1000 Hz (left) / 1500 Hz (right) tone at -12 dBFS through the tunnel, 5 s recorded at the far end");
    println!(
        "received: left {:.1} Hz at {:.2} dBFS, right {:.1} Hz at {:.2} dBFS, {} dropouts",
        report.left_hz, report.left_dbfs, report.right_hz, report.right_dbfs, drops
    );
    let kbps = wire as f64 * 8.0 / secs / 1000.0;
    println!("wire (sender -> receiver, TCP payload): {wire} bytes in {secs:.2} s = {kbps:.1} kbit/s ({:.3} x the 64 kbit/s Opus bitrate; PCM would be 1536 kbit/s)", kbps / 64.0);
    println!(
        "tunnel sink properties: state={} bitrate={} remote.latency_usec={} remote.underruns={}",
        prop(&sender, "tun", "opus.tunnel.state"),
        prop(&sender, "tun", "opus.tunnel.bitrate"),
        prop(&sender, "tun", "opus.tunnel.remote.latency_usec"),
        prop(&sender, "tun", "opus.tunnel.remote.underruns"),
    );

    std::thread::sleep(Duration::from_secs(2));
    let i0 = proxy.bytes_to_server() + proxy.bytes_to_client();
    std::thread::sleep(Duration::from_secs(10));
    let idle = proxy.bytes_to_server() + proxy.bytes_to_client() - i0;
    println!("\n== idle: nothing playing for 10 s");
    println!(
        "wire, both directions: {idle} bytes (state={})",
        prop(&sender, "tun", "opus.tunnel.state")
    );
    drop(rec);

    println!("\n== end-to-end latency: 10 clicks played with pacat --latency-msec=10, found in parec --latency-msec=10 at the far end");
    let lat = click_latencies(&sender, &receiver, 10)?;
    if lat.is_empty() {
        println!("no click was found at the far end");
    } else {
        let mut s = lat.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        println!(
            "latency: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} clicks (includes pacat's and parec's own buffers)",
            s[s.len() / 2],
            s[0],
            s[s.len() - 1],
            s.len()
        );
    }
    println!(
        "\n== both daemons alive: sender {}, receiver {}",
        sender.is_alive(),
        receiver.is_alive()
    );
    Ok(())
}

/// Plays `n` short clicks one second apart, paced in real time, and finds each at the far end.
/// Returns the delays in ms between writing a click into pacat and reading it from parec.
fn click_latencies(sender: &Daemon, receiver: &Daemon, n: usize) -> anyhow::Result<Vec<f64>> {
    let plan = ClickPlan {
        lead_blocks: 150,
        spacing_blocks: 100,
        total_blocks: (n + 2) * 100,
        drain: Duration::from_millis(500),
        quiet_frames: RATE as usize / 2,
        max_delay: Duration::from_millis(900),
    };
    clicks::click_latencies(sender, "tun", receiver, n, &plan)
}
