//! # libpipewire-module-opus-protocol-tcp
//!
//! The receiving end on a PipeWire host: listens on TCP (port 4715 by default); each tunnel
//! that connects (from `module-tunnel-sink-opus` on PulseAudio or
//! `libpipewire-module-opus-tunnel` on PipeWire) becomes a playback stream
//! (`Stream/Output/Audio`, F32 interleaved at the tunnel's rate and channels) that the session
//! manager links to the sink the sender names, `target.object`, or the default sink. A record
//! tunnel (from `module-tunnel-source-opus`, or `libpipewire-module-opus-tunnel` with
//! `tunnel.mode = source`) gets a capture stream (`Stream/Input/Audio`) on the source it
//! names, `target.source` or the default source — only while the desktop end has readers;
//! what it captures is encoded and sent. Refusals carry the same status and reason as
//! `module-opus-protocol-tcp`'s (400, 403, 404, 415, 503, 505).
//!
//! ## Arguments
//!
//! | argument | accepts | meaning | default |
//! |---|---|---|---|
//! | `server.address` | `[ "tcp:[ADDR:]PORT" ]` | the address to listen on | `[ "tcp:4715" ] (all addresses, IPv6 and IPv4)` |
//! | `auth.anonymous` | bool | accept any peer | false |
//! | `auth.ip-acl` | `"ADDR[/BITS];..."` | peers admitted by address | none |
//! | `auth.cookie` | path | others must prove this cookie (challenge-response) | none |
//! | `tunnel.encryption` | auto, required, none | auto encrypts whenever the tunnel asks; required refuses cleartext tunnels (426 Encryption Required); none refuses encryption (406) | auto |
//! | `target.object` | node.name | the sink tunnels play on when the sender names none | the default sink |
//! | `target.source` | node.name | the source record tunnels record from when the desktop names none (NAME.monitor: a sink's monitor) | the default source |
//! | `sess.latency.msec` | auto, 1-10000 | receive buffer target: sized from the measured lateness, or fixed, ms | auto |
//! | `sess.latency.min.msec` | 0-10000 | the least the target may be, ms | 0 |
//! | `sess.latency.max.msec` | sess.latency.min.msec to 10000 | the most the receive buffer (and its target) may hold, ms | 1000, or the minimum or a fixed target if larger |
//! | `max.connections` | 1-1024 | concurrent tunnels | 64 |
//! | `stream.props` | `{ ... }` | extra properties of every tunnel's stream | none |
//! | `opus.resampler` | engine, pipewire | who applies the drift correction: the core engine (rubato), or PipeWire's adapter through rate matching | engine |
//! | `udp.port` | 1-65535 | UDP port for the audio of transport=udp tunnels, both ways; if it cannot be bound they get TCP | 4715 |
//! | `rtp.port` | 1-65535 | UDP port on which to play plain RTP/Opus streams (RFC 7587) from senders auth.ip-acl admits (anyone with auth.anonymous = true); cleartext, unauthenticated | none (off) |
//! | `rtp.payload` | 96-127 | the RTP payload type of plain RTP/Opus on rtp.port | 96 |
//!
//! **Plain RTP** (`rtp.port`): as `module-opus-protocol-tcp`'s `rtp_port=`: each RTP/Opus
//! stream from an admitted sender address (no cookie: there is no handshake) plays as one more
//! playback stream, one per sender address and SSRC, ending 3 s after its last packet; it is
//! cleartext and unauthenticated, so `tunnel.encryption = required` refuses it at load.
//!
//! ## Example
//!
//! ```text
//! context.modules = [
//!     { name = libpipewire-module-opus-protocol-tcp
//!       args = { server.address = [ "tcp:4715" ] auth.ip-acl = "192.168.0.0/16" target.object = "speakers" } }
//! ]
//! ```
//!
//! ## Inside
//!
//! The network side is `opus_tunnel_core::server` (a listener thread, a thread per
//! connection, lock-free rings) and the main-thread logic `opus_tunnel_core::session`; this
//! module is the PipeWire glue: it implements `session::Daemon`, wakes the main loop through a
//! main-loop event, and each stream's process callback on PipeWire's data thread takes the
//! audio out with `Playback::pop`.

