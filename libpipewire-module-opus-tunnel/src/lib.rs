//! # libpipewire-module-opus-tunnel
//!
//! With `tunnel.mode = sink`, an `Audio/Sink` node on a PipeWire host whose audio is encoded
//! (Opus, or L16 PCM with `compression = none`) and streamed over TCP to
//! `module-opus-protocol-tcp` (PulseAudio) or `libpipewire-module-opus-protocol-tcp` (PipeWire)
//! on another machine, to be played there on `remote.sink`. With `tunnel.mode = source`, an
//! `Audio/Source` node fed from `remote.source` on that machine (the user's microphone),
//! recorded there only while something reads the node here. When the link is down the node
//! stays and the module reconnects with back-off.
//!
//! ## Module Options
//!
//! | argument | accepts | meaning | default |
//! |---|---|---|---|
//! | `tunnel.mode` | sink, source | the tunnel's direction | sink |
//! | `server.address` | "tcp:HOST:PORT" | the far end; port 4715 by default | required |
//! | `remote.sink` | name | sink mode: the sink to play on at the receiver | the receiver's choice |
//! | `remote.source` | name | source mode: the source to record at the far end | the far end's source= / target.source, else its default source |
//! | `sess.latency.msec` | auto, 1-10000 | source mode: receive buffer target: sized from the measured lateness, or fixed, ms | auto |
//! | `sess.latency.min.msec` | 0-10000 | source mode: the least the target may be, ms | 0 |
//! | `sess.latency.max.msec` | sess.latency.min.msec to 10000 | source mode: the most the receive buffer may hold, ms | 2500 (a source may post 2 s at once), or the minimum or a fixed target if larger |
//! | `stream.props` | `{ ... }` | properties of the node: node.name, node.description, node.latency, ... | `sink: node.name = tunnel-opus.<host>, node.latency = 1024/48000; source: node.name = tunnel-opus-source.<host>, node.latency = 512/48000` |
//! | `audio.rate` | 1-384000 | sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000 | 48000 |
//! | `audio.channels` | 1-32 | channels: 1-8 (with Opus 3-8 are multistream surround) | 2 (source mode: 1) |
//! | `audio.position` | `[ FL FR ... ]` | channel positions | by channel count |
//! | `compression` | opus, none | Opus, or L16 PCM | opus |
//! | `auth.cookie` | path | a copy of the receiver's cookie, proven when it asks | none |
//! | `tunnel.encryption` | auto, required, none | encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a receiver of protocol version 1; required never sends cleartext; none is cleartext (debugging) | auto |
//! | `tunnel.transport` | tcp, udp | audio over TCP, or RTP over UDP: sink mode to the receiver's UDP port, source mode from it (control stays on TCP; TCP when the receiver cannot grant UDP) | tcp |
//! | `compression.bitrate` | 6000-510000 | Opus bit rate, bit/s, or kbit/s with a k suffix such as 64k | 64000 (source mode: 32000; 3-8 channels: 32000 a channel) |
//! | `compression.frame_size` | 2.5, 5, 10, 20, 40, 60 | frame duration, ms (also the size of PCM packets); with `tunnel.transport = udp` 10 unless given | 20 |
//! | `compression.opus.complexity` | 0-10 | encoder complexity | 10 |
//! | `compression.opus.max_bandwidth` | narrowband, mediumband, wideband, superwideband, fullband | audio bandwidth limit | fullband |
//! | `compression.opus.signal` | auto, voice, music | signal hint | auto |
//! | `compression.opus.vbr` | bool | variable bit rate | true |
//! | `compression.opus.vbr_constraint` | bool | constrained VBR | false |
//! | `compression.opus.application` | voip, audio, lowdelay | encoder mode | audio |
//! | `compression.opus.lsb_depth` | 8-24 | input resolution hint, bits | 16 |
//! | `compression.opus.dtx` | bool | discontinuous transmission | false |
//! | `compression.opus.fec` | bool | in-band forward error correction; with `tunnel.transport = udp` on unless given | false |
//! | `compression.opus.packet_loss` | 0-100 | expected packet loss, percent | 0 |
//!
//! `audio.rate`, `audio.channels` and `audio.position` may also be given inside
//! `stream.props`. The `compression.*` knobs also change live, without reconnecting:
//! `pw-cli set-param <node id> Props '{ params = [ "compression.bitrate" 16000 ] }'`; a
//! refused value is logged and the node's properties show the effective values again.
//!
//! ## Example configuration
//!
//! ```text
//! context.modules = [
//!     { name = libpipewire-module-opus-tunnel
//!       args = {
//!           tunnel.mode = sink
//!           server.address = "tcp:192.168.1.10:4715"
//!           compression.bitrate = 96000
//!           stream.props = { node.name = office node.description = "Office speakers" }
//!       }
//!     }
//! ]
//! ```
//!
//! ## Inside
//!
//! Sink: the node's process callback on PipeWire's data thread pushes what it receives into a
//! lock-free ring (`opus_tunnel_core::encode::Feeder`, never blocking); the core's worker thread
//! converts, encodes, packetises, sends and reconnects. Source: the core's thread receives,
//! decodes and drift-corrects into a ring the node's process callback pops
//! (`opus_tunnel_core::client::start_record`). The main thread follows the node's state (streaming
//! or not), publishes statistics as node properties once a second and applies knob changes.

