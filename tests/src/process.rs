//! Processes of the harness: signals, existence, CPU clock ticks, the stray `pacat`/`parec`
//! registry of a daemon, and the built-module directories. Safe wrappers only (rustix).

use rustix::process::{kill_process, kill_process_group, test_kill_process, Pid};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Sends `sig` to process `pid`; errors (the process is gone) are ignored.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = kill_process(p, sig);
    }
}

/// Sends `sig` to the process group led by `pgid`; errors (the group is gone) are ignored.
pub fn signal_group(pgid: u32, sig: Signal) {
    if let Some(p) = pid_of(pgid) {
        let _ = kill_process_group(p, sig);
    }
}

/// Stops the processes `pids` (SIGSTOP) for `dur`, then lets them go on (SIGCONT): a stall of
/// the host as they see it (a hypervisor taking the CPU), their clocks running on.
pub fn stall(pids: &[u32], dur: Duration) {
    pids.iter().for_each(|&p| signal(p, Signal::STOP));
    std::thread::sleep(dur);
    pids.iter().for_each(|&p| signal(p, Signal::CONT));
}

/// True if a process `pid` exists (`kill(pid, 0)`; a zombie still counts).
pub fn pid_exists(pid: u32) -> bool {
    pid_of(pid).is_some_and(|p| test_kill_process(p).is_ok())
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the times in
/// `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// The stdout of a finished command; if it failed, panics naming it (`what`) with its stderr
/// and `logs()`.
pub fn stdout_or_panic(out: Output, what: &str, logs: impl FnOnce() -> String) -> String {
    if !out.status.success() {
        panic!(
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SIGTERM `child`, wait up to `grace` for it to exit, then SIGKILL; always reaps. Returns the
/// exit status if it could be had.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    signal(child.id(), Signal::TERM);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// The pids of the `pacat`/`parec` processes spawned against one daemon, so that the daemon
/// can kill those still running when it stops. A client unregisters before it reaps its
/// process, so a registered pid is never a recycled one.
#[derive(Clone, Debug, Default)]
pub struct Strays(Arc<Mutex<Vec<u32>>>);

impl Strays {
    pub fn register(&self, pid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.push(pid);
        }
    }

    pub fn unregister(&self, pid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|p| *p != pid);
        }
    }

    /// Unregisters `child`, kills it and reaps it (nothing if `None`).
    pub fn kill_child(&self, child: Option<Child>) {
        if let Some(mut c) = child {
            self.unregister(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs every registered process and forgets them.
    pub fn kill_all(&self) {
        let pids: Vec<u32> = match self.0.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for pid in pids {
            signal(pid, Signal::KILL);
        }
    }
}

/// A directory of built modules: `$<env>` if set and not empty, else `<workspace>/target/<sub>`.
pub fn built_module_dir(env: &str, sub: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(env) {
        if !dir.is_empty() {
            return PathBuf::from(dir);
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join(sub)
}
