//! Private PulseAudio daemons for tests.

use crate::netem::Netns;
use crate::process::{
    built_module_dir, pid_exists, signal, stdout_or_panic, terminate, Signal, Strays,
};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long [`Daemon::start`] waits for `pactl info` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The stock modules directory of the installed daemon (`pkg-config --variable=modlibexecdir
/// libpulse`).
pub fn stock_module_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("pkg-config")
            .args(["--variable=modlibexecdir", "libpulse"])
            .output()
            .expect("cannot run pkg-config (install pkg-config and libpulse-dev)");
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !dir.is_empty(),
            "pkg-config --variable=modlibexecdir libpulse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(dir)
    })
    .clone()
}

/// Where our built modules are: `$OPUS_TUNNEL_MODULE_DIR`, or `<workspace>/target/modules`.
pub fn module_dir() -> PathBuf {
    built_module_dir("OPUS_TUNNEL_MODULE_DIR", "modules")
}

/// True if every named module (`module-foo`, without `.so`) exists in [`module_dir`].
pub fn modules_present(names: &[&str]) -> bool {
    let dir = module_dir();
    names.iter().all(|n| dir.join(format!("{n}.so")).is_file())
}

/// For tests of our modules: returns `true` if they are built, otherwise prints
/// `SKIP: <test>: ...` and returns `false` (the caller then returns and passes).
/// With `OPUS_TUNNEL_REQUIRE_MODULES=1` (as `scripts/test.sh` sets it) a missing module is a
/// failure instead, so that the suite can never pass by skipping.
pub fn require_modules(test: &str, names: &[&str]) -> bool {
    if modules_present(names) {
        return true;
    }
    let dir = module_dir();
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !dir.join(format!("{n}.so")).is_file())
        .map(|n| format!("{n}.so"))
        .collect();
    println!(
        "SKIP: {test}: {} not found in {} (build the modules or set OPUS_TUNNEL_MODULE_DIR)",
        missing.join(", "),
        dir.display()
    );
    if std::env::var_os("OPUS_TUNNEL_REQUIRE_MODULES").is_some_and(|v| v == "1") {
        panic!(
            "{test}: {} not found in {} and OPUS_TUNNEL_REQUIRE_MODULES=1",
            missing.join(", "),
            dir.display()
        );
    }
    eprintln!("SKIP: {test}: modules not built");
    false
}

/// A free TCP port on 127.0.0.1 (bound to port 0, read, closed). Another process could take
/// it before it is used; good enough on a test machine.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    // Short: the unix socket path must stay under 108 bytes.
    std::env::temp_dir().join(format!("ot-{}-{}", std::process::id(), n))
}

/// Builder for [`Daemon`]: extra `init.pa` lines after the standard ones.
#[derive(Debug, Default, Clone)]
pub struct DaemonBuilder {
    name: String,
    lines: Vec<String>,
    extra_args: Vec<String>,
    conf: Vec<String>,
    netns: Option<Netns>,
}

impl DaemonBuilder {
    /// A name used in messages and the temp dir listing.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// One more line of `init.pa` (e.g. `load-module module-native-protocol-tcp port=4713`),
    /// run after the native socket and the null sink are set up.
    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// Also listen on TCP with the stock native protocol: `module-native-protocol-tcp
    /// port=PORT auth-anonymous=1`.
    pub fn native_tcp(self, port: u16) -> Self {
        self.line(format!(
            "load-module module-native-protocol-tcp port={port} listen=127.0.0.1 auth-anonymous=1"
        ))
    }

    /// One line of the daemon's `daemon.conf` (e.g. `rlimit-nofile = 16384`: what has no
    /// command-line flag).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// An extra command-line argument of `pulseaudio`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Runs the daemon inside the network namespace `ns` (one end of a [`crate::Netem`]):
    /// its TCP and UDP sockets live there, its unix sockets (what `pactl`, `pacat` and
    /// `parec` use) stay reachable from everywhere. Restarts run there too.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    pub fn start(self) -> Result<Daemon> {
        Daemon::start_with(self)
    }
}

/// A private `pulseaudio` process with its own temp dir (`HOME`, runtime and state path),
/// its own unix socket `<dir>/native` and a 48 kHz stereo `module-null-sink` named `null`
/// as default sink. Dropping it stops the process (SIGTERM, then SIGKILL after 3 s) and the
/// `pacat`/`parec` processes spawned against it, and removes the dir.
pub struct Daemon {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// pids of pacat/parec processes spawned against this daemon, killed on drop.
    pub(crate) strays: Strays,
    /// the module dir the daemon searches first
    modules: PathBuf,
    /// the network namespace it runs in (`None`: this process's)
    netns: Option<Netns>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("pid", &self.child.as_ref().map(|c| c.id()))
            .finish()
    }
}