use opus_tunnel_core::args::{
    check_encoder, codec_summary, device_description, effective_properties, load_cookie,
    parse_compression, parse_knobs, parse_latency_bounds, scale_bitrate, udp_knobs, voice_knobs,
    LatencyBounds, PW_LATENCY_KEYS, RECORD_MAX_LATENCY_MSEC,
};
use opus_tunnel_core::argtable::{self, keys, PW_TUNNEL, PW_TUNNEL_USAGE};
use opus_tunnel_core::client::{start_play, start_record, RecordClient, RecordClientConfig};
use opus_tunnel_core::codec::{self, StreamFormat};
use opus_tunnel_core::control::{KnobControl, KnobStore};
use opus_tunnel_core::decode::Playback;
use opus_tunnel_core::encode::{Feeder, Shared, WorkerConfig};
use opus_tunnel_core::params::{self, Compression, OpusKnobs};
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_core::secure::Mode as Encryption;
use opus_tunnel_core::udp::Transport;
use opus_tunnel_pipewire::{
    declare_pw_module, host_name, parse_json_list, parse_object, Args, Context, Direction,
    ModuleInfo, PwModule, Stream, StreamHandle, StreamIo, StreamSpec, StreamState, Timer,
};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The node's real-time side: hands what it receives to the tunnel's worker.
struct SinkIo {
    feeder: Feeder,
    running: Arc<AtomicBool>,
}

impl StreamIo for SinkIo {
    fn consume(&mut self, data: &[u8]) {
        self.feeder.push(data, self.running.load(Ordering::Relaxed));
    }
}

/// The source node's real-time side: plays what the tunnel's engine put in its ring.
struct SourceIo(Playback);

impl StreamIo for SourceIo {
    fn fill(&mut self, out: &mut [f32]) {
        self.0.pop(out);
    }
}

/// The direction's own parts.
enum Mode {
    Sink {
        shared: Arc<Shared>,
        worker: Option<JoinHandle<()>>,
    },
    Source {
        _client: Rc<RecordClient>,
    },
}

/// The module instance.
pub struct Tunnel {
    // `Drop` stops and joins a sink's worker first; then the timer and the stream go, then a
    // source's tunnel thread (dropping the client joins it).
    _timer: Timer,
    _stream: Stream,
    mode: Mode,
}

/// Applies knob changes set on the node (`Props` → `params`) live: each is checked as at load
/// (a bad one is refused with a log line naming the key and the accepted range), then the
/// node's properties show the effective value of every knob again.
fn knob_control(
    node: String,
    stream: StreamHandle,
    store: impl KnobStore + 'static,
    compression: Compression,
    fmt: StreamFormat,
) -> impl FnMut(Vec<(String, String)>) + 'static {
    let control = KnobControl::new(store, compression, fmt, node, "retuned live:");
    move |pairs| {
        control.apply_and_publish(&pairs, |eff| stream.update_properties(eff));
    }
}

