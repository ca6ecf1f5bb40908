//! A link emulator for end-to-end tests over real kernel TCP/UDP (these kernels have no netem).
//!
//! [`Netem::new`] makes two network namespaces, `A` and `B`, each with `lo` up and one TUN
//! device; the two TUN devices are joined by a userspace relay in this process, which forwards
//! the raw IP packets of each direction after a one-way delay, with jitter (order-keeping or
//! reordering), random or bursty (Gilbert–Elliott) loss and a rate cap with a queue — a
//! [`Link`] per direction, changeable while traffic flows ([`Netem::set_link`]). Addresses are
//! point to point: [`Netem::addr_a`] (`10.78.N.1`) in `A`, [`Netem::addr_b`] (`10.78.N.2`) in
//! `B`.
//!
//! Processes run inside a namespace through [`Netns::spawn`] (or
//! [`crate::DaemonBuilder::netns`] for a private PulseAudio daemon); Rust code of the test runs
//! there through [`Netns::run`] (a thread that entered the namespace: sockets made in it stay
//! in that namespace wherever they are used afterwards). Path-based unix sockets work across
//! namespaces, so `pactl`, `pacat` and `parec` from the root namespace keep working.
//!
//! Dropping a [`Netem`] (also while a test panics) stops the relay and deletes its two
//! namespaces by name. Drop the daemons that run inside before it: declare the `Netem` first.
//! [`remove_leftovers`] deletes the namespaces of test processes that died without cleaning up
//! (never those of a live process).
//!
//! Names are unique per instance: `otnem-<pid>-<n>-a` / `-b` for the namespaces,
//! `otn<pid>x<n>a` / `b` for the TUN devices.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::pid_exists;

/// The prefix of every namespace this module makes.
const NS_PREFIX: &str = "otnem-";

/// How packets of one direction are lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// None.
    None,
    /// Each packet independently with this probability (0–1).
    Random(f64),
    /// Gilbert–Elliott: a two-state Markov chain, one step per packet. From `Good` the chain
    /// moves to `Bad` with probability `p`, from `Bad` back to `Good` with probability `r`; a
    /// packet is lost with probability `loss_good` in `Good` and `loss_bad` in `Bad`.
    GilbertElliott {
        p: f64,
        r: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    /// Gilbert–Elliott loss with mean loss rate `mean` (0–1) in bursts of `mean_burst` packets
    /// on average (≥ 1): every packet in `Bad` is lost, none in `Good`, so a burst is the time
    /// spent in `Bad` (geometric, mean 1/r) and the loss rate p / (p + r).
    pub fn bursty(mean: f64, mean_burst: f64) -> Loss {
        assert!((0.0..1.0).contains(&mean), "loss rate {mean} not in [0, 1)");
        assert!(mean_burst >= 1.0, "mean burst {mean_burst} < 1");
        let r = 1.0 / mean_burst;
        Loss::GilbertElliott {
            p: mean * r / (1.0 - mean),
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The long-run loss rate.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                if p + r == 0.0 {
                    loss_good
                } else {
                    (r * loss_good + p * loss_bad) / (p + r)
                }
            }
        }
    }
}

/// What one direction of the link does to packets. Build one with [`Link::ideal`],
/// [`Link::wan`], [`Link::lan`] and the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way delay added to every packet (after the rate cap's queue).
    pub delay: Duration,
    /// Each packet gets a further delay drawn uniformly from `0..jitter`.
    pub jitter: Duration,
    /// With jitter: keep the order of the packets (`due = max(now + delay + rand(0..jitter),
    /// due of the previous packet)`, as a link with a queue does) or let a later packet
    /// overtake an earlier one (`due = now + delay + rand(0..jitter)`).
    pub reorder: bool,
    pub loss: Loss,
    /// Rate cap in bytes per second (IP packets, headers included); `None`: no cap.
    pub rate: Option<u64>,
    /// Bytes the rate cap's queue holds; a packet that does not fit is dropped (tail drop).
    pub queue_bytes: usize,
    /// Drop every TCP segment (and nothing else): a TCP connection stalls in its
    /// retransmission backoff, as on a lossy link, while datagrams pass.
    pub block_tcp: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link::ideal()
    }
}

