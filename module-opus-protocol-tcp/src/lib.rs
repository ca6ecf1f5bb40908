//! `module-opus-protocol-tcp`: the receiving end. Listens on TCP (default port 4715); each
//! accepted tunnel from `module-tunnel-sink-opus` becomes a stream (sink-input) on a local
//! sink, decoded through a jitter buffer with Opus packet-loss concealment.
//!
//! The network side is `opus_tunnel_core::rx` (a listener thread, a thread per connection,
//! lock-free rings); this module is the PulseAudio glue: the main thread creates and removes
//! the streams (woken through an eventfd) and publishes their statistics, and each stream's
//! callback on the sink's IO thread takes audio out of its ring.

use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::args::parse_latency_bounds;
use opus_tunnel_core::argtable::{self, keys, parse_flag, RECEIVER, RECEIVER_USAGE};
use opus_tunnel_core::auth::Cookie;
use opus_tunnel_core::rx::{
    self, ConnShared, Host, Playback, RecordRequest, RecvConfig, StreamRequest,
};
use opus_tunnel_core::tx::Feeder;
use opus_tunnel_pulse::mainloop::{MainTimer, MainWaker, WakeHandle};
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::sink_input::{SinkInput, SinkInputConfig, SinkInputIo};
use opus_tunnel_pulse::source_output::{SourceOutput, SourceOutputConfig, SourceOutputIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, PaModule, Proplist, SampleSpec,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

/// The daemon side of the receiver, seen from the connection threads: requests are queued
/// for the main thread, which is woken through an eventfd.
struct PulseHost {
    requests: Mutex<VecDeque<StreamRequest>>,
    records: Mutex<VecDeque<RecordRequest>>,
    waker: OnceLock<WakeHandle>,
}

impl PulseHost {
    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }
}

impl Host for PulseHost {
    fn open(&self, req: StreamRequest) {
        if let Ok(mut q) = self.requests.lock() {
            q.push_back(req);
        }
        self.wake();
    }

    fn open_record(&self, req: RecordRequest) {
        if let Ok(mut q) = self.records.lock() {
            q.push_back(req);
        }
        self.wake();
    }

    fn changed(&self) {
        self.wake();
    }
}

/// A record tunnel (main thread). Its recording stream exists only while the far end has
/// readers (privacy, CPU, bandwidth); in between, its callback is parked here.
struct Recording {
    stream: Option<SourceOutput>,
    parked: Option<Box<dyn SourceOutputIo>>,
    conn: Arc<ConnShared>,
    name: String,
    props: Vec<(String, String)>,
}

/// The recording stream's side on the source's IO thread.
struct CaptureIo(Feeder);

impl SourceOutputIo for CaptureIo {
    fn push(&mut self, data: &[u8]) {
        self.0.push(data, true);
    }
}

/// A tunnel whose stream is playing (main thread).
struct Active {
    stream: SinkInput,
    conn: Arc<ConnShared>,
}

/// Main-thread state.
struct MainState {
    module: ModuleRef,
    host: Arc<PulseHost>,
    default_sink: Option<String>,
    default_source: Option<String>,
    target_usec: u64,
    active: Vec<Active>,
    recordings: Vec<Recording>,
}