/// PulseAudio channel names (the wire's channel map) for SPA position names.
fn pa_channel(spa: &str) -> Option<&'static str> {
    Some(match spa {
        "MONO" => "mono",
        "FL" => "front-left",
        "FR" => "front-right",
        "FC" => "front-center",
        "LFE" => "lfe",
        "RL" => "rear-left",
        "RR" => "rear-right",
        "RC" => "rear-center",
        "SL" => "side-left",
        "SR" => "side-right",
        "FLC" => "front-left-of-center",
        "FRC" => "front-right-of-center",
        _ => return None,
    })
}

fn channel_map(position: Option<&str>, channels: u8) -> Result<String, String> {
    if let Some(p) = position {
        let names: Vec<String> = parse_json_list(p);
        let mapped: Option<Vec<String>> = names
            .iter()
            .map(|n| {
                pa_channel(n).map(str::to_string).or_else(|| {
                    n.strip_prefix("AUX")
                        .and_then(|x| x.parse::<u32>().ok())
                        .map(|i| format!("aux{i}"))
                })
            })
            .collect();
        return match mapped {
            Some(m) if m.len() == usize::from(channels) => Ok(m.join(",")),
            _ => Err(format!(
                "audio.position: {p:?} is not accepted ({channels} of MONO, FL, FR, FC, LFE, RL, RR, RC, SL, SR, FLC, FRC, AUXn)"
            )),
        };
    }
    Ok(match channels {
        1 => "mono".to_string(),
        2 => "front-left,front-right".to_string(),
        // Quad, 5.1 and 7.1 in PipeWire's usual order, so that Opus codes them as surround
        // (coupled pairs, LFE) and the receiver's stream gets positions.
        4 => "front-left,front-right,rear-left,rear-right".to_string(),
        6 => "front-left,front-right,front-center,lfe,rear-left,rear-right".to_string(),
        8 => "front-left,front-right,front-center,lfe,rear-left,rear-right,side-left,side-right"
            .to_string(),
        n => (0..n)
            .map(|i| format!("aux{i}"))
            .collect::<Vec<_>>()
            .join(","),
    })
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl PwModule for Tunnel {
    fn init(ctx: &Context, args: &Args) -> Result<Self, String> {
        args.check_keys(&keys(PW_TUNNEL))?;
        let source_mode = match args.get("tunnel.mode").unwrap_or("sink") {
            "sink" => false,
            "source" => true,
            other => {
                return Err(format!(
                    "tunnel.mode: {other:?} is not accepted (sink or source)"
                ))
            }
        };
        if source_mode && args.get("remote.sink").is_some() {
            return Err("remote.sink: only with tunnel.mode = sink (use remote.source)".into());
        }
        if !source_mode && args.get("remote.source").is_some() {
            return Err("remote.source: only with tunnel.mode = source (use remote.sink)".into());
        }
        for key in PW_LATENCY_KEYS {
            if !source_mode && args.get(key).is_some() {
                return Err(format!("{key}: only with tunnel.mode = source"));
            }
        }
        let server = args.get("server.address").ok_or_else(|| {
            "server.address: missing; give the receiver's address, e.g. server.address = \"tcp:192.168.1.10:4715\"".to_string()
        })?;
        let server = match parse_json_list(server).as_slice() {
            [one] => one.clone(),
            _ => return Err(format!("server.address: {server:?}: give one address")),
        };
        let addr = params::parse_server(&server, params::DEFAULT_PORT)
            .map_err(|e| format!("server.address: {e}"))?;
        if addr.is_rtp() {
            return Err(format!(
                "server.address: {server:?}: plain RTP (rtp://) is sent by PulseAudio's \
                 module-tunnel-sink-opus only; give tcp:HOST:PORT"
            ));
        }
        let get = |k: &str| args.get(k).map(str::to_string);
        let compression = parse_compression(args.get("compression"))?;
        let base_knobs = if source_mode {
            voice_knobs()
        } else {
            OpusKnobs::default()
        };
        let mut knobs = parse_knobs(&get, base_knobs)?;
        let mut stream_props: Vec<(String, String)> = match args.get("stream.props") {
            None => Vec::new(),
            Some(v) => parse_object(v).map_err(|e| format!("stream.props: {e}"))?,
        };
        let given = stream_props.clone();
        let lookup = |key: &str| -> Option<String> {
            args.get(key)
                .map(str::to_string)
                .or_else(|| given.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
        };
        let rate = argtable::int::<u32>(PW_TUNNEL, "audio.rate", lookup("audio.rate").as_deref())?;
        let channels = argtable::parse_int::<u8>(
            "audio.channels",
            lookup("audio.channels").as_deref(),
            if source_mode { 1 } else { 2 },
            1,
            32,
        )?;
        let map = channel_map(lookup("audio.position").as_deref(), channels)?;
        let fmt = StreamFormat { rate, channels };
        codec::validate(compression, &fmt).map_err(|e| e.to_string())?;
        scale_bitrate(&mut knobs, &get, channels, base_knobs.bitrate);
        check_encoder(compression, fmt, &knobs)?;
        let cookie = load_cookie("auth.cookie", args.get("auth.cookie"))?;
        let encryption = Encryption::parse("tunnel.encryption", args.get("tunnel.encryption"))?;
        let transport = Transport::parse("tunnel.transport", args.get("tunnel.transport"))?;
        udp_knobs(transport, &mut knobs, &get);
        let remote_sink = args.get("remote.sink").map(str::to_string);
        let host_part = match &addr {
            params::ServerAddr::Tcp { host, .. } | params::ServerAddr::Rtp { host, .. } => {
                host.clone()
            }
            params::ServerAddr::Unix(p) => p.display().to_string(),
        };
        // The user's stream.props win (audio.* are ours to interpret, not node properties).
        stream_props.retain(|(k, _)| !k.starts_with("audio."));
        if source_mode {
            let bounds =
                parse_latency_bounds(PW_TUNNEL, &get, PW_LATENCY_KEYS, RECORD_MAX_LATENCY_MSEC)?;
            let node_name = lookup("node.name")
                .unwrap_or_else(|| format!("tunnel-opus-source.{}", clean(&host_part)));
            return Tunnel::source(
                ctx,
                SourceSetup {
                    addr,
                    remote_source: args.get("remote.source").map(str::to_string),
                    node_name,
                    description: lookup("node.description"),
                    latency: lookup("node.latency"),
                    compression,
                    knobs,
                    fmt,
                    map,
                    cookie,
                    encryption,
                    transport,
                    bounds,
                    stream_props,
                },
            );
        }
        let node_name =
            lookup("node.name").unwrap_or_else(|| format!("tunnel-opus.{}", clean(&host_part)));
        let description = lookup("node.description")
            .unwrap_or_else(|| device_description("to", &addr, remote_sink.as_deref()));
        // The graph's block for this node: 1024 frames at 48 kHz (~21 ms) unless given.
        let latency = lookup("node.latency")
            .unwrap_or_else(|| format!("{}/{rate}", (u64::from(rate) * 1024 / 48_000).max(64)));
        let block_usec = latency
            .split_once('/')
            .and_then(|(n, d)| Some((n.trim().parse::<u64>().ok()?, d.trim().parse::<u64>().ok()?)))
            .filter(|(_, d)| *d > 0)
            .map(|(n, d)| n * 1_000_000 / d)
            .unwrap_or(21_333)
            .clamp(1_000, 200_000);

        let sample_format = SampleFormat::parse("float32le").map_err(|e| e.to_string())?;
        let frame_bytes = 4 * usize::from(channels);
        let ring_bytes = frame_bytes * rate as usize / 2;
        let cfg = WorkerConfig {
            addr: addr.clone(),
            remote_sink: remote_sink.clone(),
            name: node_name.clone(),
            host: host_name(),
            compression,
            fmt,
            sample_format,
            channel_map: map.clone(),
            block_usec,
            cookie,
            encryption,
            transport,
            // PipeWire's own threads are raised by its RT module; ours run as spawned (as
            // the receiver's do here).
            realtime: None,
        };
        let (feeder, shared, worker) = start_play(cfg, knobs, ring_bytes)
            .map_err(|e| format!("cannot start the worker thread: {e}"))?;

        let mut props: Vec<(String, String)> = vec![
            ("media.class".into(), "Audio/Sink".into()),
            ("node.name".into(), node_name.clone()),
            ("node.description".into(), description),
            ("node.latency".into(), latency),
            ("device.class".into(), "sound".into()),
            ("device.icon-name".into(), "network-server".into()),
            ("opus.tunnel.server".into(), addr.to_string()),
            (
                "opus.tunnel.remote_sink".into(),
                remote_sink.clone().unwrap_or_default(),
            ),
        ];
        props.extend(effective_properties(compression, &knobs));
        props.push(("opus.tunnel.state".into(), "connecting".into()));
        for (k, v) in stream_props {
            props.retain(|(pk, _)| *pk != k);
            props.push((k, v));
        }
        let positions = opus_tunnel_pipewire::channel_positions(&map, channels);
        let running = Arc::new(AtomicBool::new(false));
        let (r2, s2) = (running.clone(), shared.clone());
        let name2 = node_name.clone();
        let stream = Stream::new(
            ctx,
            &StreamSpec {
                name: &node_name,
                props: &props,
                direction: Direction::Capture,
                rate,
                channels,
                positions: &positions,
            },
            Box::new(SinkIo {
                feeder,
                running: running.clone(),
            }),
            Some(Box::new(move |st| {
                let now = st == StreamState::Streaming;
                if let StreamState::Error(e) = &st {
                    log::warn!("{name2}: stream error: {e}");
                }
                if r2.swap(now, Ordering::SeqCst) != now {
                    s2.running.store(now, Ordering::SeqCst);
                    s2.wake_worker();
                }
            })),
        );
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                shared.stop_and_join(worker);
                return Err(e);
            }
        };
        log::info!(
            "sink {node_name} tunnels to {addr} ({}, {rate} Hz, {channels} ch)",
            codec_summary(compression, &knobs),
        );
        stream.on_params(knob_control(
            node_name.clone(),
            stream.handle(),
            shared.clone(),
            compression,
            fmt,
        ));
        // Statistics as node properties, once a second (main thread). The stream is owned by
        // the module; the timer reaches it through a handle that does nothing once it is gone.
        let sh = shared.clone();
        let handle = stream.handle();
        let timer = Timer::new(ctx, 1_000_000, move || {
            handle.update_properties(&sh.stat_properties());
        });
        let timer = match timer {
            Ok(t) => t,
            Err(e) => {
                shared.stop_and_join(worker);
                return Err(e);
            }
        };
        Ok(Tunnel {
            _timer: timer,
            _stream: stream,
            mode: Mode::Sink {
                shared,
                worker: Some(worker),
            },
        })
    }
}