impl Link {
    /// No delay, no jitter, no loss, no cap.
    pub const fn ideal() -> Link {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: Loss::None,
            rate: None,
            queue_bytes: 256 * 1024,
            block_tcp: false,
        }
    }

    /// A WAN: one-way `delay`, order-keeping `jitter` (uniform in 0..jitter) and random loss
    /// `loss` (0–1), e.g. `Link::wan(ms(20), ms(5), 0.01)`.
    pub fn wan(delay: Duration, jitter: Duration, loss: f64) -> Link {
        Link {
            delay,
            jitter,
            loss: if loss > 0.0 {
                Loss::Random(loss)
            } else {
                Loss::None
            },
            ..Link::ideal()
        }
    }

    /// The WAN table's links (issue 18), each way: a name and the link. The bursty row is
    /// Gilbert–Elliott loss with a mean burst of 3 packets.
    pub fn wan_presets() -> [(&'static str, Link); 4] {
        let ms = Duration::from_millis;
        [
            ("5 ms, 0-2 ms, 0 %", Link::wan(ms(5), ms(2), 0.0)),
            ("20 ms, 0-5 ms, 1 %", Link::wan(ms(20), ms(5), 0.01)),
            ("30 ms, 0-30 ms, 2 %", Link::wan(ms(30), ms(30), 0.02)),
            (
                "40 ms, 0-10 ms, 5 % bursty",
                Link::wan(ms(40), ms(10), 0.0).with_loss(Loss::bursty(0.05, 3.0)),
            ),
        ]
    }

    /// A LAN: 0.5 ms one way, 0–1 ms jitter, no loss.
    pub fn lan() -> Link {
        Link::wan(Duration::from_micros(500), Duration::from_millis(1), 0.0)
    }

    pub fn with_delay(mut self, delay: Duration) -> Link {
        self.delay = delay;
        self
    }

    /// Order-keeping jitter (uniform in `0..jitter`).
    pub fn with_jitter(mut self, jitter: Duration) -> Link {
        self.jitter = jitter;
        self.reorder = false;
        self
    }

    /// Jitter that lets packets overtake each other (uniform in `0..jitter`).
    pub fn with_reordering_jitter(mut self, jitter: Duration) -> Link {
        self.jitter = jitter;
        self.reorder = true;
        self
    }

    pub fn with_loss(mut self, loss: Loss) -> Link {
        self.loss = loss;
        self
    }

    /// Every TCP segment dropped (`true`), or none for being TCP (`false`).
    pub fn with_tcp_blocked(mut self, blocked: bool) -> Link {
        self.block_tcp = blocked;
        self
    }

    /// A rate cap of `bytes_per_sec` with a queue of `queue_bytes`.
    pub fn with_rate(mut self, bytes_per_sec: u64, queue_bytes: usize) -> Link {
        assert!(bytes_per_sec > 0, "a rate cap of 0 bytes/s");
        self.rate = Some(bytes_per_sec);
        self.queue_bytes = queue_bytes;
        self
    }
}

impl fmt::Display for Link {
    /// `20 ms ± 0–5 ms (ordered), 1.0 % random loss`, for tables and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(f, "{} ms", ms(self.delay))?;
        if !self.jitter.is_zero() {
            write!(
                f,
                " + 0–{} ms jitter ({})",
                ms(self.jitter),
                if self.reorder {
                    "reordering"
                } else {
                    "ordered"
                }
            )?;
        }
        match self.loss {
            Loss::None => write!(f, ", no loss")?,
            Loss::Random(p) => write!(f, ", {:.1} % random loss", p * 100.0)?,
            Loss::GilbertElliott { r, .. } => write!(
                f,
                ", {:.1} % bursty loss (mean burst {:.1})",
                self.loss.mean() * 100.0,
                1.0 / r
            )?,
        }
        if self.block_tcp {
            write!(f, ", TCP blocked")?;
        }
        if let Some(rate) = self.rate {
            write!(
                f,
                ", {:.0} kbit/s cap ({} KiB queue)",
                rate as f64 * 8.0 / 1000.0,
                self.queue_bytes / 1024
            )?;
        }
        Ok(())
    }
}

/// A direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Packets sent from namespace `A` to `B`.
    AtoB,
    /// Packets sent from namespace `B` to `A`.
    BtoA,
}

