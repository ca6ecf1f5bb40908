//! # module-opus-protocol-tcp
//!
//! The receiving end, on the user's machine: listens on TCP (port 4715 by default) for tunnels
//! from `module-tunnel-sink-opus` and `libpipewire-module-opus-tunnel` (each becomes a
//! stream, a sink-input named `<sender sink> on <sender host>`, on a local sink, decoded
//! through a jitter buffer with Opus packet-loss concealment and a drift-correcting
//! resampler), and for record tunnels from `module-tunnel-source-opus` (each records a local
//! source through a source-output, only while the desktop end has readers, and sends it
//! encoded). PulseAudio's authentication rules: `auth-anonymous=1` admits everyone; otherwise
//! an address in `auth-ip-acl` is admitted, and anyone else must prove the cookie (never sent:
//! challenge-response).
//!
//! ## Arguments
//!
//! | argument | accepts | meaning | default |
//! |---|---|---|---|
//! | `port` | 1-65535 | TCP port | 4715 |
//! | `listen` | IP address | address to listen on | all (IPv6 and IPv4) |
//! | `auth-anonymous` | bool | accept any peer | false |
//! | `auth-ip-acl` | `ADDR[/BITS];...` | peers allowed without a cookie | none |
//! | `auth-cookie` | path | the cookie file everyone else must prove | PulseAudio's: $PULSE_COOKIE, ~/.config/pulse/cookie, ~/.pulse-cookie |
//! | `auth-cookie-enabled` | bool | require the cookie from peers the ACL does not admit | true |
//! | `encryption` | auto, required, none | auto encrypts whenever the tunnel asks; required refuses cleartext tunnels (426 Encryption Required); none refuses encryption (406) | auto |
//! | `sink` | name | sink that play tunnels use when the sender names none | the default sink |
//! | `source` | name | source that record tunnels use when the desktop names none | the default source |
//! | `target_latency_msec` | auto, 1-10000 | receive buffer target: sized from the measured lateness, or fixed, ms | auto |
//! | `min_latency_msec` | 0-10000 | the least the receive buffer target may be, ms | 0 |
//! | `max_latency_msec` | min_latency_msec to 10000 | the most the receive buffer (and its target) may hold, ms | 1000, or the minimum or a fixed target if larger |
//! | `max_connections` | 1-1024 | concurrent tunnels; one more is refused with 503 | 64 |
//! | `udp_port` | 1-65535 | UDP port (on the listen address) for the audio of transport=udp tunnels, both ways; if it cannot be bound they get TCP | 4715 |
//! | `rtp_port` | 1-65535 | UDP port on which to play plain RTP/Opus streams (RFC 7587) from senders auth-ip-acl admits (anyone with auth-anonymous=1); cleartext, unauthenticated | none (off) |
//! | `rtp_payload` | 96-127 | the RTP payload type of plain RTP/Opus on rtp_port | 96 |
//!
//! **Plain RTP** (`rtp_port=`): every RTP/Opus stream (48 kHz RTP clock, mono or stereo, of
//! payload type `rtp_payload`) from a sender that `auth-ip-acl` admits (or any sender with
//! `auth-anonymous=1`; the cookie cannot admit anyone, there is no handshake) plays as one more
//! stream on the sink, one per sender address and SSRC, and ends after 3 s without packets.
//! Datagrams from other senders, and anything that is not RTP/Opus of the stream, are dropped,
//! counted and logged (at most once per 10 s). It is cleartext and unauthenticated, so
//! `encryption=required` refuses it at load.
//!
//! A refused tunnel gets a status line both ends log: 400 (not our handshake), 403 (not
//! admitted), 404 (no such sink or source), 415 (a format we cannot play), 503 (the daemon
//! refused the stream, `max_connections` reached, or shutting down), 505 (another protocol
//! version). Each stream shows its statistics as `opus.tunnel.*` properties, refreshed every
//! second; killing it (`pactl kill-sink-input`) closes its tunnel and the sender reconnects.
//!
//! ## Example
//!
//! ```text
//! load-module module-opus-protocol-tcp auth-ip-acl=127.0.0.1;192.168.0.0/16 sink=speakers
//! ```
//!
//! ## Inside
//!
//! The network side is `opus_tunnel_core::server` (a listener thread, a thread per
//! connection, lock-free rings) and the main-thread logic `opus_tunnel_core::session`; this
//! module is the PulseAudio glue: it implements `session::Daemon` (a sink-input per play
//! tunnel, a source-output per record tunnel while it has readers), wakes the main loop through
//! an eventfd, and each stream's callback on the sink's IO thread takes audio out of its ring.