impl MainState {
    /// Creates streams for new tunnels and removes those that ended. Main thread.
    fn service(&mut self) {
        let requests: Vec<StreamRequest> = match self.host.requests.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for req in requests {
            let (conn, playback, name, props, replier) = req.into_parts();
            match self.create_stream(&conn, playback, &name, props) {
                Ok(stream) => {
                    replier.accept(&stream.sink_name().unwrap_or_default());
                    self.active.push(Active { stream, conn });
                }
                Err((status, reason)) => replier.refuse(status, &reason),
            }
        }
        self.active.retain(|a| {
            if a.stream.killed() {
                log::info!("stream {} was killed; closing its tunnel", a.conn.label);
                a.conn.kill();
                return false;
            }
            !a.conn.is_closed()
        });
        let records: Vec<RecordRequest> = match self.host.records.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for req in records {
            let (conn, feeder, name, props, replier) = req.into_parts();
            let source = conn.device.clone().or_else(|| self.default_source.clone());
            match self.module.core().source_name(source.as_deref()) {
                Some(found) => {
                    replier.accept(&found);
                    self.recordings.push(Recording {
                        stream: None,
                        parked: Some(Box::new(CaptureIo(feeder))),
                        conn,
                        name,
                        props,
                    });
                }
                None => replier.refuse(
                    404,
                    &match source {
                        Some(n) => format!("no source named {n:?}"),
                        None => "there is no default source".into(),
                    },
                ),
            }
        }
        let mut recordings = std::mem::take(&mut self.recordings);
        recordings.retain_mut(|r| {
            if r.stream.as_ref().is_some_and(|s| s.killed()) {
                log::info!("stream {} was killed; closing its tunnel", r.conn.label);
                r.conn.kill();
                return false;
            }
            if r.conn.is_closed() {
                return false;
            }
            let want = r.conn.recording();
            if want && r.stream.is_none() {
                if let Some(io) = r.parked.take() {
                    match self.create_recording(&r.conn, io, &r.name, r.props.clone()) {
                        Ok(stream) => {
                            log::info!("record tunnel {}: recording", r.conn.label);
                            r.stream = Some(stream);
                        }
                        Err((_, e)) => {
                            log::warn!("record tunnel {}: cannot record: {e}", r.conn.label);
                            r.conn.kill();
                            return false;
                        }
                    }
                }
            } else if !want {
                if let Some(stream) = r.stream.take() {
                    r.parked = Some(stream.close());
                    log::info!("record tunnel {}: stopped (no readers)", r.conn.label);
                }
            }
            true
        });
        self.recordings = recordings;
    }

    fn create_stream(
        &self,
        conn: &ConnShared,
        playback: Playback,
        name: &str,
        props: Vec<(String, String)>,
    ) -> Result<SinkInput, (u16, String)> {
        let spec = SampleSpec::new("float32le", conn.rate, conn.channels).map_err(|e| (415, e))?;
        let map = ChannelMap::parse(&conn.channel_map, conn.channels)
            .or_else(|_| {
                ChannelMap::default_for(conn.channels).ok_or_else(|| "no channel map".to_string())
            })
            .map_err(|e| (415, e))?;
        let mut pl = Proplist::new();
        pl.set("media.name", name);
        pl.set("application.name", "opus-tunnel");
        pl.set("media.role", "music");
        for (k, v) in props {
            pl.set(&k, &v);
        }
        let device = conn.device.clone().or_else(|| self.default_sink.clone());
        SinkInput::new(
            &self.module,
            SinkInputConfig {
                sink: device.as_deref(),
                spec,
                map,
                props: pl,
                requested_latency_usec: (self.target_usec / 2).clamp(5_000, 100_000),
                driver: c"module-opus-protocol-tcp",
                on_kill: self.host.waker.get().cloned(),
            },
            Box::new(ReceiverIo(playback)),
        )
        .map_err(|e| (404, e))
    }

    fn create_recording(
        &self,
        conn: &ConnShared,
        io: Box<dyn SourceOutputIo>,
        name: &str,
        props: Vec<(String, String)>,
    ) -> Result<SourceOutput, (u16, String)> {
        let spec = SampleSpec::new("float32le", conn.rate, conn.channels).map_err(|e| (415, e))?;
        let map = ChannelMap::parse(&conn.channel_map, conn.channels)
            .or_else(|_| {
                ChannelMap::default_for(conn.channels).ok_or_else(|| "no channel map".to_string())
            })
            .map_err(|e| (415, e))?;
        let mut pl = Proplist::new();
        pl.set("media.name", name);
        pl.set("application.name", "opus-tunnel");
        pl.set("media.role", "phone");
        for (k, v) in props {
            pl.set(&k, &v);
        }
        SourceOutput::new(
            &self.module,
            SourceOutputConfig {
                source: conn.device.as_deref().or(self.default_source.as_deref()),
                spec,
                map,
                props: pl,
                requested_latency_usec: 10_000,
                start_corked: false,
                driver: c"module-opus-protocol-tcp",
                on_kill: self.host.waker.get().cloned(),
            },
            io,
        )
        .map_err(|e| (404, e))
    }