impl Daemon {
    /// A daemon with only the standard setup.
    pub fn start() -> Result<Daemon> {
        DaemonBuilder::default().start()
    }

    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// A daemon named `name` with only the standard setup; panics if it does not start.
    pub fn named(name: &str) -> Daemon {
        Daemon::builder()
            .name(name)
            .start()
            .unwrap_or_else(|e| panic!("{name} daemon: {e:#}"))
    }

    /// Loads our tunnel sink `sink` (`module-tunnel-sink-opus`) toward `127.0.0.1:port`,
    /// playing into the far end's `null`, with `extra` arguments; panics with the log tail if
    /// the load fails. Returns the module index.
    pub fn load_tunnel(&self, sink: &str, port: u16, extra: &str) -> u32 {
        let module = crate::SENDER;
        let args = format!("sink_name={sink} server=tcp:127.0.0.1:{port} sink=null {extra}");
        self.load_module(module, &args).unwrap_or_else(|e| {
            panic!(
                "load-module {module} {args}: {e}\n--- sender log tail ---\n{}",
                self.log_tail(40)
            )
        })
    }

    /// A daemon named `name` running our receiver, `module-opus-protocol-tcp` on
    /// `127.0.0.1:port` into `null`, with `args` added; panics if it does not start.
    pub fn receiver(name: &str, port: u16, args: &str) -> Daemon {
        Daemon::builder()
            .name(name)
            .line(format!(
                "load-module module-opus-protocol-tcp port={port} listen=127.0.0.1 sink=null {args}"
            ))
            .start()
            .unwrap_or_else(|e| {
                panic!("{name} with module-opus-protocol-tcp {args} on port {port}: {e:#}")
            })
    }

    fn start_with(b: DaemonBuilder) -> Result<Daemon> {
        let dir = unique_dir();
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(&dir, 0o700);
        let socket = dir.join("native");
        let mut init = String::new();
        init.push_str(&format!(
            "load-module module-native-protocol-unix socket={} auth-anonymous=1\n",
            socket.display()
        ));
        // The CLI protocol is what `pacmd` talks to (pacmd itself refuses daemons started with
        // --use-pid-file=no): `update-sink-proplist` exists only there.
        init.push_str(&format!(
            "load-module module-cli-protocol-unix socket={}\n",
            dir.join("cli").display()
        ));
        init.push_str("load-module module-null-sink sink_name=null rate=48000 channels=2\n");
        init.push_str("set-default-sink null\n");
        for l in &b.lines {
            init.push_str(l);
            init.push('\n');
        }
        fs::write(dir.join("init.pa"), init)?;
        // Clients must never autospawn a daemon of their own.
        fs::write(dir.join("client.conf"), "autospawn = no\n")?;
        if !b.conf.is_empty() {
            // XDG_CONFIG_HOME is the daemon's own (see `env`).
            let conf_dir = dir.join(".config").join("pulse");
            fs::create_dir_all(&conf_dir)?;
            fs::write(conf_dir.join("daemon.conf"), b.conf.join("\n") + "\n")?;
        }
        let modules = module_dir();
        let mut args = vec![
            "-n".to_string(),
            "-F".to_string(),
            dir.join("init.pa").display().to_string(),
            "--daemonize=no".to_string(),
            "--exit-idle-time=-1".to_string(),
            "--use-pid-file=no".to_string(),
            "--disable-shm=yes".to_string(),
            format!("--log-target=file:{}", dir.join("daemon.log").display()),
            "--log-level=info".to_string(),
            format!(
                "--dl-search-path={}:{}",
                modules.display(),
                stock_module_dir().display()
            ),
        ];
        args.extend(b.extra_args.iter().cloned());
        let name = if b.name.is_empty() {
            dir.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            b.name.clone()
        };
        let mut d = Daemon {
            name,
            dir,
            child: None,
            args,
            strays: Strays::default(),
            modules,
            netns: b.netns.clone(),
        };
        d.spawn()?;
        Ok(d)
    }

