//! `libpipewire-module-opus-protocol-tcp`: the receiving end on a PipeWire host. Listens on
//! TCP (default port 4715); each tunnel that connects (from `module-tunnel-sink-opus` on
//! PulseAudio or `libpipewire-module-opus-tunnel` on PipeWire) becomes a playback stream
//! (`Stream/Output/Audio`, F32 interleaved at the tunnel's rate and channels) that the session
//! manager links to `target.object` or the default sink. A record tunnel (from
//! `module-tunnel-source-opus` or `libpipewire-module-opus-tunnel` with `tunnel.mode =
//! source`) gets a capture stream (`Stream/Input/Audio`) on the source it names,
//! `target.source` or the default source — only while the desktop end has readers; what it
//! captures is encoded and sent (`opus_tunnel_core::rx::Host::open_record`).
//!
//! The network side is `opus_tunnel_core::rx` (a listener thread, a thread per connection,
//! lock-free rings); this module is the PipeWire glue: the main thread creates and removes the
//! streams (woken through a main-loop event) and publishes their statistics as node properties
//! once a second; each stream's process callback on PipeWire's data thread takes the audio out
//! with `Playback::pop`.

use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::args::parse_latency_bounds;
use opus_tunnel_core::argtable::{self, keys, parse_flag, PW_RECEIVER, PW_RECEIVER_USAGE};
use opus_tunnel_core::auth::Cookie;
use opus_tunnel_core::params::DEFAULT_PORT;
use opus_tunnel_core::rx::{
    self, ConnShared, Host, Playback, RecordRequest, RecvConfig, StreamRequest,
};
use opus_tunnel_core::tx::Feeder;
use opus_tunnel_pipewire::{
    channel_positions, declare_pw_module, parse_json_list, parse_object, Args, Context, Direction,
    Event, EventHandle, ModuleInfo, PwModule, Stream, StreamIo, StreamSpec, StreamState, Timer,
};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

/// The daemon side of the receiver, seen from the connection threads: requests are queued
/// for the main thread, which is woken through a main-loop event.
struct PwHost {
    requests: Mutex<VecDeque<StreamRequest>>,
    records: Mutex<VecDeque<RecordRequest>>,
    waker: OnceLock<EventHandle>,
}

impl PwHost {
    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.signal();
        }
    }
}

impl Host for PwHost {
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

/// A tunnel whose stream is playing (main thread).
struct Active {
    stream: Stream,
    conn: Arc<ConnShared>,
    /// The stream failed or was disconnected (its node destroyed, e.g. `pw-cli destroy`).
    dead: Rc<Cell<bool>>,
}

/// Where a record tunnel's capture stream records from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaptureTarget {
    /// `target.object` of the stream (`None`: the default source).
    node: Option<String>,
    /// The node is a sink and the stream records its monitor (`stream.capture.sink`).
    monitor: bool,
    /// The name answered to the desktop end.
    label: String,
}

/// A record tunnel (main thread). Its capture stream exists only while the desktop end has
/// readers (privacy, CPU, bandwidth); in between, its real-time side is parked here.
struct Recording {
    stream: Option<Stream>,
    dead: Rc<Cell<bool>>,
    parked: Option<Box<dyn StreamIo>>,
    conn: Arc<ConnShared>,
    name: String,
    props: Vec<(String, String)>,
    target: CaptureTarget,
}

/// The capture stream's side on PipeWire's data thread: hands what it records to the
/// tunnel's encoder (float32, native endian = the wire's float32le on the hosts we build for).
struct CaptureIo(Feeder);

impl StreamIo for CaptureIo {
    fn consume(&mut self, data: &[u8]) {
        self.0.push(data, true);
    }
}

/// Main-thread state.
struct MainState {
    ctx: Context,
    host: Arc<PwHost>,
    target: Option<String>,
    target_source: Option<String>,
    target_usec: u64,
    extra_props: Vec<(String, String)>,
    active: Vec<Active>,
    recordings: Vec<Recording>,
    /// `opus.resampler = pipewire`: PipeWire's adapter resamples (rate matching).
    pw_resampler: bool,
}

