//! # module-tunnel-sink-opus
//!
//! A local sink whose audio is encoded (Opus, or L16 PCM with `compression=none`) and streamed
//! over TCP to `module-opus-protocol-tcp` (PulseAudio) or `libpipewire-module-opus-protocol-tcp`
//! (PipeWire) on another machine, to be played there on `sink=`. When the link is down the
//! sink stays, what plays into it is dropped, and the module reconnects with back-off.
//!
//! ## Arguments
//!
//! | argument | accepts | meaning | default |
//! |---|---|---|---|
//! | `sink_name` | name | name of the local sink | `tunnel-opus.<host>` |
//! | `sink_properties` | properties | extra properties for the local sink | none |
//! | `server` | tcp:HOST:PORT, HOST:PORT, HOST, unix:PATH, rtp://HOST:PORT | the receiver; port 4715 by default; rtp://HOST:PORT sends plain RTP/Opus (RFC 7587) over UDP with no handshake, always cleartext | required |
//! | `sink` | name | the sink to play on at the receiver | the receiver's sink=, else its default sink |
//! | `format` | sample format | sample format of the local sink | float32le (opus), s16le (none) |
//! | `rate` | 1-384000 | sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000 | 48000 |
//! | `channels` | 1-32 | channels: 1-8 (with Opus 3-8 are multistream surround) | 2 |
//! | `channel_map` | channel map | channel map | PulseAudio's default for channels |
//! | `latency_msec` | 1-200 | the sink's block (wake-up period and fixed latency), ms | 10 |
//! | `compression` | opus, none | Opus, or RTP L16 PCM | opus |
//! | `clock_skew_ppm` | -100000 to 100000 | test aid: the sink consumes audio at (1 + ppm/1e6) x its nominal rate | 0 |
//! | `cookie` | path | a copy of the receiver's cookie, proven when the receiver asks (never sent) | none |
//! | `encryption` | auto, required, none | encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a receiver of protocol version 1; required never sends cleartext; none is cleartext (debugging) | auto |
//! | `transport` | tcp, udp | audio over the TCP connection, or RTP over UDP to the receiver's udp_port (control stays on TCP; TCP when the receiver cannot grant UDP, logged) | tcp |
//! | `rtp_payload` | 96-127 | server=rtp:// only: the RTP payload type | 96 |
//! | `sdp_file` | path | server=rtp:// only: write the stream's SDP description (RFC 7587) to this file | none |
//! | `compression.bitrate` | 6000-510000 | Opus bit rate, bit/s, or kbit/s with a k suffix such as 64k | 64000 (3-8 channels: 32000 a channel) |
//! | `compression.frame_size` | 2.5, 5, 10, 20, 40, 60 | frame duration, ms (also the size of PCM packets) | 20 |
//! | `compression.opus.complexity` | 0-10 | encoder complexity | 10 |
//! | `compression.opus.max_bandwidth` | narrowband, mediumband, wideband, superwideband, fullband | audio bandwidth limit | fullband |
//! | `compression.opus.signal` | auto, voice, music | signal hint | auto |
//! | `compression.opus.vbr` | bool | variable bit rate | true |
//! | `compression.opus.vbr_constraint` | bool | constrained VBR | false |
//! | `compression.opus.application` | voip, audio, lowdelay | encoder mode | audio |
//! | `compression.opus.lsb_depth` | 8-24 | input resolution hint, bits | 16 |
//! | `compression.opus.dtx` | bool | discontinuous transmission | false |
//! | `compression.opus.fec` | bool | in-band forward error correction | false |
//! | `compression.opus.packet_loss` | 0-100 | expected packet loss, percent | 0 |
//!
//! Booleans take PulseAudio's words (1/0, yes/no, true/false, on/off). A bad value fails
//! `load-module` with a message naming the argument and what it accepts. The `compression.*`
//! knobs also change live: `update-sink-proplist <sink> compression.bitrate=32000`, or
//! `pactl send-message /opus_tunnel/<sink> set "compression.bitrate=32000"` (`get` lists the
//! effective values and the statistics); a refused value is logged and the property shows the
//! effective value again.
//!
//! With `server=rtp://HOST:PORT` the sink sends plain RTP/Opus (RFC 7587) over UDP with no
//! handshake, as `module-rtp-send` does, for GStreamer, ffmpeg, VLC and the receiver's
//! `rtp_port=`: Opus only, 1 or 2 channels, always cleartext and unauthenticated
//! (`encryption=required` is refused); the SDP description shows as `opus.tunnel.sdp` and is
//! written to `sdp_file=` (rewritten when the knobs change).
//!
//! ## Example
//!
//! ```text
//! load-module module-tunnel-sink-opus server=tcp:192.168.1.10:4715 sink_name=office compression.bitrate=96000
//! load-module module-tunnel-sink-opus server=rtp://192.168.1.10:5004 sdp_file=/tmp/office.sdp
//! ```
//!
//! ## Inside
//!
//! The sink's IO thread renders blocks and pushes the bytes into a lock-free ring (never
//! blocking); a worker thread (`opus_tunnel_core::client` and `encode`) converts, encodes, packetises and
//! sends, and reconnects with back-off when the link is down; the main thread publishes
//! statistics as sink properties once a second.