/// What a source-mode tunnel is made of (parsed arguments).
struct SourceSetup {
    addr: params::ServerAddr,
    remote_source: Option<String>,
    node_name: String,
    description: Option<String>,
    latency: Option<String>,
    compression: Compression,
    knobs: OpusKnobs,
    fmt: StreamFormat,
    map: String,
    cookie: Option<opus_tunnel_core::auth::Cookie>,
    encryption: Encryption,
    transport: Transport,
    bounds: LatencyBounds,
    stream_props: Vec<(String, String)>,
}

impl Tunnel {
    /// `tunnel.mode = source`: an `Audio/Source` node fed by a record tunnel that runs at the
    /// far end only while the node runs here (something reads it).
    fn source(ctx: &Context, s: SourceSetup) -> Result<Tunnel, String> {
        let (playback, client) = start_record(
            RecordClientConfig {
                addr: s.addr.clone(),
                remote_source: s.remote_source.clone(),
                name: s.node_name.clone(),
                host: host_name(),
                compression: s.compression,
                fmt: s.fmt,
                channel_map: s.map.clone(),
                target_usec: s.bounds.target_usec,
                min_usec: s.bounds.min_usec,
                max_usec: s.bounds.max_usec,
                cookie: s.cookie,
                encryption: s.encryption,
                transport: s.transport,
                // PipeWire's data loop is real-time; our threads stay as created (as the
                // play tunnel's do: no real-time hook from the PipeWire host).
                realtime: None,
            },
            s.knobs,
        )?;
        let client = Rc::new(client);
        let rate = s.fmt.rate;
        let description = s
            .description
            .unwrap_or_else(|| device_description("from", &s.addr, s.remote_source.as_deref()));
        // A small block: the engine keeps the buffer; the graph's quantum adds to the delay.
        let latency = s
            .latency
            .unwrap_or_else(|| format!("{}/{rate}", (u64::from(rate) * 512 / 48_000).max(64)));
        let mut props: Vec<(String, String)> = vec![
            ("media.class".into(), "Audio/Source".into()),
            ("node.name".into(), s.node_name.clone()),
            ("node.description".into(), description),
            ("node.latency".into(), latency),
            ("device.class".into(), "sound".into()),
            ("device.icon-name".into(), "audio-input-microphone".into()),
            ("opus.tunnel.server".into(), s.addr.to_string()),
            (
                "opus.tunnel.remote_source".into(),
                s.remote_source.clone().unwrap_or_default(),
            ),
        ];
        props.extend(effective_properties(s.compression, &s.knobs));
        props.push(("opus.tunnel.state".into(), "connecting".into()));
        for (k, v) in s.stream_props {
            props.retain(|(pk, _)| *pk != k);
            props.push((k, v));
        }
        let positions = opus_tunnel_pipewire::channel_positions(&s.map, s.fmt.channels);
        let running = client.running_flag();
        let reading = Rc::new(std::cell::Cell::new(false));
        let reading2 = reading.clone();
        let name2 = s.node_name.clone();
        let mut was = false;
        let stream = Stream::new(
            ctx,
            &StreamSpec {
                name: &s.node_name,
                props: &props,
                direction: Direction::Playback,
                rate,
                channels: s.fmt.channels,
                positions: &positions,
            },
            Box::new(SourceIo(playback)),
            Some(Box::new(move |st| {
                if let StreamState::Error(e) = &st {
                    log::warn!("{name2}: stream error: {e}");
                }
                // Something reads the node exactly while it streams: only then does the far
                // end record.
                let now = st == StreamState::Streaming;
                if now != was {
                    was = now;
                    running.set(now);
                    reading2.set(now);
                    log::info!(
                        "{name2}: {}",
                        if now {
                            "a reader: the far end records"
                        } else {
                            "no reader: the far end stops recording"
                        }
                    );
                }
            })),
        )?;
        stream.on_params(knob_control(
            s.node_name.clone(),
            stream.handle(),
            client.clone(),
            s.compression,
            s.fmt,
        ));
        log::info!(
            "source {} records {} at {} ({}, {rate} Hz, {} ch), while something reads it",
            s.node_name,
            s.remote_source.as_deref().unwrap_or("the default source"),
            s.addr,
            s.compression.as_str(),
            s.fmt.channels
        );
        let (c2, handle) = (client.clone(), stream.handle());
        let timer = Timer::new(ctx, 1_000_000, move || {
            let mut p = c2.stat_properties();
            // With no reader the far end does not record: the tunnel is idle, whatever the
            // (stopped) playout engine last said.
            if !reading.get() {
                for (k, v) in p.iter_mut() {
                    if k == "opus.tunnel.state" && v != "connecting" && v != "reconnecting" {
                        *v = "idle".into();
                    }
                }
            }
            handle.update_properties(&p);
        })?;
        Ok(Tunnel {
            _timer: timer,
            _stream: stream,
            mode: Mode::Source { _client: client },
        })
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Mode::Sink { shared, worker } = &mut self.mode {
            if let Some(w) = worker.take() {
                shared.stop_and_join(w);
            }
        }
    }
}