/// The stream's side on PipeWire's data thread; with `opus.resampler = pipewire` (the
/// flag) it hands the engine's ratio to the stream's adapter.
struct ReceiverIo(Playback, bool);

impl StreamIo for ReceiverIo {
    fn fill(&mut self, out: &mut [f32]) {
        self.0.pop(out);
    }
    fn rate_match(&mut self) -> Option<f64> {
        self.1.then(|| self.0.ratio())
    }
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
            let device = conn.device.clone().or_else(|| self.target.clone());
            match self.create_stream(&conn, playback, &name, props, device.as_deref()) {
                Ok((stream, dead)) => {
                    log::info!(
                        "tunnel {} plays as stream {:?} on {}",
                        conn.label,
                        name,
                        device.as_deref().unwrap_or("the default sink")
                    );
                    replier.accept(device.as_deref().unwrap_or("@DEFAULT_SINK@"));
                    self.active.push(Active { stream, conn, dead });
                }
                Err(e) => {
                    log::warn!("tunnel {}: {e}", conn.label);
                    replier.refuse(503, &e);
                }
            }
        }
        self.active.retain(|a| {
            if a.dead.get() {
                log::info!("stream of {} is gone; closing its tunnel", a.conn.label);
                a.conn.kill();
                return false;
            }
            !a.conn.is_closed()
        });
        self.service_records();
    }

    /// Where a record tunnel records: the source it asked for, `target.source`, or the
    /// default source. A name that is not a node of the graph now (checked on the spot: the
    /// module runs inside the daemon) is refused with 404 like the PulseAudio receiver does;
    /// `NAME.monitor` (PulseAudio's name of a sink's monitor) records the sink `NAME`'s
    /// monitor.
    fn resolve_source(&self, wanted: Option<&str>) -> Result<CaptureTarget, String> {
        let nodes = self.ctx.nodes();
        let is_source = |c: &str| c.starts_with("Audio/Source") || c == "Audio/Duplex";
        let Some(name) = wanted else {
            if nodes.iter().any(|n| is_source(&n.media_class)) {
                return Ok(CaptureTarget {
                    node: None,
                    monitor: false,
                    label: "@DEFAULT_SOURCE@".into(),
                });
            }
            return Err("there is no default source (no Audio/Source node)".into());
        };
        if let Some(n) = nodes.iter().find(|n| n.name == name) {
            if is_source(&n.media_class) {
                return Ok(CaptureTarget {
                    node: Some(name.into()),
                    monitor: false,
                    label: name.into(),
                });
            }
            if n.media_class.starts_with("Audio/Sink") {
                return Ok(CaptureTarget {
                    node: Some(name.into()),
                    monitor: true,
                    label: format!("{name}.monitor"),
                });
            }
            return Err(format!(
                "{name:?} is a {} node, not a source",
                n.media_class
            ));
        }
        if let Some(sink) = name.strip_suffix(".monitor") {
            if nodes
                .iter()
                .any(|n| n.name == sink && n.media_class.starts_with("Audio/Sink"))
            {
                return Ok(CaptureTarget {
                    node: Some(sink.into()),
                    monitor: true,
                    label: name.into(),
                });
            }
        }
        Err(format!("no source named {name:?}"))
    }

    /// Answers new record tunnels; creates each one's capture stream while its desktop end
    /// has readers and destroys it when they go; drops the tunnels that ended.
    fn service_records(&mut self) {
        let records: Vec<RecordRequest> = match self.host.records.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for req in records {
            let (conn, feeder, name, props, replier) = req.into_parts();
            let wanted = conn.device.clone().or_else(|| self.target_source.clone());
            match self.resolve_source(wanted.as_deref()) {
                Ok(target) => {
                    log::info!(
                        "record tunnel {} records {} while it has readers",
                        conn.label,
                        target.label
                    );
                    replier.accept(&target.label);
                    self.recordings.push(Recording {
                        stream: None,
                        dead: Rc::new(Cell::new(false)),
                        parked: Some(Box::new(CaptureIo(feeder))),
                        conn,
                        name,
                        props,
                        target,
                    });
                }
                Err(e) => {
                    log::warn!("record tunnel {}: {e}", conn.label);
                    replier.refuse(404, &e);
                }
            }
        }
        let mut recordings = std::mem::take(&mut self.recordings);
        recordings.retain_mut(|r| {
            if r.stream.is_some() && r.dead.get() {
                log::info!(
                    "capture stream of {} is gone; closing its tunnel",
                    r.conn.label
                );
                r.conn.kill();
                return false;
            }
            if r.conn.is_closed() {
                return false;
            }
            let want = r.conn.recording();
            if want && r.stream.is_none() {
                if let Some(io) = r.parked.take() {
                    match self.create_capture(r, io) {
                        Ok((stream, dead)) => {
                            log::info!("record tunnel {}: recording", r.conn.label);
                            r.stream = Some(stream);
                            r.dead = dead;
                        }
                        Err(e) => {
                            log::warn!("record tunnel {}: cannot record: {e}", r.conn.label);
                            r.conn.kill();
                            return false;
                        }
                    }
                }
            } else if !want {
                if let Some(stream) = r.stream.take() {
                    r.parked = stream.into_io();
                    log::info!("record tunnel {}: stopped (no readers)", r.conn.label);
                    if r.parked.is_none() {
                        r.conn.kill();
                        return false;
                    }
                }
            }
            true
        });
        self.recordings = recordings;
    }

    fn create_capture(
        &self,
        r: &Recording,
        io: Box<dyn StreamIo>,
    ) -> Result<(Stream, Rc<Cell<bool>>), String> {
        let conn = &r.conn;
        let mut p: Vec<(String, String)> = vec![
            ("media.class".into(), "Stream/Input/Audio".into()),
            ("media.category".into(), "Capture".into()),
            ("media.role".into(), "Communication".into()),
            (
                "node.name".into(),
                format!("opus-tunnel-rec.{}", clean(&conn.label)),
            ),
            // Down-mix as PulseAudio does (stereo → mono averages the channels): PipeWire's
            // default matrix sums at -3 dB each, which lifts a stereo source by 3 dB in a
            // mono tunnel (and can clip).
            ("channelmix.normalize".into(), "true".into()),
        ];
        if let Some(node) = &r.target.node {
            p.push(("target.object".into(), node.clone()));
        }
        if r.target.monitor {
            p.push(("stream.capture.sink".into(), "true".into()));
        }
        p.extend(r.props.iter().cloned());
        self.open_stream(conn, &r.name, p, Direction::Capture, io, "capture stream")
    }

    fn create_stream(
        &self,
        conn: &ConnShared,
        playback: Playback,
        name: &str,
        props: Vec<(String, String)>,
        device: Option<&str>,
    ) -> Result<(Stream, Rc<Cell<bool>>), String> {
        let mut p: Vec<(String, String)> = vec![
            ("media.class".into(), "Stream/Output/Audio".into()),
            ("media.category".into(), "Playback".into()),
            ("media.role".into(), "Music".into()),
            (
                "node.name".into(),
                format!("opus-tunnel.{}", clean(&conn.label)),
            ),
        ];
        if let Some(d) = device {
            p.push(("target.object".into(), d.into()));
        }
        p.extend(props);
        let io = Box::new(ReceiverIo(playback, self.pw_resampler));
        self.open_stream(conn, name, p, Direction::Playback, io, "stream")
    }

    /// Creates a tunnel's stream with `props` (ours, then the tunnel's own) after the common
    /// ones, and the module's extra and statistics properties after them. The flag turns true
    /// (and the host wakes) when the stream fails or is disconnected.
    fn open_stream(
        &self,
        conn: &ConnShared,
        name: &str,
        props: Vec<(String, String)>,
        direction: Direction,
        io: Box<dyn StreamIo>,
        what: &'static str,
    ) -> Result<(Stream, Rc<Cell<bool>>), String> {
        // A quantum near half the target, as a power of two (PipeWire's quanta are).
        let want = (u64::from(conn.rate) * self.target_usec / 2_000_000).clamp(256, 8192);
        let quantum = 1u64 << (63 - want.leading_zeros());
        let mut p: Vec<(String, String)> = vec![
            ("media.type".into(), "Audio".into()),
            ("media.name".into(), name.into()),
            ("node.description".into(), name.into()),
            ("application.name".into(), "opus-tunnel".into()),
            ("node.latency".into(), format!("{quantum}/{}", conn.rate)),
        ];
        p.extend(props);
        p.extend(self.extra_props.iter().cloned());
        p.extend(conn.stat_properties());
        let positions = channel_positions(&conn.channel_map, conn.channels);
        let dead = Rc::new(Cell::new(false));
        let d2 = dead.clone();
        let host = self.host.clone();
        let label = conn.label.clone();
        let stream = Stream::new(
            &self.ctx,
            &StreamSpec {
                name,
                props: &p,
                direction,
                rate: conn.rate,
                channels: conn.channels,
                positions: &positions,
            },
            io,
            Some(Box::new(move |st| match st {
                StreamState::Error(e) => {
                    log::warn!("{what} of {label}: {e}");
                    d2.set(true);
                    host.wake();
                }
                StreamState::Unconnected => {
                    d2.set(true);
                    host.wake();
                }
                _ => {}
            })),
        )?;
        Ok((stream, dead))
    }

    /// Publishes each stream's statistics as its node properties. Main thread, once a second.
    fn publish(&mut self) {
        for a in &self.active {
            a.stream.update_properties(&a.conn.stat_properties());
        }
        for r in &self.recordings {
            if let Some(s) = &r.stream {
                s.update_properties(&r.conn.stat_properties());
            }
        }
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The module instance.
pub struct Receiver {
    receiver: Option<rx::Receiver>,
    _timer: Timer,
    _event: Event,
    main: Rc<RefCell<MainState>>,
    addr: SocketAddr,
}

/// `tcp:[ADDR:]PORT` (also `PORT`, `ADDR:PORT`, `[V6]:PORT`, `tcp:ADDR`) → the addresses to try.
fn parse_address(s: &str) -> Result<Vec<SocketAddr>, String> {
    let err = || {
        format!(
            "server.address: {s:?} is not accepted (tcp:[ADDR:]PORT, e.g. \"tcp:4715\" or \"tcp:127.0.0.1:4715\")"
        )
    };
    let rest = s.trim().strip_prefix("tcp:").unwrap_or(s.trim());
    if rest.starts_with("unix:") || rest.is_empty() {
        return Err(err());
    }
    let all = |port: u16| {
        vec![
            SocketAddr::new(IpAddr::from([0u16; 8]), port),
            SocketAddr::new(IpAddr::from([0u8; 4]), port),
        ]
    };
    if let Ok(port) = rest.parse::<u16>() {
        return Ok(all(port));
    }
    if let Ok(sa) = rest.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    let bare = rest.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, DEFAULT_PORT)]);
    }
    Err(err())
}

