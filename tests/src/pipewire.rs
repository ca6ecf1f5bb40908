//! A private, headless PipeWire for tests: `pipewire -c <our config>` with its own
//! `XDG_RUNTIME_DIR`, the Dummy and Freewheel drivers, a 48 kHz stereo null sink named `null`,
//! PipeWire's pulse server at `<dir>/pulse/native` (so `pactl`/`pacat`/`parec` work with
//! `PULSE_SERVER`), and WirePlumber under `dbus-run-session` (it links streams to the default
//! sink). Our modules are found through `PIPEWIRE_MODULE_DIR=<pw module dir>:<stock dir>`.
//! Dropping it stops WirePlumber's process group and the daemon by pid.

use crate::netem::Netns;
use crate::process::{built_module_dir, signal_group, stdout_or_panic, terminate, Signal, Strays};
use crate::signal::{pacat_into, Player, Recorder};
use anyhow::{bail, Context as _, Result};
use std::collections::HashMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the built PipeWire modules are: `$OPUS_TUNNEL_PW_MODULE_DIR`, or
/// `<workspace>/target/pipewire-modules` (scripts/build-pipewire-modules.sh).
pub fn pw_module_dir() -> PathBuf {
    built_module_dir("OPUS_TUNNEL_PW_MODULE_DIR", "pipewire-modules")
}

/// PipeWire's own module directory (`pkg-config --variable=moduledir libpipewire-0.3`).
pub fn pw_stock_module_dir() -> Option<PathBuf> {
    let out = Command::new("pkg-config")
        .args(["--variable=moduledir", "libpipewire-0.3"])
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// For tests of the PipeWire modules: `true` if the named modules are built and PipeWire,
/// WirePlumber and dbus-run-session are installed; otherwise prints `SKIP: ...` and returns
/// `false` (with `OPUS_TUNNEL_REQUIRE_MODULES=1`, panics instead).
pub fn require_pw_modules(test: &str, names: &[&str]) -> bool {
    let dir = pw_module_dir();
    let mut missing: Vec<String> = names
        .iter()
        .filter(|n| !dir.join(format!("{n}.so")).is_file())
        .map(|n| format!("{}/{n}.so", dir.display()))
        .collect();
    for p in ["pipewire", "wireplumber", "dbus-run-session", "pw-dump"] {
        if !have(p) {
            missing.push(format!("program {p}"));
        }
    }
    if pw_stock_module_dir().is_none() {
        missing.push("pkg-config libpipewire-0.3".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIP: {test}: {} missing (scripts/build-pipewire-modules.sh; packages from scripts/install-deps.sh)",
        missing.join(", ")
    );
    println!("{msg}");
    if std::env::var_os("OPUS_TUNNEL_REQUIRE_MODULES").is_some_and(|v| v == "1") {
        panic!(
            "{test}: {} and OPUS_TUNNEL_REQUIRE_MODULES=1",
            missing.join(", ")
        );
    }
    eprintln!("{msg}");
    false
}

fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("otpw-{}-{}", std::process::id(), n))
}

/// A private PipeWire daemon with WirePlumber.
pub struct PipeWire {
    name: String,
    dir: PathBuf,
    daemon: Option<Child>,
    session: Option<Child>,
    status: Option<ExitStatus>,
    strays: Strays,
    /// the network namespace the daemon runs in (`None`: this process's)
    netns: Option<Netns>,
}

/// Builder: `context.modules` entries of ours after the standard ones.
#[derive(Default)]
pub struct PipeWireBuilder {
    name: String,
    modules: Vec<String>,
    netns: Option<Netns>,
}

impl PipeWireBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// One more `context.modules` entry: `{ name = NAME args = { ARGS } }`.
    pub fn module(mut self, name: &str, args: &str) -> Self {
        self.modules
            .push(format!("    {{ name = {name} args = {{ {args} }} }}"));
        self
    }

    /// Runs the `pipewire` daemon (whose modules open the network sockets) inside the network
    /// namespace `ns`, one end of a [`crate::Netem`]; its unix sockets and WirePlumber stay
    /// reachable from everywhere. Restarts run there too.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    pub fn start(self) -> Result<PipeWire> {
        PipeWire::start_with(self)
    }
}