use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::args::{parse_latency_bounds, PLAY_MAX_LATENCY_MSEC, PW_LATENCY_KEYS};
use opus_tunnel_core::argtable::{self, keys, parse_flag, PW_RECEIVER, PW_RECEIVER_USAGE};
use opus_tunnel_core::auth::Cookie;
use opus_tunnel_core::connection::ConnShared;
use opus_tunnel_core::decode::Playback;
use opus_tunnel_core::encode::Feeder;
use opus_tunnel_core::params::DEFAULT_PORT;
use opus_tunnel_core::plain_rtp::{self, RtpReceiver};
use opus_tunnel_core::secure::Mode;
use opus_tunnel_core::server::{self, RecvConfig};
use opus_tunnel_core::session::{Daemon, MainThread, NewStream, Refusal, Sessions, StreamHandle};
use opus_tunnel_pipewire::{
    channel_positions, declare_pw_module, parse_json_list, parse_object, Args, Context, Direction,
    Event, EventHandle, ModuleInfo, PwModule, Stream, StreamIo, StreamSpec, StreamState, Timer,
};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

/// The PipeWire side of the receiver's sessions (main thread).
struct Pipewire {
    ctx: Context,
    /// The latency our streams ask of the graph (`LatencyBounds::device_request_usec`).
    request_usec: u64,
    extra_props: Vec<(String, String)>,
    /// `opus.resampler = pipewire`: PipeWire's adapter resamples (rate matching).
    pw_resampler: bool,
    /// Wakes the main thread when a stream fails or is disconnected.
    waker: Option<EventHandle>,
}

/// A tunnel's stream, and whether it failed or was disconnected (its node destroyed, e.g.
/// `pw-cli destroy`).
struct PwStream {
    stream: Stream,
    dead: Rc<Cell<bool>>,
}

impl StreamHandle for PwStream {
    fn gone(&self) -> bool {
        self.dead.get()
    }
    fn publish(&self, props: &[(String, String)]) {
        self.stream.update_properties(props);
    }
}

/// Where a record tunnel's capture stream records from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CaptureTarget {
    /// `target.object` of the stream (`None`: the default source).
    node: Option<String>,
    /// The node is a sink and the stream records its monitor (`stream.capture.sink`).
    monitor: bool,
}

/// The capture stream's side on PipeWire's data thread: hands what it records to the
/// tunnel's encoder (float32, native endian = the wire's float32le on the hosts we build for).
struct CaptureIo(Feeder);

impl StreamIo for CaptureIo {
    fn consume(&mut self, data: &[u8]) {
        self.0.push(data, true);
    }
}

/// The stream's side on PipeWire's data thread; with `opus.resampler = pipewire` (the
/// flag) it hands the engine's ratio to the stream's adapter. It tells the tunnel how long
/// the device takes to play what it pulls (for the latency the sender reports).
struct ReceiverIo(Playback, bool, Arc<ConnShared>);

impl StreamIo for ReceiverIo {
    fn fill(&mut self, out: &mut [f32]) {
        self.0.pop(out);
    }
    fn rate_match(&mut self) -> Option<f64> {
        self.1.then(|| self.0.ratio())
    }
    fn device_latency(&mut self, usec: u64) {
        self.2.note_device_latency_usec(usec);
    }
}

/// What a tunnel's stream is: its class, category, role and node name.
fn kind_props(class: &str, category: &str, role: &str, node: String) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = [
        ("media.class", class),
        ("media.category", category),
        ("media.role", role),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.push(("node.name".into(), node));
    p
}

fn is_source(class: &str) -> bool {
    class.starts_with("Audio/Source") || class == "Audio/Duplex"
}

fn is_sink(class: &str) -> bool {
    class.starts_with("Audio/Sink")
}

impl Daemon for Pipewire {
    type Play = PwStream;
    type Capture = PwStream;
    type Parked = Box<dyn StreamIo>;
    type Source = CaptureTarget;

    /// The sink must be a node of the graph now (checked on the spot, as the PulseAudio
    /// receiver does: the module runs inside the daemon); the session manager links the
    /// stream to it.
    fn open_play(
        &mut self,
        device: Option<&str>,
        new: NewStream<'_, Playback>,
    ) -> Result<(PwStream, String), Refusal> {
        let conn = new.conn;
        let nodes = self.ctx.nodes();
        let found = match device {
            Some(d) => nodes.iter().any(|n| n.name == d && is_sink(&n.media_class)),
            None => nodes.iter().any(|n| is_sink(&n.media_class)),
        };
        if !found {
            return Err(Refusal::no_device("sink", device));
        }
        let node = format!("opus-tunnel.{}", clean(&conn.label));
        let mut p = kind_props("Stream/Output/Audio", "Playback", "Music", node);
        if let Some(d) = device {
            p.push(("target.object".into(), d.into()));
        }
        p.extend(new.props);
        let io = Box::new(ReceiverIo(new.io, self.pw_resampler, conn.clone()));
        let stream = self
            .open_stream(conn, new.name, p, Direction::Playback, io, "stream")
            .map_err(Refusal::refused)?;
        Ok((stream, device.unwrap_or("@DEFAULT_SINK@").to_string()))
    }

