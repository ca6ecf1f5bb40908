//! One measured topology: a receiver daemon, a sender daemon with one tunnel sink `tun`, and a
//! byte-counting proxy on the link; plus CPU-time and property readers.

use anyhow::{anyhow, bail, Result};
use opus_tunnel_tests::process::clock_ticks_per_second;
use opus_tunnel_tests::{free_port, CountingProxy, Daemon};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const SENDER: &str = "module-tunnel-sink-opus";
pub const RECEIVER: &str = "module-opus-protocol-tcp";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Ours (`compression=opus` or `compression=none`, given in the sender's arguments).
    Ours,
    /// Stock `module-tunnel-sink-new` → `module-native-protocol-tcp`.
    Stock,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub label: String,
    pub kind: Kind,
    /// Extra arguments of the tunnel sink (sender).
    pub sender_args: String,
    /// Extra arguments of `module-opus-protocol-tcp` (receiver); unused for the stock one.
    pub receiver_args: String,
}

impl Config {
    pub fn ours(label: &str, sender_args: &str, receiver_args: &str) -> Config {
        Config {
            label: label.into(),
            kind: Kind::Ours,
            sender_args: sender_args.into(),
            receiver_args: receiver_args.into(),
        }
    }
    pub fn stock(label: &str) -> Config {
        Config {
            label: label.into(),
            kind: Kind::Stock,
            sender_args: String::new(),
            receiver_args: String::new(),
        }
    }
    /// What is loaded, for the doc.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Ours => {
                let part = |m: &str, a: &str| {
                    if a.trim().is_empty() {
                        format!("`{m}`")
                    } else {
                        format!("`{m} {}`", a.trim())
                    }
                };
                format!(
                    "{} → {}",
                    part(SENDER, &self.sender_args),
                    part(RECEIVER, &self.receiver_args)
                )
            }
            Kind::Stock => "`module-tunnel-sink-new` → `module-native-protocol-tcp`".into(),
        }
    }
}

pub struct Rig {
    pub cfg: Config,
    pub receiver: Daemon,
    pub sender: Daemon,
    pub proxy: CountingProxy,
}

/// CPU time (user + system) of a process in seconds, from /proc/PID/stat (includes the
/// time of its threads, also of threads that have ended).
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based) → indices 11, 12 here.
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let tck = clock_ticks_per_second() as f64;
    (u + st) / if tck > 0.0 { tck } else { 100.0 }
}

/// The properties of every sink-input (`pactl list sink-inputs`), `key = "value"` lines.
pub fn sink_inputs(d: &Daemon) -> Vec<HashMap<String, String>> {
    let text = d.pactl_ok(&["list", "sink-inputs"]);
    parse_blocks(&text, "Sink Input #")
}

/// The properties of every sink (`pactl list sinks`).
pub fn sinks(d: &Daemon) -> Vec<HashMap<String, String>> {
    let text = d.pactl_ok(&["list", "sinks"]);
    parse_blocks(&text, "Sink #")
}

fn parse_blocks(text: &str, head: &str) -> Vec<HashMap<String, String>> {
    text.split(head)
        .skip(1)
        .map(|block| {
            let mut m: HashMap<String, String> = block
                .lines()
                .filter_map(|l| l.trim().split_once(" = "))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            if let Some(idx) = block.lines().next() {
                m.insert("#index".into(), idx.trim().to_string());
            }
            for l in block.lines() {
                if let Some(n) = l.trim().strip_prefix("Name: ") {
                    m.insert("#name".into(), n.to_string());
                }
            }
            m
        })
        .collect()
}