/// Counters of one direction, from [`Netem::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets read from the sending side's TUN device.
    pub received: u64,
    /// Packets written to the far side.
    pub forwarded: u64,
    /// Bytes of the forwarded packets.
    pub forwarded_bytes: u64,
    /// Packets dropped by the loss model, and TCP segments dropped while TCP is blocked
    /// ([`Link::block_tcp`]).
    pub lost: u64,
    /// Packets dropped because the rate cap's queue was full.
    pub queue_drops: u64,
    /// Longest run of consecutive packets the loss model dropped.
    pub longest_loss_burst: u64,
    /// Packets the relay wrote more than 2 ms after their due time (its threads starved on a
    /// busy machine): the emulated link was worse than asked by that much.
    pub late_writes: u64,
    /// The latest a packet was written after its due time, in µs.
    pub max_late_us: u64,
}

impl DirStats {
    /// Packets dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.lost + self.queue_drops
    }
}

/// A network namespace made by [`Netem`], known by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that entered this namespace (setns; only that thread moves) and
    /// returns what it returns; a panic in `f` is resumed here. Sockets made by `f` belong to
    /// this namespace; processes spawned by `f` start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        std::thread::scope(|s| {
            let h = s.spawn(move || -> Result<T> {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .context("setns into the network namespace")?;
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
        .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Spawns `cmd` inside this namespace (the child inherits the namespace of the thread that
    /// spawns it). Its process id is the program's own: no wrapper process.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        self.run(|| cmd.spawn())?
            .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), self.name))
    }
}

/// Runs `ip ARGS`; an error with its stderr if it fails.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Names of the network namespaces that exist (`ip netns list`).
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The pid in the name of a namespace of ours (`otnem-<pid>-<n>-a`).
fn owner_pid(ns: &str) -> Option<u32> {
    ns.strip_prefix(NS_PREFIX)?.split('-').next()?.parse().ok()
}

/// True if no process runs in the namespace `ns` (`ip netns pids`), false when unsure.
fn unused(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.iter().all(u8::is_ascii_whitespace))
}

/// Deletes the namespaces this module made in processes that are gone (their pid no longer
/// exists) and in which no process runs, and returns their names. Those of live processes,
/// this one included, stay. Nothing calls it on its own: a test or a person does.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in namespaces() {
        if let Some(pid) = owner_pid(&ns) {
            if !pid_exists(pid) && unused(&ns) && ip(&["netns", "del", &ns]).is_ok() {
                removed.push(ns);
            }
        }
    }
    removed
}

/// One packet waiting for its time.
struct Pending {
    due: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: the earliest due (then the first sent) is the greatest, for the max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The state of one direction that the reader updates per packet.
struct Shaper {
    link: Link,
    rng: StdRng,
    /// Gilbert–Elliott state: in `Bad`.
    bad: bool,
    /// When the rate cap's transmitter is free again.
    tx_free: Instant,
    /// Due time of the last packet queued (for order-keeping jitter).
    last_due: Instant,
    seq: u64,
    loss_run: u64,
}

impl Shaper {
    fn lost(&mut self) -> bool {
        match self.link.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.gen::<f64>() < p,
            Loss::GilbertElliott {
                p,
                r,
                loss_good,
                loss_bad,
            } => {
                let lost = self.rng.gen::<f64>() < if self.bad { loss_bad } else { loss_good };
                let flip = self.rng.gen::<f64>() < if self.bad { r } else { p };
                if flip {
                    self.bad = !self.bad;
                }
                lost
            }
        }
    }
}