fn bind(addrs: &[SocketAddr]) -> Result<TcpListener, String> {
    let mut last = String::new();
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a}: {e}"),
        }
    }
    Err(last)
}

impl PwModule for Receiver {
    fn init(ctx: &Context, args: &Args) -> Result<Self, String> {
        args.check_keys(&keys(PW_RECEIVER))?;
        let addrs = match args.get("server.address") {
            None => parse_address(&DEFAULT_PORT.to_string())?,
            Some(v) => {
                let list = parse_json_list(v);
                match list.as_slice() {
                    [one] => parse_address(one)?,
                    [] => return Err("server.address: empty; give one address, e.g. [ \"tcp:4715\" ]".into()),
                    _ => {
                        return Err(format!(
                            "server.address: {v:?}: one address is supported (load the module once per address)"
                        ))
                    }
                }
            }
        };
        let anonymous = parse_flag(
            "auth.anonymous",
            args.get("auth.anonymous"),
            false,
            "true/false",
        )?;
        let acl = match args.get("auth.ip-acl") {
            None => None,
            Some(v) => {
                // Either PulseAudio's "a;b" or a JSON list [ "a" "b" ].
                let joined = parse_json_list(v).join(";");
                Some(IpAcl::parse("auth.ip-acl", &joined).map_err(|e| e.to_string())?)
            }
        };
        let cookie = match args.get("auth.cookie") {
            None => None,
            Some(p) => Some(
                Cookie::load(std::path::Path::new(p)).map_err(|e| format!("auth.cookie: {e}"))?,
            ),
        };
        if !anonymous && acl.is_none() && cookie.is_none() {
            return Err(
                "no way to admit peers: set auth.anonymous = true, auth.ip-acl = \"<addresses>\", \
                 or auth.cookie = <cookie file>"
                    .into(),
            );
        }
        let get = |k: &str| args.get(k).map(str::to_string);
        let (target_ms, max_ms) = parse_latency_bounds(
            PW_RECEIVER,
            &get,
            "sess.latency.msec",
            "sess.latency.max.msec",
        )?;
        let (target_ms, max_ms) = (u64::from(target_ms), u64::from(max_ms));
        let max_connections =
            argtable::int::<usize>(PW_RECEIVER, "max.connections", args.get("max.connections"))?;
        let target = args.get("target.object").map(str::to_string);
        let target_source = args.get("target.source").map(str::to_string);
        let extra_props = match args.get("stream.props") {
            None => Vec::new(),
            Some(v) => parse_object(v).map_err(|e| format!("stream.props: {e}"))?,
        };
        let pw_resampler = match args.get("opus.resampler").map(str::trim) {
            None | Some("engine") => false,
            Some("pipewire") => true,
            Some(v) => {
                return Err(format!(
                    "opus.resampler: {v:?} is not accepted (engine or pipewire)"
                ))
            }
        };
        let listener = bind(&addrs)?;
        let host = Arc::new(PwHost {
            requests: Mutex::new(VecDeque::new()),
            records: Mutex::new(VecDeque::new()),
            waker: OnceLock::new(),
        });
        let main = Rc::new(RefCell::new(MainState {
            ctx: ctx.clone(),
            host: host.clone(),
            target: target.clone(),
            target_source,
            target_usec: target_ms * 1000,
            extra_props,
            active: Vec::new(),
            recordings: Vec::new(),
            pw_resampler,
        }));
        let m2 = main.clone();
        let event = Event::new(ctx, move || {
            if let Ok(mut m) = m2.try_borrow_mut() {
                m.service();
            }
        })?;
        let _ = host.waker.set(event.handle());
        let m3 = main.clone();
        let timer = Timer::new(ctx, 1_000_000, move || {
            if let Ok(mut m) = m3.try_borrow_mut() {
                m.service();
                m.publish();
            }
        })?;
        let cfg = RecvConfig {
            anonymous,
            acl,
            cookie,
            sink: target,
            target_usec: target_ms * 1000,
            max_usec: max_ms * 1000,
            max_connections,
            external_resampler: pw_resampler,
        };
        let receiver = rx::Receiver::start(listener, cfg, host)
            .map_err(|e| format!("cannot start the listener: {e}"))?;
        let addr = receiver.local_addr();
        log::info!("listening for opus tunnels on {addr}");
        Ok(Receiver {
            receiver: Some(receiver),
            _timer: timer,
            _event: event,
            main,
            addr,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Ends every connection (their threads notice within ~200 ms) and joins them; requests
        // still queued are refused, then the streams go.
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
        log::info!("stopped listening on {}", self.addr);
    }
}

declare_pw_module!(
    Receiver,
    ModuleInfo {
        author: "opus-tunnel developers",
        description: "Receives Opus tunnels: plays each sink tunnel as a stream, records a source for each source tunnel",
        usage: PW_RECEIVER_USAGE,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("tcp:4715").unwrap().len(), 2);
        assert_eq!(
            parse_address("tcp:127.0.0.1:4716").unwrap(),
            vec!["127.0.0.1:4716".parse().unwrap()]
        );
        assert_eq!(
            parse_address("tcp:[::1]:4716").unwrap(),
            vec!["[::1]:4716".parse().unwrap()]
        );
        assert!(parse_address("unix:/x").is_err());
        assert!(parse_address("tcp:nope").is_err());
    }
}