use opus_tunnel_core::acl::IpAcl;
use opus_tunnel_core::args::{parse_latency_bounds, PA_LATENCY_KEYS, PLAY_MAX_LATENCY_MSEC};
use opus_tunnel_core::argtable::{self, keys, parse_flag, RECEIVER, RECEIVER_USAGE};
use opus_tunnel_core::auth::Cookie;
use opus_tunnel_core::connection::ConnShared;
use opus_tunnel_core::decode::Playback;
use opus_tunnel_core::encode::Feeder;
use opus_tunnel_core::plain_rtp::{self, RtpReceiver};
use opus_tunnel_core::secure::Mode;
use opus_tunnel_core::server::{self, RecvConfig};
use opus_tunnel_core::session::{Daemon, MainThread, NewStream, Refusal, Sessions, StreamHandle};
use opus_tunnel_pulse::mainloop::{MainTimer, MainWaker, WakeHandle};
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::sink_input::{SinkInput, SinkInputConfig, SinkInputIo};
use opus_tunnel_pulse::source_output::{SourceOutput, SourceOutputConfig, SourceOutputIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, ModuleStream, PaModule, Proplist, SampleSpec,
};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

/// The PulseAudio side of the receiver's sessions (main thread).
struct Pulse {
    module: ModuleRef,
    /// The latency our streams ask of the sink (`LatencyBounds::device_request_usec`).
    request_usec: u64,
    /// Wakes the main thread when the daemon kills one of our streams.
    waker: Option<WakeHandle>,
}

/// A tunnel's stream: its sink-input, or a record tunnel's source-output.
struct PaStream<S>(S);

impl<S: ModuleStream> StreamHandle for PaStream<S> {
    fn gone(&self) -> bool {
        self.0.killed()
    }
    fn publish(&self, props: &[(String, String)]) {
        self.0.update_proplist(&to_proplist(props));
    }
    fn set_quiet(&self, quiet: bool) {
        self.0.set_quiet(quiet);
    }
}

/// The recording stream's side on the source's IO thread.
struct CaptureIo(Feeder);

impl SourceOutputIo for CaptureIo {
    fn push(&mut self, data: &[u8]) {
        self.0.push(data, true);
    }
}

/// The stream's side on the sink's IO thread; it also tells the tunnel how long the sink
/// takes to play what it pulls (for the latency the sender reports).
struct ReceiverIo(Playback, Arc<ConnShared>);

impl SinkInputIo for ReceiverIo {
    fn pop(&mut self, out: &mut [u8]) {
        self.0.pop_bytes(out);
    }

    fn queued_usec(&self) -> u64 {
        self.0.queued_usec()
    }

    fn device_latency(&mut self, usec: u64) {
        self.1.note_device_latency_usec(usec);
    }
}

/// The stream's format and properties (ours, then the tunnel's).
fn stream_setup(
    conn: &ConnShared,
    name: &str,
    role: &str,
    props: Vec<(String, String)>,
) -> Result<(SampleSpec, ChannelMap, Proplist), Refusal> {
    let spec = SampleSpec::new("float32le", conn.rate, conn.channels).map_err(Refusal::format)?;
    let map = ChannelMap::parse(&conn.channel_map, conn.channels)
        .or_else(|_| {
            ChannelMap::default_for(conn.channels).ok_or_else(|| "no channel map".to_string())
        })
        .map_err(Refusal::format)?;
    let mut pl = Proplist::new();
    pl.set("media.name", name);
    pl.set("application.name", "opus-tunnel");
    pl.set("media.role", role);
    for (k, v) in props {
        pl.set(&k, &v);
    }
    Ok((spec, map, pl))
}

impl Daemon for Pulse {
    type Play = PaStream<SinkInput>;
    type Capture = PaStream<SourceOutput>;
    type Parked = Box<dyn SourceOutputIo>;
    /// The source as asked for (`None`: the default source at the time a reader comes).
    type Source = Option<String>;

    fn open_play(
        &mut self,
        device: Option<&str>,
        new: NewStream<'_, Playback>,
    ) -> Result<(PaStream<SinkInput>, String), Refusal> {
        if self.module.core().sink_name(device).is_none() {
            return Err(Refusal::no_device("sink", device));
        }
        let (spec, map, pl) = stream_setup(new.conn, new.name, "music", new.props)?;
        let stream = SinkInput::new(
            &self.module,
            SinkInputConfig {
                sink: device,
                spec,
                map,
                props: pl,
                requested_latency_usec: self.request_usec,
                driver: c"module-opus-protocol-tcp",
                on_kill: self.waker.clone(),
            },
            Box::new(ReceiverIo(new.io, new.conn.clone())),
        )
        .map_err(Refusal::refused)?;
        let on = stream.sink_name().unwrap_or_default();
        Ok((PaStream(stream), on))
    }

    fn resolve_source(
        &mut self,
        wanted: Option<&str>,
    ) -> Result<(Option<String>, String), Refusal> {
        match self.module.core().source_name(wanted) {
            Some(found) => Ok((wanted.map(str::to_string), found)),
            None => Err(Refusal::no_device("source", wanted)),
        }
    }

    fn park(&mut self, feeder: Feeder) -> Box<dyn SourceOutputIo> {
        Box::new(CaptureIo(feeder))
    }