/// The daemon's configuration: the stock one's parts that a headless test needs. The data
/// thread runs at real-time priority as in the stock configuration (`libpipewire-module-rt`):
/// without it, any busy thread on the machine can hold up a 256-frame (5.3 ms) graph cycle,
/// and the cycle plays silence for every node that did not finish.
fn config(modules: &[String]) -> String {
    format!(
        r#"context.properties = {{
    support.dbus = false
    core.daemon = true
    core.name = pipewire-0
    default.clock.rate = 48000
    mem.allow-mlock = false
    mem.warn-mlock = false
    log.level = 3
}}
context.spa-libs = {{
    audio.convert.* = audioconvert/libspa-audioconvert
    support.*       = support/libspa-support
}}
context.modules = [
    {{ name = libpipewire-module-rt args = {{ nice.level = -11 }} flags = [ ifexists nofail ] }}
    {{ name = libpipewire-module-protocol-native }}
    {{ name = libpipewire-module-metadata }}
    {{ name = libpipewire-module-access args = {{ }} }}
    {{ name = libpipewire-module-spa-device-factory }}
    {{ name = libpipewire-module-spa-node-factory }}
    {{ name = libpipewire-module-client-node }}
    {{ name = libpipewire-module-client-device }}
    {{ name = libpipewire-module-adapter }}
    {{ name = libpipewire-module-link-factory }}
    {{ name = libpipewire-module-session-manager }}
    {{ name = libpipewire-module-protocol-pulse args = {{ server.address = [ "unix:native" ] }} }}
{}
]
context.objects = [
    {{ factory = spa-node-factory args = {{ factory.name = support.node.driver node.name = Dummy-Driver node.group = pipewire.dummy priority.driver = 20000 }} }}
    {{ factory = spa-node-factory args = {{ factory.name = support.node.driver node.name = Freewheel-Driver priority.driver = 19000 node.group = pipewire.freewheel node.freewheel = true }} }}
    {{ factory = adapter args = {{ factory.name = support.null-audio-sink node.name = "null" node.description = "Null sink" media.class = Audio/Sink audio.position = [ FL FR ] audio.rate = 48000 monitor.channel-volumes = true object.linger = true priority.session = 2000 priority.driver = 2000 }} }}
]
"#,
        modules.join("\n")
    )
}

impl PipeWire {
    pub fn builder() -> PipeWireBuilder {
        PipeWireBuilder::default()
    }

    fn start_with(b: PipeWireBuilder) -> Result<PipeWire> {
        let dir = unique_dir();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("home"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        fs::write(dir.join("pipewire.conf"), config(&b.modules))?;
        fs::write(dir.join("client.conf"), "autospawn = no\n")?;
        let name = if b.name.is_empty() {
            "pipewire".to_string()
        } else {
            b.name
        };
        let mut pw = PipeWire {
            name,
            dir,
            daemon: None,
            session: None,
            status: None,
            strays: Strays::default(),
            netns: b.netns,
        };
        pw.spawn()?;
        Ok(pw)
    }

    fn env(&self) -> HashMap<&'static str, String> {
        let dir = self.dir.display().to_string();
        HashMap::from([
            ("XDG_RUNTIME_DIR", dir.clone()),
            ("HOME", format!("{dir}/home")),
            ("XDG_CONFIG_HOME", format!("{dir}/home/.config")),
            ("XDG_STATE_HOME", format!("{dir}/home/.state")),
            ("PULSE_SERVER", format!("unix:{dir}/pulse/native")),
            ("PULSE_CLIENTCONFIG", format!("{dir}/client.conf")),
            ("PULSE_RUNTIME_PATH", format!("{dir}/pulse")),
        ])
    }

