//! `status`: the tunnel sinks (sinks with an `opus.tunnel.server` property) through libpulse's
//! introspection (libpulse-binding), formatted for people.

use anyhow::{anyhow, bail, Result};
use libpulse_binding as pulse;
use pulse::callbacks::ListResult;
use pulse::context::{Context, FlagSet, State};
use pulse::def::SinkState;
use pulse::mainloop::standard::{IterateResult, Mainloop};
use pulse::operation::{Operation, State as OpState};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::Duration;

/// One tunnel sink as the daemon describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tunnel {
    pub name: String,
    pub index: u32,
    /// The sink's own state (running, idle, suspended).
    pub sink_state: String,
    /// The latency the sink reports (what players use for A/V sync), µs.
    pub latency_usec: u64,
    /// `compression*` and `opus.tunnel.*` properties.
    pub props: BTreeMap<String, String>,
}

fn sink_state(s: SinkState) -> &'static str {
    match s {
        SinkState::Running => "running",
        SinkState::Idle => "idle",
        SinkState::Suspended => "suspended",
        _ => "unknown",
    }
}

/// A connection to the daemon on a standard main loop that we iterate ourselves.
/// (Field order matters: the context must go before its main loop.)
struct Client {
    context: Context,
    mainloop: Mainloop,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.context.disconnect();
    }
}

impl Client {
    fn connect(server: Option<&str>) -> Result<Client> {
        let mut mainloop = Mainloop::new().ok_or_else(|| anyhow!("cannot create a main loop"))?;
        let mut context = Context::new(&mainloop, "opus-tunnel-ctl")
            .ok_or_else(|| anyhow!("cannot create a PulseAudio context"))?;
        let which = server.map(|s| format!(" {s}")).unwrap_or_default();
        // (The binding's error here carries pa_context_connect's -1, not the reason: ask
        // the context.)
        if context.connect(server, FlagSet::NOAUTOSPAWN, None).is_err() {
            bail!(
                "cannot connect to the sound server{which}: {}",
                context.errno()
            );
        }
        loop {
            match context.get_state() {
                State::Ready => break,
                State::Failed | State::Terminated => bail!(
                    "cannot connect to the sound server{which}: {}",
                    context.errno()
                ),
                _ => iterate(&mut mainloop)?,
            }
        }
        Ok(Client { context, mainloop })
    }

    fn wait<T: ?Sized>(&mut self, op: &Operation<T>) -> Result<()> {
        while op.get_state() == OpState::Running {
            iterate(&mut self.mainloop)?;
            if matches!(self.context.get_state(), State::Failed | State::Terminated) {
                bail!("connection lost: {}", self.context.errno());
            }
        }
        Ok(())
    }

    /// Every sink with an `opus.tunnel.server` property, by index.
    fn tunnels(&mut self) -> Result<Vec<Tunnel>> {
        let found: Rc<RefCell<Vec<Tunnel>>> = Rc::default();
        let failed = Rc::new(RefCell::new(false));
        let (f2, e2) = (found.clone(), failed.clone());
        let op = self
            .context
            .introspect()
            .get_sink_info_list(move |r| match r {
                ListResult::Item(info) => {
                    if info.proplist.get_str("opus.tunnel.server").is_none() {
                        return;
                    }
                    let props = info
                        .proplist
                        .iter()
                        .filter(|k| k.starts_with("compression") || k.starts_with("opus.tunnel."))
                        .filter_map(|k| info.proplist.get_str(&k).map(|v| (k, v)))
                        .collect();
                    f2.borrow_mut().push(Tunnel {
                        name: info.name.as_deref().unwrap_or("").to_string(),
                        index: info.index,
                        sink_state: sink_state(info.state).to_string(),
                        latency_usec: info.latency.0,
                        props,
                    });
                }
                ListResult::End => {}
                ListResult::Error => *e2.borrow_mut() = true,
            });
        self.wait(&op)?;
        if *failed.borrow() {
            bail!("listing sinks failed: {}", self.context.errno());
        }
        let mut v = found.take();
        v.sort_by_key(|t| t.index);
        Ok(v)
    }
}

fn iterate(mainloop: &mut Mainloop) -> Result<()> {
    match mainloop.iterate(true) {
        IterateResult::Success(_) => Ok(()),
        IterateResult::Quit(_) => bail!("the main loop quit"),
        IterateResult::Err(e) => bail!("the main loop failed: {e}"),
    }
}