/// One direction: what the reader thread shares with the writer thread and [`Netem`].
struct Direction {
    shaper: Mutex<Shaper>,
    queue: Mutex<BinaryHeap<Pending>>,
    wake: Condvar,
    received: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    lost: AtomicU64,
    queue_drops: AtomicU64,
    longest_loss_burst: AtomicU64,
    late_writes: AtomicU64,
    max_late_us: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Direction {
    fn new(link: Link, seed: u64) -> Direction {
        let now = Instant::now();
        Direction {
            shaper: Mutex::new(Shaper {
                link,
                rng: StdRng::seed_from_u64(seed),
                bad: false,
                tx_free: now,
                last_due: now,
                seq: 0,
                loss_run: 0,
            }),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            received: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            queue_drops: AtomicU64::new(0),
            longest_loss_burst: AtomicU64::new(0),
            late_writes: AtomicU64::new(0),
            max_late_us: AtomicU64::new(0),
        }
    }

    /// A packet arrived at `now`: drop it or queue it for its due time.
    fn admit(&self, packet: Vec<u8>, now: Instant) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.shaper);
        // An IPv4 packet's protocol is its tenth byte (6: TCP).
        if s.link.block_tcp
            && packet.first().map(|b| b >> 4) == Some(4)
            && packet.get(9) == Some(&6)
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if s.lost() {
            s.loss_run += 1;
            self.longest_loss_burst
                .fetch_max(s.loss_run, Ordering::Relaxed);
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.loss_run = 0;
        let link = s.link;
        // The rate cap: one transmitter, packets leave it one after the other.
        let sent = match link.rate {
            None => now,
            Some(rate) => {
                let start = s.tx_free.max(now);
                let backlog = start.saturating_duration_since(now).as_secs_f64() * rate as f64;
                if backlog + packet.len() as f64 > link.queue_bytes as f64 {
                    self.queue_drops.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let end = start + Duration::from_secs_f64(packet.len() as f64 / rate as f64);
                s.tx_free = end;
                end
            }
        };
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            let j = link.jitter.as_nanos() as u64;
            Duration::from_nanos(s.rng.gen_range(0..j))
        };
        let mut due = sent + link.delay + jitter;
        if !link.reorder {
            due = due.max(s.last_due);
        }
        s.last_due = s.last_due.max(due);
        s.seq += 1;
        let seq = s.seq;
        drop(s);
        lock(&self.queue).push(Pending { due, seq, packet });
        self.wake.notify_one();
    }

    fn stats(&self) -> DirStats {
        DirStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queue_drops: self.queue_drops.load(Ordering::Relaxed),
            longest_loss_burst: self.longest_loss_burst.load(Ordering::Relaxed),
            late_writes: self.late_writes.load(Ordering::Relaxed),
            max_late_us: self.max_late_us.load(Ordering::Relaxed),
        }
    }
}

/// Two network namespaces joined by an emulated link; see the module documentation.
pub struct Netem {
    a: Netns,
    b: Netns,
    tun_a: String,
    tun_b: String,
    subnet: u8,
    dirs: [Arc<Direction>; 2],
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<()>>,
    writers: Vec<JoinHandle<()>>,
    /// The namespaces this instance made (and so deletes): not one that existed before.
    created: Vec<String>,
}

impl fmt::Debug for Netem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netem")
            .field("a", &self.a.name)
            .field("b", &self.b.name)
            .finish()
    }
}

impl Netem {
    /// Namespaces joined by `link` in both directions.
    pub fn new(link: Link) -> Result<Netem> {
        Netem::with_links(link, link)
    }

    /// Namespaces joined by `a_to_b` from `A` to `B` and `b_to_a` back.
    pub fn with_links(a_to_b: Link, b_to_a: Link) -> Result<Netem> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let a = Netns {
            name: format!("{NS_PREFIX}{pid}-{n}-a"),
        };
        let b = Netns {
            name: format!("{NS_PREFIX}{pid}-{n}-b"),
        };
        let subnet = (n % 250) as u8;
        // Loss and jitter are seeded: a run repeats unless OPUS_TUNNEL_NETEM_SEED says otherwise.
        let seed = std::env::var("OPUS_TUNNEL_NETEM_SEED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0x5eed_0000)
            .wrapping_add(u64::from(n) * 2);
        let mut netem = Netem {
            tun_a: format!("otn{pid}x{}a", n % 1000),
            tun_b: format!("otn{pid}x{}b", n % 1000),
            a,
            b,
            subnet,
            dirs: [
                Arc::new(Direction::new(a_to_b, seed)),
                Arc::new(Direction::new(b_to_a, seed.wrapping_add(1))),
            ],
            stop: Arc::new(AtomicBool::new(false)),
            readers: Vec::new(),
            writers: Vec::new(),
            created: Vec::new(),
        };
        // From here on, Drop removes whatever was made.
        netem.build()?;
        Ok(netem)
    }