    /// A client program (`pactl`, `pacat`, `pw-dump`, ...) talking to this daemon.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env())
            .env_remove("DISPLAY")
            .env_remove("PIPEWIRE_REMOTE")
            .env("DBUS_SESSION_BUS_ADDRESS", "disabled:");
        c
    }

    fn spawn(&mut self) -> Result<()> {
        let stock = pw_stock_module_dir().context("pkg-config libpipewire-0.3")?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pipewire.log"))?;
        let mut cmd = self.command("pipewire");
        cmd.args(["-c", &self.dir.join("pipewire.conf").display().to_string()])
            .env(
                "PIPEWIRE_MODULE_DIR",
                format!("{}:{}", pw_module_dir().display(), stock.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let daemon = match &self.netns {
            Some(ns) => ns.spawn(&mut cmd),
            None => cmd.spawn().map_err(anyhow::Error::from),
        }
        .context("cannot spawn pipewire")?;
        self.daemon = Some(daemon);
        self.status = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dir.join("pipewire-0").exists() || !self.dir.join("pulse/native").exists() {
            if let Some(st) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.daemon = None;
                bail!(
                    "pipewire {} exited at start with {st}\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "pipewire {} did not come up in 10 s\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let wp_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("wireplumber.log"))?;
        let mut wp = Command::new("dbus-run-session");
        wp.args(["--", "wireplumber"])
            .envs(self.env())
            .env_remove("DISPLAY")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(wp_log.try_clone()?))
            .stderr(Stdio::from(wp_log));
        self.session = Some(
            wp.spawn()
                .context("cannot spawn dbus-run-session wireplumber")?,
        );
        // Ready when the session manager has chosen the default sink.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.pactl(&["info"]);
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.contains("Default Sink: null") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pipewire {}: no default sink after 15 s ({})\n{}",
                    self.name,
                    text.trim(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's pid (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn is_alive(&mut self) -> bool {
        match self.daemon.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(st))) => {
                self.status = Some(st);
                self.daemon = None;
                false
            }
            _ => false,
        }
    }

    /// Graph cycles that PipeWire logged as not finished in time ("client too slow", one
    /// line per late node of the cycle, counted once per cycle): the daemon's data thread was
    /// held up, and the graph played a quantum of silence, whatever each node made.
    pub fn graph_xruns(&self) -> usize {
        xrun_cycles(&fs::read_to_string(self.dir.join("pipewire.log")).unwrap_or_default())
    }

    /// The daemon's log (stderr) and WirePlumber's.
    pub fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.join("pipewire.log")).unwrap_or_default();
        // A graph cycle that a node did not finish in time plays a quantum of silence:
        // PipeWire logs it at info level; every such line, wherever it is in the log.
        let xruns: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("client too slow") || l.contains("missed"))
            .collect();
        format!(
            "--- {} graph xruns: {} cycles ---\n{}\n--- {} pipewire.log ---\n{}\n--- wireplumber.log (tail) ---\n{}",
            self.name,
            xrun_cycles(&log),
            xruns.join("\n"),
            self.name,
            tail(&log, 60),
            tail(
                &fs::read_to_string(self.dir.join("wireplumber.log")).unwrap_or_default(),
                15
            )
        )
    }

    /// `pactl ARGS` through PipeWire's pulse server (20 s guard).
    pub fn pactl(&self, args: &[&str]) -> Output {
        let mut c = self.command("timeout");
        c.arg("20").arg("pactl").args(args);
        c.stdin(Stdio::null()).output().expect("run pactl")
    }

    /// `pactl ARGS`, panicking with the logs if it fails; returns stdout.
    pub fn pactl_ok(&self, args: &[&str]) -> String {
        stdout_or_panic(
            self.pactl(args),
            &format!("pactl {args:?} on {}", self.name),
            || self.log(),
        )
    }

    /// `pw-dump` (10 s guard).
    pub fn pw_dump(&self) -> String {
        let out = self
            .command("timeout")
            .args(["10", "pw-dump"])
            .stdin(Stdio::null())
            .output()
            .expect("run pw-dump");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The output ports, one name a line as `pw-link -o` lists them (10 s guard; empty if it
    /// fails).
    pub fn output_ports(&self) -> Vec<String> {
        self.command("timeout")
            .args(["10", "pw-link", "-o"])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `props` of the node whose `node.name` is `node` (as `pw-dump` shows them; values
    /// without their JSON quotes).
    pub fn node_props(&self, node: &str) -> Option<HashMap<String, String>> {
        node_props_in(&self.pw_dump(), |p| {
            p.get("node.name").map(String::as_str) == Some(node)
        })
    }

    /// The props of every node with `key` = `value`.
    pub fn nodes_where(&self, key: &str, value: &str) -> Vec<HashMap<String, String>> {
        let dump = self.pw_dump();
        all_props(&dump)
            .into_iter()
            .filter(|p| p.get(key).map(String::as_str) == Some(value))
            .collect()
    }

    /// The global id of the module named `name` (e.g. `libpipewire-module-opus-tunnel`).
    pub fn module_id(&self, name: &str) -> Option<u32> {
        let dump = self.pw_dump();
        let needle = format!("\"name\": \"{name}\"");
        let at = dump.find(&needle)?;
        let before = &dump[..at];
        let id_at = before.rfind("\"id\": ")?;
        before[id_at + 6..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// `pw-cli destroy ID` (10 s guard): unloads a module or removes an object in the daemon.
    pub fn destroy(&self, id: u32) -> Output {
        self.command("timeout")
            .args(["10", "pw-cli", "destroy", &id.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run pw-cli")
    }

    /// SIGTERM the daemon and wait for it (5 s, then SIGKILL); returns its exit status.
    /// WirePlumber's process group goes too.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.kill_clients();
        if let Some(mut c) = self.daemon.take() {
            self.status = terminate(&mut c, Duration::from_secs(5));
        }
        if let Some(mut s) = self.session.take() {
            // The group of our own child (process_group(0) made it the leader).
            let pgid = s.id();
            signal_group(pgid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = s.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Harmless if the group is gone.
            signal_group(pgid, Signal::KILL);
            let _ = s.wait();
        }
        self.status
    }

    /// Starts the daemon (and WirePlumber) again with the same dir and config.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let _ = fs::remove_file(self.dir.join("pipewire-0"));
        let _ = fs::remove_file(self.dir.join("pipewire-0.lock"));
        let _ = fs::remove_dir_all(self.dir.join("pulse"));
        self.spawn()
    }

    fn kill_clients(&self) {
        self.strays.kill_all();
    }

    /// Plays `samples` (s16le 48 kHz stereo) into `sink` through the pulse server, over and
    /// over until the player is dropped.
    pub fn play_loop(&self, sink: &str, samples: Vec<i16>) -> PwPlayer {
        Player::looping(
            pacat_into(self.command("pacat"), sink),
            &self.strays,
            samples,
        )
    }

    /// Records `source` (e.g. `null.monitor`) through the pulse server; waits (15 s at most)
    /// for its first audio.
    pub fn recorder(&self, source: &str) -> PwRecorder {
        let mut r = Recorder::spawn(self.command("parec"), &self.strays, source);
        // A freshly (re)started daemon's session manager can take several seconds to link a
        // new stream on a loaded machine.
        if let Err(e) = r.first_audio(Duration::from_secs(15)) {
            panic!(
                "parec on {source} of {} delivered nothing in 15 s ({e})\n{}",
                self.name,
                self.log()
            );
        }
        r
    }
}

impl Drop for PipeWire {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() || std::env::var_os("OPUS_TUNNEL_KEEP_DIRS").is_some() {
            eprintln!("pipewire {}: dir kept: {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The graph cycles a PipeWire log names as not finished in time ("client too slow", one line
/// per late node of a cycle, all with the cycle's `pos:`).
fn xrun_cycles(log: &str) -> usize {
    let mut cycles: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client too slow"))
        .filter_map(|l| l.split(" pos:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    cycles.dedup();
    cycles.len()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every `"props": { ... }` object of a pw-dump, as flat maps.
fn all_props(dump: &str) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    let mut rest = dump;
    while let Some(at) = rest.find("\"props\": {") {
        let body = &rest[at + 10..];
        let mut depth = 1;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut map = HashMap::new();
        for line in body[..end].lines() {
            let t = line.trim().trim_end_matches(',');
            if let Some((k, v)) = t.split_once("\": ") {
                let k = k.trim_start_matches('"').to_string();
                map.insert(k, v.trim().trim_matches('"').to_string());
            }
        }
        out.push(map);
        rest = &body[end..];
    }
    out
}

fn node_props_in(
    dump: &str,
    pick: impl Fn(&HashMap<String, String>) -> bool,
) -> Option<HashMap<String, String>> {
    all_props(dump).into_iter().find(|p| pick(p))
}

/// A running `pacat` on a PipeWire's pulse server (the same as on a PulseAudio daemon).
pub type PwPlayer = Player;

/// A running `parec` on a PipeWire's pulse server (the same as on a PulseAudio daemon).
pub type PwRecorder = Recorder;

#[cfg(test)]
mod tests {
    use super::xrun_cycles;

    /// One missed cycle names each late node on a line of its own; two cycles count two.
    #[test]
    fn xrun_cycles_counts_cycles_not_nodes() {
        let log = "\
[I][00875.480912] pw.node | [ impl-node.c: 1058 dump_states()] (rec-33) client too slow! rate:256/48000 pos:171520 status:triggered
[I][00875.480922] pw.node | [ impl-node.c: 1058 dump_states()] (tun-48) client too slow! rate:256/48000 pos:171520 status:triggered
[I][00875.480975] pw.node | [ impl-node.c: 1203 node_on_fd_events()] (rec-0) client missed 1 wakeups
[I][00876.100000] pw.node | [ impl-node.c: 1058 dump_states()] (tun-48) client too slow! rate:256/48000 pos:201216 status:triggered
";
        assert_eq!(xrun_cycles(log), 2);
        assert_eq!(xrun_cycles("[I] nothing late here\n"), 0);
    }
}