    /// Publishes each stream's statistics as its properties. Main thread, once a second.
    fn publish(&mut self) {
        for a in &self.active {
            a.stream
                .update_proplist(&to_proplist(a.conn.stat_properties()));
        }
        for r in &self.recordings {
            if let Some(stream) = &r.stream {
                stream.update_proplist(&to_proplist(r.conn.stat_properties()));
            }
        }
    }
}

fn to_proplist(pairs: Vec<(String, String)>) -> Proplist {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(&k, &v);
    }
    p
}

/// The stream's side on the sink's IO thread.
struct ReceiverIo(Playback);

impl SinkInputIo for ReceiverIo {
    fn pop(&mut self, out: &mut [u8]) {
        self.0.pop_bytes(out);
    }

    fn queued_usec(&self) -> u64 {
        self.0.queued_usec()
    }
}

/// The module instance.
pub struct Receiver {
    // Drop order: the network side first (connections end, no new requests), then the
    // main-loop hooks, then the streams.
    receiver: Option<rx::Receiver>,
    _timer: MainTimer,
    _waker: MainWaker,
    main: Rc<RefCell<MainState>>,
    port: u16,
}

fn bind(listen: Option<&str>, port: u16) -> Result<TcpListener, String> {
    let addrs: Vec<SocketAddr> = match listen {
        Some(a) => {
            let ip: IpAddr = a
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    format!("listen: {a:?} is not accepted (an IP address such as 127.0.0.1 or ::)")
                })?;
            vec![SocketAddr::new(ip, port)]
        }
        // Dual-stack "::" where the machine has IPv6, else all IPv4 addresses.
        None => vec![
            SocketAddr::new(IpAddr::from([0u16; 8]), port),
            SocketAddr::new(IpAddr::from([0u8; 4]), port),
        ],
    };
    let mut last = String::new();
    for a in &addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a}: {e}"),
        }
    }
    Err(last)
}