    fn build(&mut self) -> Result<()> {
        let open = |name: &str| -> Result<Arc<tun::Device>> {
            let mut config = tun::Configuration::default();
            config.tun_name(name);
            // Only TUNSETIFF: addresses and state are set with `ip` inside the namespace.
            config.platform_config(|p| {
                p.ensure_root_privileges(false);
            });
            Ok(Arc::new(tun::create(&config).with_context(|| {
                format!("creating TUN device {name} (/dev/net/tun, as root)")
            })?))
        };
        let (a, b) = (self.a.name.clone(), self.b.name.clone());
        let (tun_a, tun_b) = (self.tun_a.clone(), self.tun_b.clone());
        let dev_a = open(&tun_a)?;
        let dev_b = open(&tun_b)?;
        let (addr_a, addr_b) = (self.addr_a().to_string(), self.addr_b().to_string());
        for (ns, dev, local, peer) in [
            (&a, &tun_a, &addr_a, &addr_b),
            (&b, &tun_b, &addr_b, &addr_a),
        ] {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.to_string());
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", local, "peer", peer, "dev", dev])?;
            // IPv4 only: no IPv6 router solicitations or MLD reports in the counters.
            let conf = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            let netns = Netns {
                name: ns.to_string(),
            };
            let _ = netns.run(|| std::fs::write(&conf, "1"));
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for (i, (from, to)) in [(&dev_a, &dev_b), (&dev_b, &dev_a)].into_iter().enumerate() {
            let dir = self.dirs[i].clone();
            let stop = self.stop.clone();
            let from = from.clone();
            self.readers.push(
                std::thread::Builder::new()
                    .name(format!("netem-rd{i}"))
                    .spawn(move || read_loop(&from, &dir, &stop))?,
            );
            let dir = self.dirs[i].clone();
            let stop = self.stop.clone();
            let to = to.clone();
            self.writers.push(
                std::thread::Builder::new()
                    .name(format!("netem-wr{i}"))
                    .spawn(move || write_loop(&to, &dir, &stop))?,
            );
        }
        Ok(())
    }

    /// Namespace `A`.
    pub fn a(&self) -> &Netns {
        &self.a
    }

    /// Namespace `B`.
    pub fn b(&self) -> &Netns {
        &self.b
    }

    /// The address of `A`'s end (`10.78.N.1`).
    pub fn addr_a(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 1)
    }

    /// The address of `B`'s end (`10.78.N.2`).
    pub fn addr_b(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.subnet, 2)
    }

    fn dir(&self, dir: Dir) -> &Direction {
        match dir {
            Dir::AtoB => &self.dirs[0],
            Dir::BtoA => &self.dirs[1],
        }
    }

    /// Changes one direction's link now; packets already queued keep their due time.
    pub fn set_link(&self, dir: Dir, link: Link) {
        lock(&self.dir(dir).shaper).link = link;
    }

    /// Changes both directions' links now.
    pub fn set_links(&self, link: Link) {
        self.set_link(Dir::AtoB, link);
        self.set_link(Dir::BtoA, link);
    }

    /// The link of one direction.
    pub fn link(&self, dir: Dir) -> Link {
        lock(&self.dir(dir).shaper).link
    }

    /// The counters of one direction.
    pub fn stats(&self, dir: Dir) -> DirStats {
        self.dir(dir).stats()
    }
}