    /// The source it asked for, `target.source`, or the default source; `NAME.monitor`
    /// (PulseAudio's name of a sink's monitor) records the sink `NAME`'s monitor.
    fn resolve_source(&mut self, wanted: Option<&str>) -> Result<(CaptureTarget, String), Refusal> {
        let nodes = self.ctx.nodes();
        let Some(name) = wanted else {
            if nodes.iter().any(|n| is_source(&n.media_class)) {
                let t = CaptureTarget {
                    node: None,
                    monitor: false,
                };
                return Ok((t, "@DEFAULT_SOURCE@".into()));
            }
            return Err(Refusal::no_device("source", None));
        };
        if let Some(n) = nodes.iter().find(|n| n.name == name) {
            if is_source(&n.media_class) || is_sink(&n.media_class) {
                let monitor = is_sink(&n.media_class);
                let label = if monitor {
                    format!("{name}.monitor")
                } else {
                    name.into()
                };
                let t = CaptureTarget {
                    node: Some(name.into()),
                    monitor,
                };
                return Ok((t, label));
            }
        }
        if let Some(sink) = name.strip_suffix(".monitor") {
            if nodes
                .iter()
                .any(|n| n.name == sink && is_sink(&n.media_class))
            {
                let t = CaptureTarget {
                    node: Some(sink.into()),
                    monitor: true,
                };
                return Ok((t, name.into()));
            }
        }
        Err(Refusal::no_device("source", Some(name)))
    }

    fn park(&mut self, feeder: Feeder) -> Box<dyn StreamIo> {
        Box::new(CaptureIo(feeder))
    }

    fn open_capture(
        &mut self,
        target: &CaptureTarget,
        new: NewStream<'_, Box<dyn StreamIo>>,
    ) -> Result<PwStream, String> {
        let conn = new.conn;
        let node = format!("opus-tunnel-rec.{}", clean(&conn.label));
        let mut p = kind_props("Stream/Input/Audio", "Capture", "Communication", node);
        // Down-mix as PulseAudio does (stereo → mono averages the channels): PipeWire's
        // default matrix sums at -3 dB each, which lifts a stereo source by 3 dB in a mono
        // tunnel (and can clip).
        p.push(("channelmix.normalize".into(), "true".into()));
        if let Some(node) = &target.node {
            p.push(("target.object".into(), node.clone()));
        }
        if target.monitor {
            p.push(("stream.capture.sink".into(), "true".into()));
        }
        p.extend(new.props);
        self.open_stream(
            conn,
            new.name,
            p,
            Direction::Capture,
            new.io,
            "capture stream",
        )
    }

    fn close_capture(&mut self, s: PwStream) -> Option<Box<dyn StreamIo>> {
        s.stream.into_io()
    }
}