impl PaModule for Receiver {
    fn init(module: &ModuleRef) -> Result<Self, String> {
        let arg = module.argument();
        let ma = Modargs::new(arg.as_deref(), &keys(RECEIVER))?;
        let get = |k: &str| ma.get(k);
        let port = argtable::int::<u16>(RECEIVER, "port", get("port").as_deref())?;
        let words = "1/0, yes/no, true/false, on/off";
        let anonymous = parse_flag(
            "auth-anonymous",
            get("auth-anonymous").as_deref(),
            false,
            words,
        )?;
        let acl = match ma.get("auth-ip-acl") {
            None => None,
            Some(v) => Some(IpAcl::parse("auth-ip-acl", &v).map_err(|e| e.to_string())?),
        };
        let cookie_enabled = parse_flag(
            "auth-cookie-enabled",
            get("auth-cookie-enabled").as_deref(),
            true,
            words,
        )?;
        let cookie_path = ma.get("auth-cookie");
        let cookie = if cookie_enabled && !anonymous {
            let path = cookie_path.as_ref().map(std::path::PathBuf::from);
            match Cookie::load_or_default(path.as_deref()) {
                Ok(c) => Some(c),
                // A cookie named explicitly must be there; PulseAudio's default one may be
                // missing when an ACL does the job.
                Err(e) if cookie_path.is_some() || acl.is_none() => {
                    return Err(format!(
                        "auth-cookie: {e} (or set auth-anonymous=1, or auth-ip-acl=... with auth-cookie-enabled=0)"
                    ))
                }
                Err(e) => {
                    log::warn!("no cookie authentication ({e}); only auth-ip-acl admits peers");
                    None
                }
            }
        } else {
            None
        };
        if !anonymous && acl.is_none() && cookie.is_none() {
            return Err(
                "no way to admit peers: set auth-anonymous=1, auth-ip-acl=<addresses>, or enable \
                 cookie authentication (auth-cookie-enabled=1, auth-cookie=<file>)"
                    .into(),
            );
        }
        let (target_ms, max_ms) =
            parse_latency_bounds(RECEIVER, &get, "target_latency_msec", "max_latency_msec")?;
        let (target_ms, max_ms) = (u64::from(target_ms), u64::from(max_ms));
        let max_connections = argtable::int::<usize>(
            RECEIVER,
            "max_connections",
            get("max_connections").as_deref(),
        )?;
        let sink = ma.get("sink");
        let core = module.core();
        if let Some(s) = &sink {
            if core.sink_name(Some(s)).is_none() {
                log::warn!(
                    "sink {s:?} does not exist (yet); tunnels will be refused until it does"
                );
            }
        }
        let listener = bind(ma.get("listen").as_deref(), port)?;
        let host = Arc::new(PulseHost {
            requests: Mutex::new(VecDeque::new()),
            records: Mutex::new(VecDeque::new()),
            waker: OnceLock::new(),
        });
        let main = Rc::new(RefCell::new(MainState {
            module: *module,
            host: host.clone(),
            default_sink: sink.clone(),
            default_source: ma.get("source"),
            target_usec: target_ms * 1000,
            active: Vec::new(),
            recordings: Vec::new(),
        }));
        let m2 = main.clone();
        let waker = MainWaker::new(&core, move || {
            if let Ok(mut m) = m2.try_borrow_mut() {
                m.service();
            }
        })?;
        let _ = host.waker.set(waker.handle());
        let m3 = main.clone();
        let timer = MainTimer::new(&core, 1_000_000, move || {
            if let Ok(mut m) = m3.try_borrow_mut() {
                m.service();
                m.publish();
            }
        });
        let cfg = RecvConfig {
            anonymous,
            acl,
            cookie,
            sink,
            target_usec: target_ms * 1000,
            max_usec: max_ms * 1000,
            max_connections,
            external_resampler: false,
        };
        let receiver = rx::Receiver::start(listener, cfg, host)
            .map_err(|e| format!("cannot start the listener: {e}"))?;
        let local = receiver.local_addr();
        log::info!("listening for opus tunnels on {local}");
        Ok(Receiver {
            receiver: Some(receiver),
            _timer: timer,
            _waker: waker,
            main,
            port: local.port(),
        })
    }

    fn n_used(&self) -> i32 {
        self.main
            .try_borrow()
            .map(|m| (m.active.len() + m.recordings.len()) as i32)
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Ends every connection (their threads notice within ~200 ms) and joins them; a
        // request still queued is refused when it is dropped below.
        drop(self.receiver.take());
        if let Ok(mut m) = self.main.try_borrow_mut() {
            let pending: Vec<StreamRequest> = match m.host.requests.lock() {
                Ok(mut q) => q.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            for req in pending {
                req.into_parts()
                    .4
                    .refuse(503, "the receiver is shutting down");
            }
            let records: Vec<RecordRequest> = match m.host.records.lock() {
                Ok(mut q) => q.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            for req in records {
                req.into_parts()
                    .4
                    .refuse(503, "the receiver is shutting down");
            }
            m.active.clear();
            m.recordings.clear();
        }
        log::info!("stopped listening on port {}", self.port);
    }
}

declare_module!(
    Receiver,
    ModuleInfo {
        author: c"opus-tunnel developers",
        description:
            c"Receives Opus tunnels (from module-tunnel-sink-opus) and plays them on a local sink",
        usage: RECEIVER_USAGE,
        load_once: false,
    }
);