declare_pw_module!(
    Tunnel,
    ModuleInfo {
        author: "opus-tunnel developers",
        description:
            "Opus-compressed network tunnel sink or source (pairs with module-opus-protocol-tcp)",
        usage: PW_TUNNEL_USAGE,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps() {
        assert_eq!(channel_map(None, 2).unwrap(), "front-left,front-right");
        assert_eq!(
            channel_map(Some("[ FL FR ]"), 2).unwrap(),
            "front-left,front-right"
        );
        assert!(channel_map(Some("[ FL ]"), 2).is_err());
        assert_eq!(channel_map(None, 1).unwrap(), "mono");
        assert_eq!(
            channel_map(None, 6).unwrap(),
            "front-left,front-right,front-center,lfe,rear-left,rear-right"
        );
        assert_eq!(
            opus_tunnel_core::surround::layout(8, &channel_map(None, 8).unwrap()).family,
            1
        );
        assert_eq!(channel_map(None, 3).unwrap(), "aux0,aux1,aux2");
        assert_eq!(
            channel_map(Some("[ FL FR RL RR FC LFE ]"), 6).unwrap(),
            "front-left,front-right,rear-left,rear-right,front-center,lfe"
        );
    }
}

opus_tunnel_core::manual_matches_table!(PW_TUNNEL);