fn num(t: &Tunnel, key: &str) -> Option<f64> {
    t.props.get(key).and_then(|v| v.trim().parse().ok())
}

fn text<'a>(t: &'a Tunnel, key: &str) -> &'a str {
    t.props.get(key).map(String::as_str).unwrap_or("?")
}

fn ms(usec: Option<f64>) -> String {
    usec.map_or("?".into(), |u| format!("{:.1} ms", u / 1000.0))
}

fn count(t: &Tunnel, key: &str) -> String {
    num(t, key).map_or("?".into(), |v| format!("{v:.0}"))
}

fn bytes(n: Option<f64>) -> String {
    match n {
        None => "?".into(),
        Some(b) if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        Some(b) if b >= 1e6 => format!("{:.2} MB", b / 1e6),
        Some(b) if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        Some(b) => format!("{b:.0} B"),
    }
}

fn on_off(t: &Tunnel, key: &str) -> &'static str {
    match t.props.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if ["1", "yes", "y", "true", "on"].contains(&v.as_str()) => "on",
        Some(_) => "off",
        None => "?",
    }
}

/// The human-readable block for one tunnel.
pub fn format_tunnel(t: &Tunnel) -> String {
    let mut s = String::new();
    let state = t
        .props
        .get("opus.tunnel.state")
        .map(String::as_str)
        .unwrap_or("unknown");
    s.push_str(&format!(
        "{} (sink #{}): {state} (sink {})\n",
        t.name, t.index, t.sink_state
    ));
    let remote = t
        .props
        .get("opus.tunnel.remote_sink")
        .filter(|v| !v.is_empty())
        .map(String::as_str)
        .unwrap_or("(receiver's default)");
    s.push_str(&format!(
        "  server      {} → sink {remote}\n",
        text(t, "opus.tunnel.server")
    ));
    let encryption = match t.props.get("opus.tunnel.encryption").map(String::as_str) {
        Some("none") => "none (CLEARTEXT)".to_string(),
        Some(p) => p.to_string(),
        None => "? (a module without encryption)".to_string(),
    };
    s.push_str(&format!("  encryption  {encryption}\n"));
    match t.props.get("opus.tunnel.transport").map(String::as_str) {
        Some("udp") => s.push_str(&format!(
            "  transport   udp: loss {} % (last second), packets lost {}, recovered by FEC {}, by parity {}, sent again {} (in time {})\n",
            count(t, "opus.tunnel.remote.loss_pct"),
            count(t, "opus.tunnel.remote.packets_lost"),
            count(t, "opus.tunnel.remote.fec_frames"),
            count(t, "opus.tunnel.remote.parity_frames"),
            count(t, "opus.tunnel.repairs_sent"),
            count(t, "opus.tunnel.remote.repaired_frames"),
        )),
        Some(tr) => s.push_str(&format!("  transport   {tr}\n")),
        None => {}
    }
    s.push_str(&format!(
        "  bitrate     {} on the wire; sent {} in {} packets\n",
        num(t, "opus.tunnel.bitrate").map_or("?".into(), |b| format!("{:.1} kbit/s", b / 1000.0)),
        bytes(num(t, "opus.tunnel.bytes_sent")),
        count(t, "opus.tunnel.packets_sent"),
    ));
    let mut latency = format!(
        "  latency     sink reports {}",
        ms(Some(t.latency_usec as f64))
    );
    if let Some(e2e) = num(t, "opus.tunnel.latency_usec") {
        latency.push_str(&format!(", end to end {}", ms(Some(e2e))));
    }
    latency.push_str(&format!(
        ", receiver buffer {}\n",
        ms(num(t, "opus.tunnel.remote.latency_usec"))
    ));
    s.push_str(&latency);
    let mut health = format!(
        "  health      reconnects {}, remote underruns {}, PLC frames {}, dropped frames {}, overruns {}",
        count(t, "opus.tunnel.reconnects"),
        count(t, "opus.tunnel.remote.underruns"),
        count(t, "opus.tunnel.remote.plc_frames"),
        count(t, "opus.tunnel.dropped_frames"),
        count(t, "opus.tunnel.overruns"),
    );
    if let Some(d) = num(t, "opus.tunnel.remote.drift_ppm") {
        health.push_str(&format!(", drift {d:+.1} ppm"));
    }
    health.push('\n');
    s.push_str(&health);
    let compression = text(t, "compression");
    if compression == "none" {
        s.push_str(&format!(
            "  codec       PCM (L16), {} ms frames\n",
            text(t, "compression.frame_size")
        ));
    } else {
        s.push_str(&format!(
            "  codec       {compression} {}, {} ms frames, complexity {}, {}, signal {}, application {}\n",
            num(t, "compression.bitrate").map_or("?".into(), |b| format!("{:.0} kbit/s", b / 1000.0)),
            text(t, "compression.frame_size"),
            text(t, "compression.opus.complexity"),
            text(t, "compression.opus.max_bandwidth"),
            text(t, "compression.opus.signal"),
            text(t, "compression.opus.application"),
        ));
        s.push_str(&format!(
            "              vbr {} (constrained {}), fec {}, expected loss {}%, dtx {}, lsb depth {}\n",
            on_off(t, "compression.opus.vbr"),
            on_off(t, "compression.opus.vbr_constraint"),
            on_off(t, "compression.opus.fec"),
            text(t, "compression.opus.packet_loss"),
            on_off(t, "compression.opus.dtx"),
            text(t, "compression.opus.lsb_depth"),
        ));
    }
    s
}