    fn env(&self) -> HashMap<&'static str, String> {
        let dir = self.dir.display().to_string();
        let mut env = HashMap::new();
        env.insert("HOME", dir.clone());
        env.insert("PULSE_RUNTIME_PATH", dir.clone());
        env.insert("PULSE_STATE_PATH", dir.clone());
        env.insert("XDG_RUNTIME_DIR", dir.clone());
        env.insert("XDG_CONFIG_HOME", format!("{dir}/.config"));
        env.insert("PULSE_SERVER", format!("unix:{dir}/native"));
        env.insert("PULSE_CLIENTCONFIG", format!("{dir}/client.conf"));
        // No X11/D-Bus autolaunch attempts from the daemon or the clients.
        env.insert("DBUS_SESSION_BUS_ADDRESS", "disabled:".to_string());
        env
    }

    /// A `Command` for a client program (`pactl`, `pacat`, ...) talking to this daemon.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env()).env_remove("DISPLAY");
        c
    }

    fn spawn(&mut self) -> Result<()> {
        let log = self.dir.join("daemon.log");
        // The daemon truncates its log file: keep what an earlier run wrote.
        if log.exists() {
            let mut prev = fs::read_to_string(self.dir.join("daemon.prev.log")).unwrap_or_default();
            prev.push_str(&fs::read_to_string(&log).unwrap_or_default());
            prev.push_str("==== harness: daemon restarted ====\n");
            let _ = fs::write(self.dir.join("daemon.prev.log"), prev);
            let _ = fs::remove_file(&log);
        }
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))?;
        let mut cmd = Command::new("pulseaudio");
        cmd.args(&self.args)
            .envs(self.env())
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = match &self.netns {
            Some(ns) => ns.spawn(&mut cmd),
            None => cmd.spawn().map_err(anyhow::Error::from),
        }
        .context("cannot spawn pulseaudio (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    bail!(
                        "pulseaudio {} exited at start with {status}\n--- log ---\n{}",
                        self.name,
                        self.log()
                    );
                }
            }
            let out = self.pactl(&["info"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.stop();
                bail!(
                    "pulseaudio {} did not answer `pactl info` within {:?}: {}\n--- log ---\n{}",
                    self.name,
                    START_TIMEOUT,
                    String::from_utf8_lossy(&out.stderr),
                    log
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name given to the builder (or the dir name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module dir this daemon searches first.
    pub fn module_dir(&self) -> &Path {
        &self.modules
    }

    /// The network namespace the daemon runs in (`None`: the test's own).
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The daemon's process id (0 if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs one command of PulseAudio's CLI (what `pacmd` would send, e.g.
    /// `update-sink-proplist tun compression.bitrate=16000`) and returns what it printed.
    pub fn cli(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let path = self.dir.join("cli");
        let mut s = match std::os::unix::net::UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        // Not "exit": in PulseAudio's CLI that terminates the daemon. Closing our side ends
        // the session.
        s.write_all(format!("{command}\n").as_bytes())
            .expect("write to the CLI socket");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Runs `pactl ARGS` against this daemon (with a 20 s guard against hangs).
    pub fn pactl(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("pactl");
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_timeout(cmd, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("cannot run pactl {args:?}: {e:#}"))
    }

    /// `pactl ARGS`, panicking with the stderr and the daemon log if it fails; returns stdout.
    pub fn pactl_ok(&self, args: &[&str]) -> String {
        stdout_or_panic(
            self.pactl(args),
            &format!("pactl {args:?} on {}", self.name),
            || format!("--- log tail ---\n{}", self.log_tail(40)),
        )
    }

    /// `pactl load-module NAME ARGS`: the module index, or pactl's stderr.
    pub fn load_module(&self, name: &str, args: &str) -> std::result::Result<u32, String> {
        let mut v = vec!["load-module", name];
        let parts: Vec<&str> = args.split_whitespace().collect();
        v.extend(parts);
        let out = self.pactl(&v);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            return Err(if stderr.is_empty() {
                format!("load-module failed with {}", out.status)
            } else {
                stderr
            });
        }
        stdout
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("load-module printed no index: {stdout:?} {stderr}"))
    }

    /// `pactl unload-module IDX`.
    pub fn unload_module(&self, idx: u32) -> std::result::Result<(), String> {
        let out = self.pactl(&["unload-module", &idx.to_string()]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The process exists (kill(pid, 0), and is no zombie) and answers `pactl info`.
    pub fn is_alive(&self) -> bool {
        let pid = self.pid();
        if pid == 0 {
            return false;
        }
        if !pid_exists(pid) {
            return false;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X")) {
            return false;
        }
        self.pactl(&["info"]).status.success()
    }

    /// Resident set size of the daemon in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid();
        assert!(pid != 0, "daemon {} is not running", self.name);
        let s = fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// The whole daemon log (all restarts).
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(self.dir.join("daemon.prev.log")).unwrap_or_default();
        s.push_str(&fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default());
        let err = fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        if !err.trim().is_empty() {
            s.push_str("--- stderr ---\n");
            s.push_str(&err);
        }
        s
    }

    /// A mark in the current run's log, for [`Daemon::log_since`].
    pub fn log_mark(&self) -> usize {
        fs::metadata(self.dir.join("daemon.log"))
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// What the current run of the daemon logged after `mark` (from [`Daemon::log_mark`]).
    pub fn log_since(&self, mark: usize) -> String {
        let bytes = fs::read(self.dir.join("daemon.log")).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(mark..).unwrap_or(&[])).into_owned()
    }

    /// The last `n` lines of the log, for messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL the daemon now and reap it (a crash, as far as its peers can tell).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again with the same dir and `init.pa` (so the same ports), after
    /// stopping it if it still runs.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(3));
        }
    }

    /// Kills the pacat/parec processes still registered against this daemon.
    pub fn kill_clients(&self) {
        self.strays.kill_all();
    }

    /// Names of the sinks (`pactl list short sinks`).
    pub fn sinks(&self) -> Vec<String> {
        self.pactl_ok(&["list", "short", "sinks"])
            .lines()
            .filter_map(|l| l.split('\t').nth(1).map(str::to_string))
            .collect()
    }

    /// Properties of a sink by name, from `pactl list sinks` (`key = "value"` lines), plus
    /// `State`, `Driver`, `Owner Module` and friends as `key: value` lines.
    pub fn sink_properties(&self, sink: &str) -> Result<HashMap<String, String>> {
        let text = self.pactl_ok(&["list", "sinks"]);
        parse_object(&text, "Sink #", sink)
            .ok_or_else(|| anyhow!("no sink {sink:?} in pactl list sinks:\n{text}"))
    }

    /// Properties of a source by name, from `pactl list sources`, as [`Daemon::sink_properties`].
    pub fn source_properties(&self, source: &str) -> Result<HashMap<String, String>> {
        let text = self.pactl_ok(&["list", "sources"]);
        parse_object(&text, "Source #", source)
            .ok_or_else(|| anyhow!("no source {source:?} in pactl list sources:\n{text}"))
    }

    /// Number of sink-inputs on the daemon.
    pub fn sink_input_count(&self) -> usize {
        self.pactl_ok(&["list", "short", "sink-inputs"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

/// Parses the block of `pactl list` output whose `Name:` is `name`.
fn parse_object(text: &str, header: &str, name: &str) -> Option<HashMap<String, String>> {
    for block in text.split(header).skip(1) {
        let mut map = HashMap::new();
        for line in block.lines() {
            let t = line.trim();
            if let Some((k, v)) = t.split_once(" = ") {
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            } else if let Some((k, v)) = t.split_once(": ") {
                map.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if map.get("Name").map(String::as_str) == Some(name) {
            return Some(map);
        }
    }
    None
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(mode));
}

/// Runs a command to completion, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = child.wait_with_output();
        let _ = tx.send(());
        r
    });
    if rx.recv_timeout(timeout).is_err() {
        // The child is not reaped until wait_with_output returns, so pid is still ours.
        signal(pid, Signal::KILL);
    }
    let out = waiter
        .join()
        .map_err(|_| anyhow!("waiter thread panicked"))??;
    Ok(out)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_clients();
        self.stop();
        if std::thread::panicking() || std::env::var_os("OPUS_TUNNEL_KEEP_DIRS").is_some() {
            eprintln!("daemon {}: dir kept: {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Asserts that neither the sender's nor the receiver's RSS (KiB, `(sender, receiver)`)
/// grew by `limit_kib` or more from `before` to `after`.
pub fn assert_rss_growth_under(before: (u64, u64), after: (u64, u64), limit_kib: u64) {
    for (who, b, a) in [
        ("sender", before.0, after.0),
        ("receiver", before.1, after.1),
    ] {
        assert!(
            a < b + limit_kib,
            "{who} RSS grew {} KiB",
            a as i64 - b as i64
        );
    }
}

/// The last 40 log lines of a sender and of a receiver daemon, for failure messages.
pub fn tunnel_logs(sender: &Daemon, receiver: &Daemon) -> String {
    format!(
        "\n--- sender log tail ---\n{}\n--- receiver log tail ---\n{}",
        sender.log_tail(40),
        receiver.log_tail(40)
    )
}