    fn open_capture(
        &mut self,
        source: &Option<String>,
        new: NewStream<'_, Box<dyn SourceOutputIo>>,
    ) -> Result<PaStream<SourceOutput>, String> {
        let (spec, map, pl) =
            stream_setup(new.conn, new.name, "phone", new.props).map_err(|r| r.reason)?;
        SourceOutput::new(
            &self.module,
            SourceOutputConfig {
                source: source.as_deref(),
                spec,
                map,
                props: pl,
                requested_latency_usec: 10_000,
                start_corked: false,
                driver: c"module-opus-protocol-tcp",
                on_kill: self.waker.clone(),
            },
            new.io,
        )
        .map(PaStream)
    }

    fn close_capture(&mut self, stream: PaStream<SourceOutput>) -> Option<Box<dyn SourceOutputIo>> {
        Some(stream.0.close())
    }
}

fn to_proplist(pairs: &[(String, String)]) -> Proplist {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(k, v);
    }
    p
}

/// The module instance.
pub struct Receiver {
    // Drop order: the network side first (connections end, no new requests), then the
    // main-loop hooks, then the streams.
    receiver: Option<server::Receiver>,
    /// `rtp_port=`: plain RTP streams.
    rtp: Option<RtpReceiver>,
    _timer: MainTimer,
    _waker: MainWaker,
    main: MainThread<Pulse>,
    port: u16,
}

/// The `listen=` address (`None`: every address).
fn listen_ip(listen: Option<&str>) -> Result<Option<IpAddr>, String> {
    listen
        .map(|a| {
            a.trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| {
                    format!("listen: {a:?} is not accepted (an IP address such as 127.0.0.1 or ::)")
                })
        })
        .transpose()
}

fn bind(listen: Option<IpAddr>, port: u16) -> Result<TcpListener, String> {
    let addrs: Vec<SocketAddr> = match listen {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => server::any_address(port),
    };
    server::bind(&addrs)
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
        let encryption = Mode::parse("encryption", get("encryption").as_deref())?;
        let udp_port = argtable::int::<u16>(RECEIVER, "udp_port", get("udp_port").as_deref())?;
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
        let bounds = parse_latency_bounds(RECEIVER, &get, PA_LATENCY_KEYS, PLAY_MAX_LATENCY_MSEC)?;
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
        let rtp_port =
            argtable::parse_int::<u16>("rtp_port", get("rtp_port").as_deref(), 0, 1, 65535)?;
        let rtp_payload =
            argtable::int::<u8>(RECEIVER, "rtp_payload", get("rtp_payload").as_deref())?;
        if rtp_port == 0 && get("rtp_payload").is_some() {
            return Err("rtp_payload: only with rtp_port=<UDP port>".into());
        }
        if rtp_port != 0 && !anonymous && acl.is_none() {
            return Err(
                "rtp_port: plain RTP has no handshake, so no cookie can admit its senders: give \
                 auth-ip-acl=<addresses> (or auth-anonymous=1)"
                    .into(),
            );
        }
        if rtp_port != 0 && encryption == Mode::Required {
            return Err(
                "rtp_port: plain RTP is always cleartext and unauthenticated, but \
                 encryption=required; drop one of them"
                    .into(),
            );
        }
        let ip = listen_ip(ma.get("listen").as_deref())?;
        let listener = bind(ip, port)?;
        let rtp_sock = match rtp_port {
            0 => None,
            p => Some(plain_rtp::bind(ip, p)?),
        };
        let main = MainThread::new(
            Pulse {
                module: *module,
                request_usec: bounds.device_request_usec(),
                waker: None,
            },
            Sessions::new(sink, ma.get("source")),
        );
        let waker = MainWaker::new(&core, main.on_wake())?;
        let host = main
            .with(|pulse, sessions| {
                pulse.waker = Some(waker.handle());
                let handle = waker.handle();
                sessions.set_waker(move || handle.wake());
                sessions.host()
            })
            .ok_or("the module state is busy")?;
        let timer = MainTimer::new(&core, 1_000_000, main.on_tick());
        let rtp_cfg = plain_rtp::RecvConfig {
            anonymous,
            acl: acl.clone(),
            payload_type: rtp_payload,
            target_usec: bounds.target_usec,
            min_usec: bounds.min_usec,
            max_usec: bounds.max_usec,
            max_streams: max_connections,
            external_resampler: false,
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
            external_resampler: false,
            encryption,
            udp_port: Some(udp_port),
            realtime: core.realtime_hook(),
        };
        let receiver = server::Receiver::start(listener, cfg, host)
            .map_err(|e| format!("cannot start the listener: {e}"))?;
        let local = receiver.local_addr();
        log::info!("listening for opus tunnels on {local}");
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
            _waker: waker,
            main,
            port: local.port(),
        })
    }

    fn n_used(&self) -> i32 {
        self.main
            .with(|_, sessions| sessions.len() as i32)
            .unwrap_or(0)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Ends every connection (their threads notice within ~200 ms) and joins them; a
        // request still queued is refused, then the streams go.
        drop(self.rtp.take());
        drop(self.receiver.take());
        self.main.with(|_, sessions| sessions.shutdown());
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

opus_tunnel_core::manual_matches_table!(RECEIVER);