/// Puts the calling thread under SCHED_FIFO (`chrt`, as root) so that the relay keeps its
/// timing on a busy machine: on two loaded cores, normal-priority relay threads wrote a packet
/// up to 47 ms after its due time (with it, most runs stay under 3 ms; a descheduled virtual
/// machine still shows now and then, counted in [`DirStats::late_writes`]). The threads only block and move a packet at a time.
/// Failure (no privilege) leaves the thread as it was.
fn realtime() {
    let tid = rustix::thread::gettid().as_raw_nonzero().to_string();
    let _ = Command::new("chrt")
        .args(["-f", "-p", "10", &tid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn read_loop(dev: &tun::Device, dir: &Direction, stop: &AtomicBool) {
    realtime();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        match dev.recv(&mut buf) {
            Ok(n) => dir.admit(buf[..n].to_vec(), Instant::now()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The device is gone (deleted when the emulator stops).
            Err(_) => break,
        }
    }
}

fn write_loop(dev: &tun::Device, dir: &Direction, stop: &AtomicBool) {
    realtime();
    let mut q = lock(&dir.queue);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        match q.peek().map(|p| p.due) {
            Some(due) if due <= now => {
                let p = q.pop().expect("peeked");
                drop(q);
                let late = now.saturating_duration_since(p.due);
                if late > Duration::from_millis(2) {
                    dir.late_writes.fetch_add(1, Ordering::Relaxed);
                }
                dir.max_late_us
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                // A packet the far side does not take (its device down) is simply lost.
                if dev.send(&p.packet).is_ok() {
                    dir.forwarded.fetch_add(1, Ordering::Relaxed);
                    dir.forwarded_bytes
                        .fetch_add(p.packet.len() as u64, Ordering::Relaxed);
                }
                q = lock(&dir.queue);
            }
            Some(due) => {
                q = dir
                    .wake
                    .wait_timeout(q, due - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            None => q = dir.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for d in &self.dirs {
            let _q = lock(&d.queue);
            d.wake.notify_all();
        }
        for h in self.writers.drain(..) {
            let _ = h.join();
        }
        // A reader blocks in read(2) on its TUN device: one packet sent into each device wakes
        // it, and it sees the stop flag. If a packet cannot be sent, its reader is left behind
        // (it ends with the process) rather than blocking this drop.
        let mut woken = true;
        for (ns, peer) in [(&self.a, self.addr_b()), (&self.b, self.addr_a())] {
            woken &= ns
                .run(|| {
                    std::net::UdpSocket::bind("0.0.0.0:0")
                        .and_then(|s| s.send_to(b"stop", (peer, 9)))
                        .is_ok()
                })
                .unwrap_or(false);
        }
        if woken {
            for h in self.readers.drain(..) {
                let _ = h.join();
            }
        }
        for ns in &self.created {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netem: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_of_names() {
        assert_eq!(owner_pid("otnem-1234-0-a"), Some(1234));
        assert_eq!(owner_pid("otnem-x-0-a"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }

    #[test]
    fn gilbert_elliott_from_mean_and_burst() {
        let l = Loss::bursty(0.05, 3.0);
        assert!((l.mean() - 0.05).abs() < 1e-12, "{}", l.mean());
        let mut s = Shaper {
            link: Link::ideal().with_loss(l),
            rng: StdRng::seed_from_u64(7),
            bad: false,
            tx_free: Instant::now(),
            last_due: Instant::now(),
            seq: 0,
            loss_run: 0,
        };
        let (mut lost, mut bursts, mut prev) = (0u32, 0u32, false);
        for _ in 0..200_000 {
            let x = s.lost();
            lost += u32::from(x);
            bursts += u32::from(x && !prev);
            prev = x;
        }
        let rate = f64::from(lost) / 200_000.0;
        let burst = f64::from(lost) / f64::from(bursts);
        assert!((rate - 0.05).abs() < 0.005, "rate {rate}");
        assert!((burst - 3.0).abs() < 0.3, "burst {burst}");
    }

    /// With TCP blocked, TCP segments are dropped and datagrams pass.
    #[test]
    fn tcp_blocked_drops_tcp_only() {
        let ip = |proto: u8| {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[9] = proto;
            p
        };
        let d = Direction::new(Link::ideal().with_tcp_blocked(true), 1);
        let now = Instant::now();
        d.admit(ip(6), now);
        d.admit(ip(17), now);
        assert_eq!(d.stats().lost, 1);
        assert_eq!(lock(&d.queue).len(), 1);
        lock(&d.shaper).link = Link::ideal();
        d.admit(ip(6), now);
        assert_eq!(d.stats().lost, 1);
        assert_eq!(lock(&d.queue).len(), 2);
        assert_eq!(
            Link::ideal().with_tcp_blocked(true).to_string(),
            "0 ms, no loss, TCP blocked"
        );
    }

    #[test]
    fn display() {
        let l = Link::wan(Duration::from_millis(20), Duration::from_millis(5), 0.01);
        assert_eq!(
            l.to_string(),
            "20 ms + 0–5 ms jitter (ordered), 1.0 % random loss"
        );
    }
}