use opus_tunnel_core::args::{
    codec_summary, default_device_name, device_description, effective_properties, message_path,
    parse_tunnel_args, Defaults,
};
use opus_tunnel_core::argtable::{keys, TUNNEL_SINK, TUNNEL_SINK_USAGE};
use opus_tunnel_core::client::start_play;
use opus_tunnel_core::codec::StreamFormat;
use opus_tunnel_core::control::{device_handlers, KnobControl, Stats};
use opus_tunnel_core::encode::{Feeder, Shared, WorkerConfig};
use opus_tunnel_core::params::OpusKnobs;
use opus_tunnel_core::plain_rtp;
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_pulse::hooks::{watch_sink_proplist, HookSlot, MessageHandler};
use opus_tunnel_pulse::mainloop::MainTimer;
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::sink::{Sink, SinkConfig, SinkIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, PaModule, Proplist, SampleSpec,
};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The module instance.
pub struct TunnelSink {
    // `Drop` stops and joins the worker first; then the fields go in order: the hooks and the
    // timer (with their handles on the sink), then the sink (its IO thread stops).
    _messages: MessageHandler,
    _watch: HookSlot,
    _timer: MainTimer,
    sink: Rc<Sink>,
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

/// Puts properties on the sink.
fn publish(sink: &Sink, pairs: &[(String, String)]) {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(k, v);
    }
    sink.update_proplist(&p);
}

/// The statistics, and plain RTP's properties (send errors, and with `sdp` the SDP) when it
/// sends that.
fn with_rtp(
    mut props: Vec<(String, String)>,
    rtp: &Option<Arc<plain_rtp::SendInfo>>,
    sdp: bool,
) -> Vec<(String, String)> {
    if let Some(i) = rtp {
        props.extend(i.properties(sdp));
    }
    props
}

/// The sink's IO-thread side: hands rendered audio to the tunnel's worker.
struct SenderIo(Feeder);

impl SinkIo for SenderIo {
    fn render(&mut self, data: &[u8], running: bool) {
        self.0.push(data, running);
    }

    fn state_changed(&mut self, running: bool) {
        self.0.set_running(running);
    }

    fn extra_latency_usec(&self) -> u64 {
        self.0.latency_usec()
    }
}