impl Pipewire {
    /// Creates a tunnel's stream with `props` (ours, then the tunnel's own) after the common
    /// ones, and the module's extra and statistics properties after them. It is marked gone
    /// (and the main thread woken) when it fails or is disconnected.
    fn open_stream(
        &self,
        conn: &ConnShared,
        name: &str,
        props: Vec<(String, String)>,
        direction: Direction,
        io: Box<dyn StreamIo>,
        what: &'static str,
    ) -> Result<PwStream, String> {
        // A quantum near the requested latency, as a power of two (PipeWire's quanta are).
        let want = (u64::from(conn.rate) * self.request_usec / 1_000_000).clamp(256, 8192);
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
        let waker = self.waker.clone();
        let label = conn.label.clone();
        let gone = move || {
            d2.set(true);
            if let Some(w) = &waker {
                w.signal();
            }
        };
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
                    gone();
                }
                StreamState::Unconnected => gone(),
                _ => {}
            })),
        )?;
        Ok(PwStream { stream, dead })
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
    receiver: Option<server::Receiver>,
    /// `rtp.port`: plain RTP streams.
    rtp: Option<RtpReceiver>,
    _timer: Timer,
    _event: Event,
    main: MainThread<Pipewire>,
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
    let all = server::any_address;
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
        let encryption = Mode::parse("tunnel.encryption", args.get("tunnel.encryption"))?;
        let udp_port = argtable::int::<u16>(PW_RECEIVER, "udp.port", args.get("udp.port"))?;
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
        let bounds =
            parse_latency_bounds(PW_RECEIVER, &get, PW_LATENCY_KEYS, PLAY_MAX_LATENCY_MSEC)?;
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
        let rtp_port = argtable::parse_int::<u16>("rtp.port", args.get("rtp.port"), 0, 1, 65535)?;
        let rtp_payload = argtable::int::<u8>(PW_RECEIVER, "rtp.payload", args.get("rtp.payload"))?;
        if rtp_port == 0 && args.get("rtp.payload").is_some() {
            return Err("rtp.payload: only with rtp.port = <UDP port>".into());
        }
        if rtp_port != 0 && !anonymous && acl.is_none() {
            return Err(
                "rtp.port: plain RTP has no handshake, so no cookie can admit its senders: give \
                 auth.ip-acl = \"<addresses>\" (or auth.anonymous = true)"
                    .into(),
            );
        }
        if rtp_port != 0 && encryption == Mode::Required {
            return Err(
                "rtp.port: plain RTP is always cleartext and unauthenticated, but \
                 tunnel.encryption = required; drop one of them"
                    .into(),
            );
        }
        let listener = server::bind(&addrs)?;
        // Plain RTP listens on the same address as the tunnels (all of them for a bare port).
        let rtp_ip = match addrs.as_slice() {
            [one] => Some(one.ip()),
            _ => None,
        };
        let rtp_sock = match rtp_port {
            0 => None,
            p => Some(plain_rtp::bind(rtp_ip, p).map_err(|e| e.replace("rtp_port", "rtp.port"))?),
        };
        let main = MainThread::new(
            Pipewire {
                ctx: ctx.clone(),
                request_usec: bounds.device_request_usec(),
                extra_props,
                pw_resampler,
                waker: None,
            },
            Sessions::new(target, target_source),
        );
        let event = Event::new(ctx, main.on_wake())?;
        let host = main
            .with(|pw, sessions| {
                pw.waker = Some(event.handle());
                let handle = event.handle();
                sessions.set_waker(move || handle.signal());
                sessions.host()
            })
            .ok_or("the module state is busy")?;
        let timer = Timer::new(ctx, 1_000_000, main.on_tick())?;
        let rtp_cfg = plain_rtp::RecvConfig {
            anonymous,
            acl: acl.clone(),
            payload_type: rtp_payload,
            target_usec: bounds.target_usec,
            min_usec: bounds.min_usec,
            max_usec: bounds.max_usec,
            max_streams: max_connections,
            external_resampler: pw_resampler,
        };
        let rtp_host = host.clone();
        let cfg = RecvConfig {
            anonymous,
            acl,
            cookie,
            target_usec: bounds.target_usec,
            min_usec: bounds.min_usec,
            max_usec: bounds.max_usec,
            max_connections,
            external_resampler: pw_resampler,
            encryption,
            udp_port: Some(udp_port),
            realtime: None,
        };
        let receiver = server::Receiver::start(listener, cfg, host)
            .map_err(|e| format!("cannot start the listener: {e}"))?;
        let addr = receiver.local_addr();
        log::info!("listening for opus tunnels on {addr}");
        let rtp = match rtp_sock {
            None => None,
            Some(sock) => {
                let r = RtpReceiver::start(sock, rtp_cfg, rtp_host)
                    .map_err(|e| format!("cannot start the plain RTP listener: {e}"))?;
                log::info!(
                    "playing plain RTP/Opus (payload type {rtp_payload}) arriving on UDP {} \
                     (cleartext, unauthenticated; senders admitted by address)",
                    r.local_addr()
                );
                Some(r)
            }
        };
        Ok(Receiver {
            receiver: Some(receiver),
            rtp,
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
        drop(self.rtp.take());
        drop(self.receiver.take());
        self.main.with(|_, sessions| sessions.shutdown());
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

opus_tunnel_core::manual_matches_table!(PW_RECEIVER);
