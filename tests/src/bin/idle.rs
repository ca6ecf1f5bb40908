//! What an idle tunnel costs (issue 21): CPU per thread from /proc/PID/task/*/schedstat
//! (nanoseconds), with the tunnels connected and nothing playing, against the same daemons
//! without tunnels, our tunnel beside the stock `module-tunnel-sink-new` →
//! `module-native-protocol-tcp`.
//!
//!     scripts/build-modules.sh
//!     cargo run --release -p opus-tunnel-tests --bin idle
//!
//! Environment: `IDLE_SECS` (default 20; the figure is 60), `IDLE_CONNS` (the
//! connections of the per-connection case, default 8), `IDLE_SUSPEND=1` to load
//! `module-suspend-on-idle` in both daemons (as a stock default.pa does), `IDLE_ONLY=base,ours1,...`.
//!
//! Each case starts a fresh receiver daemon (both receivers loaded: ours and the native
//! protocol) and a fresh sender daemon with N tunnel sinks, waits until every tunnel has its
//! stream on the receiver and 3 s more, then measures both daemons for `IDLE_SECS`.
use anyhow::{anyhow, bail, Result};
use opus_tunnel_tests::schedstat::{sample, usage, Usage};
use opus_tunnel_tests::{free_port, require_modules, Daemon};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Tunnel {
    None,
    Ours,
    /// Our tunnel source (the microphone), nothing recording from it.
    Source,
    Stock,
}

struct Case {
    label: String,
    tunnel: Tunnel,
    n: usize,
}

struct Result1 {
    label: String,
    n: usize,
    sender: Usage,
    receiver: Usage,
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn main() {
    if !require_modules(
        "idle",
        &["module-tunnel-sink-opus", "module-opus-protocol-tcp"],
    ) {
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("idle: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let secs = env_u64("IDLE_SECS", 20);
    let k = env_u64("IDLE_CONNS", 8).max(2) as usize;
    let suspend = std::env::var("IDLE_SUSPEND").is_ok_and(|v| v == "1");
    let only = std::env::var("IDLE_ONLY").ok();
    let cases = vec![
        Case {
            label: "base".into(),
            tunnel: Tunnel::None,
            n: 0,
        },
        Case {
            label: "ours1".into(),
            tunnel: Tunnel::Ours,
            n: 1,
        },
        Case {
            label: format!("ours{k}"),
            tunnel: Tunnel::Ours,
            n: k,
        },
        Case {
            label: "source1".into(),
            tunnel: Tunnel::Source,
            n: 1,
        },
        Case {
            label: format!("source{k}"),
            tunnel: Tunnel::Source,
            n: k,
        },
        Case {
            label: "stock1".into(),
            tunnel: Tunnel::Stock,
            n: 1,
        },
        Case {
            label: format!("stock{k}"),
            tunnel: Tunnel::Stock,
            n: k,
        },
    ];
    println!(
        "== idle CPU, {secs} s per case, schedstat ns; module-suspend-on-idle: {}",
        if suspend { "loaded" } else { "not loaded" }
    );
    let mut results = Vec::new();
    for c in &cases {
        if let Some(o) = &only {
            if !o.split(',').any(|x| c.label.starts_with(x)) {
                continue;
            }
        }
        let r = measure(c, secs, suspend)?;
        println!(
            "{:<8} sender {:>6.3} ms/s [{}]\n{:<8} receiver {:>6.3} ms/s [{}]",
            r.label,
            r.sender.ms_per_s,
            r.sender.top(0.05),
            "",
            r.receiver.ms_per_s,
            r.receiver.top(0.05)
        );
        results.push(r);
    }
    let base = results.iter().find(|r| r.n == 0);
    println!("\n| case | tunnels | sender ms/s | above base | receiver ms/s | per connection above base |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        let (ds, dr) = match base {
            Some(b) if r.n > 0 => (
                format!("{:+.3}", r.sender.ms_per_s - b.sender.ms_per_s),
                format!(
                    "{:+.3}",
                    (r.receiver.ms_per_s - b.receiver.ms_per_s) / r.n as f64
                ),
            ),
            _ => ("".into(), "".into()),
        };
        println!(
            "| {} | {} | {:.3} | {} | {:.3} | {} |",
            r.label, r.n, r.sender.ms_per_s, ds, r.receiver.ms_per_s, dr
        );
    }
    Ok(())
}

fn measure(c: &Case, secs: u64, suspend: bool) -> Result<Result1> {
    let ours_port = free_port();
    let native_port = free_port();
    let soi = if suspend {
        "load-module module-suspend-on-idle"
    } else {
        ""
    };
    let receiver = Daemon::builder()
        .name("idle-receiver")
        .line(soi)
        .line(format!(
            "load-module module-opus-protocol-tcp port={ours_port} listen=127.0.0.1 auth-anonymous=1 sink=null max_connections=1024"
        ))
        .native_tcp(native_port)
        .start()?;
    let sender = Daemon::builder().name("idle-sender").line(soi).start()?;
    for i in 0..c.n {
        let (module, args) = match c.tunnel {
            Tunnel::Ours => (
                "module-tunnel-sink-opus",
                format!("sink_name=tun{i} server=tcp:127.0.0.1:{ours_port} sink=null"),
            ),
            Tunnel::Source => (
                "module-tunnel-source-opus",
                format!("source_name=mic{i} server=tcp:127.0.0.1:{ours_port} source=null.monitor"),
            ),
            Tunnel::Stock => (
                "module-tunnel-sink-new",
                format!("sink_name=tun{i} server=tcp:127.0.0.1:{native_port} sink=null"),
            ),
            Tunnel::None => unreachable!(),
        };
        sender
            .load_module(module, &args)
            .map_err(|e| anyhow!("load-module {module} {args}: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while connected(c, &sender, &receiver) < c.n {
        if Instant::now() > deadline {
            bail!(
                "{}: {} of {} tunnels connected after 15 s\n--- sender ---\n{}\n--- receiver ---\n{}",
                c.label,
                connected(c, &sender, &receiver),
                c.n,
                sender.log_tail(20),
                receiver.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let (s0, r0) = (sample(sender.pid()), sample(receiver.pid()));
    std::thread::sleep(Duration::from_secs(secs));
    let (s1, r1) = (sample(sender.pid()), sample(receiver.pid()));
    if connected(c, &sender, &receiver) < c.n {
        bail!("{}: a tunnel dropped during the measurement", c.label);
    }
    Ok(Result1 {
        label: c.label.clone(),
        n: c.n,
        sender: usage(&s0, &s1),
        receiver: usage(&r0, &r1),
    })
}

/// Tunnels of the case that are up: sink tunnels have their stream on the receiver; tunnel
/// sources (no stream there without readers) say `idle` on the sender.
fn connected(c: &Case, sender: &Daemon, receiver: &Daemon) -> usize {
    match c.tunnel {
        Tunnel::Source => sender
            .pactl_ok(&["list", "sources"])
            .matches("opus.tunnel.state = \"idle\"")
            .count(),
        _ => receiver.sink_input_count(),
    }
}