/// The whole report: every tunnel, or a line saying there is none.
pub fn format_all(tunnels: &[Tunnel]) -> String {
    if tunnels.is_empty() {
        return "no Opus tunnel sinks (load module-tunnel-sink-opus)\n".into();
    }
    tunnels
        .iter()
        .map(format_tunnel)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `status` and `status --watch`.
pub fn run(server: Option<&str>, watch: bool) -> Result<()> {
    let mut client = Client::connect(server)?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let report = format_all(&client.tunnels()?);
        let mut out = std::io::stdout().lock();
        if watch && tty {
            // Home, clear screen: a display that refreshes in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{report}")?;
        if !watch {
            return Ok(());
        }
        if !tty {
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_streaming_tunnel() {
        let props: BTreeMap<String, String> = [
            ("opus.tunnel.state", "streaming"),
            ("opus.tunnel.server", "tcp:10.0.0.2:4715"),
            ("opus.tunnel.remote_sink", "speakers"),
            (
                "opus.tunnel.encryption",
                "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
            ),
            ("opus.tunnel.bitrate", "69827"),
            ("opus.tunnel.bytes_sent", "1234567"),
            ("opus.tunnel.packets_sent", "2500"),
            ("opus.tunnel.reconnects", "1"),
            ("opus.tunnel.remote.latency_usec", "61234"),
            ("opus.tunnel.remote.underruns", "0"),
            ("compression", "opus"),
            ("compression.bitrate", "64000"),
            ("compression.frame_size", "20"),
            ("compression.opus.complexity", "10"),
            ("compression.opus.max_bandwidth", "fullband"),
            ("compression.opus.fec", "true"),
            ("opus.tunnel.transport", "udp"),
            ("opus.tunnel.remote.loss_pct", "2"),
            ("opus.tunnel.remote.packets_lost", "61"),
            ("opus.tunnel.remote.fec_frames", "20"),
            ("opus.tunnel.remote.parity_frames", "9"),
            ("opus.tunnel.repairs_sent", "14"),
            ("opus.tunnel.remote.repaired_frames", "12"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t = Tunnel {
            name: "tun".into(),
            index: 3,
            sink_state: "running".into(),
            latency_usec: 95_000,
            props,
        };
        let s = format_tunnel(&t);
        assert!(s.starts_with("tun (sink #3): streaming"), "{s}");
        assert!(s.contains("tcp:10.0.0.2:4715 → sink speakers"), "{s}");
        assert!(
            s.contains(
                "  transport   udp: loss 2 % (last second), packets lost 61, recovered by FEC 20, by parity 9, sent again 14 (in time 12)\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("  encryption  Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s\n"),
            "{s}"
        );
        assert!(s.contains("69.8 kbit/s on the wire"), "{s}");
        assert!(s.contains("1.23 MB in 2500 packets"), "{s}");
        assert!(s.contains("sink reports 95.0 ms"), "{s}");
        assert!(s.contains("receiver buffer 61.2 ms"), "{s}");
        assert!(s.contains("reconnects 1, remote underruns 0"), "{s}");
        assert!(
            s.contains("opus 64 kbit/s, 20 ms frames, complexity 10, fullband"),
            "{s}"
        );
        assert!(s.contains("fec on"), "{s}");
        // Missing figures read "?", not 0.
        assert!(s.contains("PLC frames ?"), "{s}");
        assert_eq!(format_all(&[]).lines().count(), 1);
    }
}
