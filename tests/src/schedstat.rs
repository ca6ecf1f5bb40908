//! CPU time per thread from `/proc/PID/task/TID/schedstat` (nanoseconds on the CPU), for
//! measurements finer than `/proc/PID/stat`'s 10 ms ticks: idle tunnels cost fractions of a
//! millisecond per second.
use std::collections::BTreeMap;
use std::time::Instant;

/// One reading of a process's threads: thread id → (name, ns on the CPU so far).
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    threads: BTreeMap<u32, (String, u64)>,
}

/// Reads every thread of `pid` now. A process that is gone reads as no threads.
pub fn sample(pid: u32) -> Sample {
    let mut threads = BTreeMap::new();
    let dir = format!("/proc/{pid}/task");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            let name = std::fs::read_to_string(e.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if let Some(ns) = ns {
                threads.insert(tid, (name, ns));
            }
        }
    }
    Sample {
        at: Instant::now(),
        threads,
    }
}

/// CPU spent between two samples of one process.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Seconds between the samples.
    pub secs: f64,
    /// Total CPU of the threads alive at the end, ms per second (threads that ended between
    /// the samples are not counted; threads that began count from zero).
    pub ms_per_s: f64,
    /// Per thread name (threads of one name summed), ms per second, largest first.
    pub by_thread: Vec<(String, f64)>,
}

/// The CPU the process used from `before` to `after`.
pub fn usage(before: &Sample, after: &Sample) -> Usage {
    let secs = after
        .at
        .saturating_duration_since(before.at)
        .as_secs_f64()
        .max(1e-9);
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for (tid, (name, ns)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, n)| *n);
        let d = ns.saturating_sub(was);
        total += d;
        *by.entry(name.clone()).or_default() += d;
    }
    let ms = |ns: u64| ns as f64 / 1e6 / secs;
    let mut by_thread: Vec<(String, f64)> = by.into_iter().map(|(k, v)| (k, ms(v))).collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    Usage {
        secs,
        ms_per_s: ms(total),
        by_thread,
    }
}

impl Usage {
    /// The threads that used at least `min_ms_per_s`, as `name 1.23` pairs.
    pub fn top(&self, min_ms_per_s: f64) -> String {
        self.by_thread
            .iter()
            .filter(|(_, v)| *v >= min_ms_per_s)
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