impl PaModule for TunnelSink {
    fn init(module: &ModuleRef) -> Result<Self, String> {
        let arg = module.argument();
        let ma = Modargs::new(arg.as_deref(), &keys(TUNNEL_SINK))?;

        let get = |k: &str| ma.get(k);
        let a = parse_tunnel_args(
            &get,
            &Defaults {
                table: TUNNEL_SINK,
                knobs: OpusKnobs::default(),
            },
        )?;
        let (addr, compression, knobs) = (a.addr.clone(), a.compression, a.knobs);
        let (rate, channels, latency_msec, skew_ppm) =
            (a.rate, a.channels, a.latency_msec, a.skew_ppm);
        let spec = SampleSpec::new(&a.format, rate, channels)?;
        let sample_format = SampleFormat::parse(&spec.format_name()).map_err(|e| e.to_string())?;
        let fmt = StreamFormat { rate, channels };
        let map = match ma.get("channel_map") {
            Some(m) => ChannelMap::parse(&m, channels)?,
            None => ChannelMap::default_for(channels).ok_or_else(|| {
                format!("channels: no default channel map for {channels} channels")
            })?,
        };
        let remote_sink = ma.get("sink");
        let cookie = a.cookie;
        let sink_name = ma
            .get("sink_name")
            .unwrap_or_else(|| default_device_name("tunnel-opus", &addr));
        let user_props = ma.get_proplist("sink_properties")?;

        // Half a second of audio between the IO thread and the worker: room for scheduling
        // hiccups; the worker trims anything beyond its target so latency stays low.
        let ring_bytes = spec.frame_size() * rate as usize / 2;
        let host = opus_tunnel_pulse::host_name();
        let cfg = WorkerConfig {
            addr: addr.clone(),
            remote_sink: remote_sink.clone(),
            name: sink_name.clone(),
            host,
            compression,
            fmt,
            sample_format,
            channel_map: map.to_text(),
            block_usec: u64::from(latency_msec) * 1000,
            cookie,
            encryption: a.encryption,
            transport: a.transport,
            realtime: module.core().realtime_hook(),
        };
        // server=rtp://: plain RTP over UDP, no handshake (opus_tunnel_core::plain_rtp).
        let (feeder, shared, worker, rtp_info) = match a.rtp {
            Some(rtp) => {
                if cfg.cookie.is_some() {
                    log::warn!(
                        "cookie: not used by plain RTP (server=rtp://), which has no handshake"
                    );
                }
                let (f, s, w, i) = plain_rtp::start_play(cfg, knobs, ring_bytes, rtp)?;
                (f, s, w, Some(i))
            }
            None => {
                let (f, s, w) = start_play(cfg, knobs, ring_bytes)
                    .map_err(|e| format!("cannot start the worker thread: {e}"))?;
                (f, s, w, None)
            }
        };

        let mut props = Proplist::new();
        props.set(
            "device.description",
            &device_description("to", &addr, remote_sink.as_deref()),
        );
        props.set("opus.tunnel.server", &addr.to_string());
        props.set(
            "opus.tunnel.remote_sink",
            remote_sink.as_deref().unwrap_or(""),
        );
        for (k, v) in effective_properties(compression, &knobs) {
            props.set(&k, &v);
        }
        props.set("opus.tunnel.state", "connecting");
        if let Some(i) = &rtp_info {
            props.set("opus.tunnel.transport", "rtp");
            for (k, v) in i.properties(true) {
                props.set(&k, &v);
            }
        }
        if let Some(p) = &user_props {
            props.update(p);
        }
        let description = props.get("device.description").unwrap_or_default();
        let io = SenderIo(feeder);
        let sink = match Sink::new(
            module,
            SinkConfig {
                name: &sink_name,
                description: &description,
                spec,
                map,
                props,
                block_usec: u64::from(latency_msec) * 1000,
                rate_scale: 1.0 + skew_ppm * 1e-6,
                driver: c"module-tunnel-sink-opus",
            },
            Box::new(io),
        ) {
            Ok(s) => s,
            Err(e) => {
                shared.stop_and_join(worker);
                return Err(e);
            }
        };
        log::info!(
            "sink {} tunnels to {} ({}, {} Hz, {} ch)",
            sink.name(),
            addr,
            codec_summary(compression, &knobs),
            rate,
            channels
        );

        // Knob control and statistics (main thread).
        let sink = Rc::new(sink);
        let (st1, st2) = (shared.clone(), shared.clone());
        let (ri1, ri2) = (rtp_info.clone(), rtp_info);
        let h = device_handlers(
            KnobControl::new(shared.clone(), compression, fmt, sink.name(), "retuned"),
            &sink,
            publish,
            Stats {
                get: move || with_rtp(st1.stat_properties_peek(), &ri1, false),
                tick: move || with_rtp(st2.stat_properties(), &ri2, true),
            },
            "the sink is gone",
        );
        // update-sink-proplist: apply the knob keys that changed, refuse bad values, and put
        // the effective values back (this re-enters the hook, with nothing to do).
        let core = module.core();
        let watch = watch_sink_proplist(&core, sink.index(), move |p| {
            (h.on_properties)(&|k| p.get(k))
        });
        let path = message_path(&sink.name());
        let messages = MessageHandler::register(
            &core,
            &path,
            "opus-tunnel sink: get, set key=value ...",
            h.on_message,
        );
        let timer = MainTimer::new(&core, 1_000_000, h.on_tick);
        Ok(TunnelSink {
            _messages: messages,
            _watch: watch,
            _timer: timer,
            sink,
            shared,
            worker: Some(worker),
        })
    }

    fn n_used(&self) -> i32 {
        self.sink.used_by() as i32
    }
}

impl Drop for TunnelSink {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            self.shared.stop_and_join(w);
        }
    }
}

declare_module!(
    TunnelSink,
    ModuleInfo {
        author: c"opus-tunnel developers",
        description: c"Opus-compressed network tunnel sink (pairs with module-opus-protocol-tcp)",
        usage: TUNNEL_SINK_USAGE,
        load_once: false,
    }
);

opus_tunnel_core::manual_matches_table!(TUNNEL_SINK);
