//! VDI density (issue 21): N desktop daemons, each its own PulseAudio with a tunnel sink and a
//! tunnel source, connected to one receiving daemon; all idle, then 10 % of them playing a
//! tone. Total CPU (schedstat, ns), memory per desktop daemon, descriptors; our tunnels and
//! the stock `module-tunnel-sink-new`/`module-tunnel-source-new` →
//! `module-native-protocol-tcp` in the same run.
//!
//!     scripts/build-modules.sh
//!     cargo run --release -p opus-tunnel-tests --bin density
//!
//! Environment: `DENSITY_N` (default `1,16,64`), `DENSITY_SECS` per phase (default 15),
//! `DENSITY_KINDS` (default `ours,stock`). The receiver gets `max_connections` for every
//! tunnel and its open-file limit raised (`rlimit-nofile` in daemon.conf), as the README tells users to do.
use anyhow::{anyhow, bail, Result};
use opus_tunnel_tests::schedstat::{sample, usage, Sample};
use opus_tunnel_tests::{free_port, play_loop, require_modules, tone_loop, Daemon, Player};
use std::time::{Duration, Instant};

/// The most connections PulseAudio's native protocol accepts (`MAX_CONNECTIONS` in
/// protocol-native.c).
const STOCK_MAX_CONNECTIONS: usize = 64;

struct Row {
    kind: String,
    n: usize,
    phase: String,
    desktops_ms: f64,
    receiver_ms: f64,
    rss_desktop_mib: f64,
    rss_receiver_mib: f64,
    fds_desktop: f64,
    fds_receiver: usize,
}

fn main() {
    if !require_modules(
        "density",
        &[
            "module-tunnel-sink-opus",
            "module-tunnel-source-opus",
            "module-opus-protocol-tcp",
        ],
    ) {
        std::process::exit(2);
    }
    if let Err(e) = run() {
        eprintln!("density: {e:#}");
        std::process::exit(1);
    }
}

fn list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn run() -> Result<()> {
    let secs: u64 = std::env::var("DENSITY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let ns: Vec<usize> = list("DENSITY_N", "1,16,64")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let kinds = list("DENSITY_KINDS", "ours,stock");
    println!("== density: {secs} s per phase, desktops {ns:?}, kinds {kinds:?}");
    let mut rows = Vec::new();
    for kind in &kinds {
        for &n in &ns {
            if kind == "stock" && 2 * n > STOCK_MAX_CONNECTIONS {
                // module-native-protocol-tcp drops every connection beyond its 64th (a
                // compile-time limit of PulseAudio), and each desktop needs two.
                println!(
                    "stock x{n}: not possible: PulseAudio's native protocol takes at most \
                     {STOCK_MAX_CONNECTIONS} connections, {n} desktops need {}",
                    2 * n
                );
                continue;
            }
            let r = measure(kind, n, secs)?;
            for row in &r {
                print_row(row);
            }
            rows.extend(r);
        }
    }
    println!("\n| tunnels | desktops | phase | desktops' CPU, ms/s (per desktop) | receiver's CPU, ms/s | RSS per desktop, MiB | receiver RSS, MiB | descriptors per desktop | receiver's descriptors |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} ({:.2}) | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            r.kind,
            r.n,
            r.phase,
            r.desktops_ms,
            r.desktops_ms / r.n as f64,
            r.receiver_ms,
            r.rss_desktop_mib,
            r.rss_receiver_mib,
            r.fds_desktop,
            r.fds_receiver
        );
    }
    Ok(())
}

fn print_row(r: &Row) {
    println!(
        "{} x{} {}: desktops {:.2} ms/s ({:.3} each), receiver {:.2} ms/s; RSS {:.1} MiB each, receiver {:.1}; fds {:.0} each, receiver {}",
        r.kind,
        r.n,
        r.phase,
        r.desktops_ms,
        r.desktops_ms / r.n as f64,
        r.receiver_ms,
        r.rss_desktop_mib,
        r.rss_receiver_mib,
        r.fds_desktop,
        r.fds_receiver
    );
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn measure(kind: &str, n: usize, secs: u64) -> Result<Vec<Row>> {
    let port = free_port();
    let rb = Daemon::builder().name("density-rx");
    let rb = match kind {
        "ours" => rb.line(format!(
            "load-module module-opus-protocol-tcp port={port} listen=127.0.0.1 auth-anonymous=1 sink=null max_connections={}",
            2 * n + 16
        )),
        "stock" => rb.native_tcp(port),
        other => bail!("unknown kind {other:?} (ours, stock)"),
    };
    // PulseAudio sets its own open-file limit (soft and hard) from daemon.conf's
    // `rlimit-nofile`, where the README tells users to raise it.
    let receiver = rb.conf("rlimit-nofile = 16384").start()?;
    let mut desktops = Vec::with_capacity(n);
    for i in 0..n {
        let d = Daemon::builder().name(&format!("density-{i}")).start()?;
        let (sink, source) = match kind {
            "ours" => ("module-tunnel-sink-opus", "module-tunnel-source-opus"),
            _ => ("module-tunnel-sink-new", "module-tunnel-source-new"),
        };
        let a = format!("sink_name=tun server=tcp:127.0.0.1:{port} sink=null");
        d.load_module(sink, &a)
            .map_err(|e| anyhow!("desktop {i}: load-module {sink} {a}: {e}"))?;
        let a = format!("source_name=mic server=tcp:127.0.0.1:{port} source=null.monitor");
        d.load_module(source, &a)
            .map_err(|e| anyhow!("desktop {i}: load-module {source} {a}: {e}"))?;
        desktops.push(d);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.sink_input_count() < n {
        if Instant::now() > deadline {
            bail!(
                "{kind} x{n}: {} of {n} sink tunnels connected after 30 s\n{}",
                receiver.sink_input_count(),
                receiver.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut rows = Vec::new();
    rows.push(window(kind, n, "idle", secs, &desktops, &receiver));
    let k = n.div_ceil(10);
    let players: Vec<Player> = desktops
        .iter()
        .take(k)
        .map(|d| play_loop(d, "tun", tone_loop(440.0, 660.0, -12.0)))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    rows.push(window(
        kind,
        n,
        &format!("{k} of {n} playing"),
        secs,
        &desktops,
        &receiver,
    ));
    drop(players);
    drop(desktops);
    drop(receiver);
    Ok(rows)
}

fn window(kind: &str, n: usize, phase: &str, secs: u64, desktops: &[Daemon], rx: &Daemon) -> Row {
    let before: Vec<Sample> = desktops.iter().map(|d| sample(d.pid())).collect();
    let rx0 = sample(rx.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<Sample> = desktops.iter().map(|d| sample(d.pid())).collect();
    let rx1 = sample(rx.pid());
    let desktops_ms: f64 = before
        .iter()
        .zip(&after)
        .map(|(a, b)| usage(a, b).ms_per_s)
        .sum();
    let rss: f64 = desktops.iter().map(|d| d.rss_kib() as f64).sum::<f64>() / n as f64 / 1024.0;
    let fd: f64 = desktops.iter().map(|d| fds(d.pid()) as f64).sum::<f64>() / n as f64;
    Row {
        kind: kind.into(),
        n,
        phase: phase.into(),
        desktops_ms,
        receiver_ms: usage(&rx0, &rx1).ms_per_s,
        rss_desktop_mib: rss,
        rss_receiver_mib: rx.rss_kib() as f64 / 1024.0,
        fds_desktop: fd,
        fds_receiver: fds(rx.pid()),
    }
}