pub fn num(p: &HashMap<String, String>, key: &str) -> f64 {
    p.get(key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Sum of a numeric property over our tunnels' streams on the receiver.
pub fn sum_inputs(d: &Daemon, key: &str) -> f64 {
    sink_inputs(d)
        .iter()
        .filter(|p| p.get("application.name").map(String::as_str) == Some("opus-tunnel"))
        .map(|p| num(p, key))
        .filter(|v| v.is_finite())
        .sum()
}

impl Rig {
    pub fn start(cfg: &Config) -> Result<Rig> {
        let port = free_port();
        // module-suspend-on-idle as in a stock default.pa, on both ends.
        let soi = |who: &str| -> String {
            let v =
                std::env::var("BENCH_SUSPEND_ON_IDLE").unwrap_or_else(|_| "sender,receiver".into());
            if v.split(',').any(|x| x == who) {
                "load-module module-suspend-on-idle".into()
            } else {
                String::new()
            }
        };
        let mut rb = Daemon::builder().name("receiver").line(soi("receiver"));
        rb = match cfg.kind {
            Kind::Ours => rb.line(format!(
                "load-module {RECEIVER} port={port} listen=127.0.0.1 auth-anonymous=1 sink=null {}",
                cfg.receiver_args
            )),
            Kind::Stock => rb.native_tcp(port),
        };
        let receiver = rb.start()?;
        let proxy = CountingProxy::start(port);
        let sender = Daemon::builder()
            .name("sender")
            .line(soi("sender"))
            .start()?;
        let (module, extra) = match cfg.kind {
            Kind::Ours => (SENDER, cfg.sender_args.as_str()),
            Kind::Stock => ("module-tunnel-sink-new", ""),
        };
        let args = format!(
            "sink_name=tun server=tcp:127.0.0.1:{} sink=null {extra}",
            proxy.port()
        );
        sender
            .load_module(module, &args)
            .map_err(|e| anyhow!("load-module {module} {args}: {e}"))?;
        let rig = Rig {
            cfg: cfg.clone(),
            receiver,
            sender,
            proxy,
        };
        rig.wait_connected()?;
        Ok(rig)
    }

    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = match self.cfg.kind {
                Kind::Ours => matches!(
                    self.sender_prop("opus.tunnel.state").as_deref(),
                    Some("idle") | Some("streaming")
                ),
                Kind::Stock => self.receiver.sink_input_count() >= 1,
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: tunnel not connected after 10 s\n--- sender log ---\n{}\n--- receiver log ---\n{}",
                    self.cfg.label,
                    self.sender.log_tail(20),
                    self.receiver.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sender_prop(&self, key: &str) -> Option<String> {
        self.sender.sink_properties("tun").ok()?.get(key).cloned()
    }

    /// (sender, receiver) CPU seconds so far.
    pub fn cpu(&self) -> (f64, f64) {
        (cpu_secs(self.sender.pid()), cpu_secs(self.receiver.pid()))
    }

    /// Bytes on the wire so far, both directions.
    pub fn wire(&self) -> u64 {
        self.proxy.bytes_to_server() + self.proxy.bytes_to_client()
    }

    /// Underruns of our tunnel's stream on the receiver (0 for the stock one, which has no
    /// such counter).
    pub fn underruns(&self) -> f64 {
        match self.cfg.kind {
            Kind::Ours => sum_inputs(&self.receiver, "opus.tunnel.underruns"),
            Kind::Stock => 0.0,
        }
    }
}

/// A measurement window: wall time, CPU of both daemons, bytes on the wire.
pub struct Window {
    t: Instant,
    cpu: (f64, f64),
    wire: u64,
}

pub struct Measured {
    pub secs: f64,
    pub cpu_sender: f64,
    pub cpu_receiver: f64,
    pub bytes: u64,
}

impl Window {
    pub fn open(rig: &Rig) -> Window {
        Window {
            t: Instant::now(),
            cpu: rig.cpu(),
            wire: rig.wire(),
        }
    }
    pub fn close(self, rig: &Rig) -> Measured {
        let (s, r) = rig.cpu();
        Measured {
            secs: self.t.elapsed().as_secs_f64(),
            cpu_sender: s - self.cpu.0,
            cpu_receiver: r - self.cpu.1,
            bytes: rig.wire() - self.wire,
        }
    }
}

impl Measured {
    pub fn kbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1000.0
    }
}
