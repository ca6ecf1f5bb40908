//! # module-tunnel-source-opus
//!
//! A local source whose audio is recorded on another machine from `source=` (the user's
//! microphone) by `module-opus-protocol-tcp` (PulseAudio) or
//! `libpipewire-module-opus-protocol-tcp` (PipeWire), encoded there (Opus, or L16 with
//! `compression=none`), sent here, decoded, drift-corrected against this daemon's clock and
//! posted to the applications that record from it. The far end records only while something
//! here records from the tunnel source. When the link is down the source stays, delivers
//! silence, and reconnects with back-off.
//!
//! ## Arguments
//!
//! | argument | accepts | meaning | default |
//! |---|---|---|---|
//! | `source_name` | name | name of the local source | `tunnel-opus-source.<host>` |
//! | `source_properties` | properties | extra properties for the local source | none |
//! | `server` | tcp:HOST:PORT, HOST:PORT, HOST, unix:PATH | the far end (module-opus-protocol-tcp); port 4715 by default | required |
//! | `source` | name | the source to record at the far end | its source= argument, else its default source |
//! | `format` | sample format | sample format of the local source | float32le (opus), s16le (none) |
//! | `rate` | 1-384000 | sample rate; with Opus one of 8000, 12000, 16000, 24000, 48000 | 48000 |
//! | `channels` | 1-32 | channels: 1-8 (with Opus 3-8 are multistream surround) | 1 |
//! | `channel_map` | channel map | channel map | PulseAudio's default for channels |
//! | `latency_msec` | 1-200 | the source's block, ms | 10 |
//! | `target_latency_msec` | auto, 1-10000 | receive buffer target: sized from the measured lateness, or fixed, ms | auto |
//! | `min_latency_msec` | 0-10000 | the least the receive buffer target may be, ms | 0 |
//! | `max_latency_msec` | min_latency_msec to 10000 | the most the receive buffer (and its target) may hold, ms | 2500 (a source may post 2 s at once), or the minimum or a fixed target if larger |
//! | `compression` | opus, none | Opus, or RTP L16 PCM, encoded by the far end | opus |
//! | `clock_skew_ppm` | -100000 to 100000 | test aid: the source produces at (1 + ppm/1e6) x its nominal rate | 0 |
//! | `cookie` | path | a copy of the far end's cookie | none |
//! | `encryption` | auto, required, none | encrypt everything after the hello (Noise): auto falls back to cleartext, with a warning, only for a far end of protocol version 1; required never sends cleartext; none is cleartext (debugging) | auto |
//! | `transport` | tcp, udp | the far end's audio over the TCP connection, or RTP over UDP from its udp_port to a socket of ours that probes it first (control stays on TCP; TCP when the far end cannot grant UDP, logged) | tcp |
//! | `compression.bitrate` | 6000-510000 | Opus bit rate, bit/s, or kbit/s with a k suffix such as 64k | 32000 (3-8 channels: 32000 a channel) |
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
//! The defaults are a microphone's: mono, 32 kbit/s, `compression.opus.signal=auto` (libopus
//! codes speech as speech). Booleans take PulseAudio's words (1/0, yes/no, true/false,
//! on/off). A bad value fails `load-module` with a message naming the argument and what it
//! accepts. The `compression.*` knobs also change live, applied by the far end's encoder:
//! `update-source-proplist <source> compression.bitrate=16000`, or `pactl send-message
//! /opus_tunnel/<source> set "compression.bitrate=16000"` (`get` lists the effective values and
//! the statistics).
//!
//! ## Example
//!
//! ```text
//! load-module module-tunnel-source-opus server=tcp:192.168.1.20:4715 source_name=mic source=alsa_input.usb-mic
//! ```
//!
//! ## Inside
//!
//! The source's IO thread posts a block every period from the ring the tunnel's thread fills
//! (`opus_tunnel_core::client::start_record`); the main thread publishes statistics and relays
//! knob changes.

use opus_tunnel_core::args::{
    default_device_name, device_description, effective_properties, message_path,
    parse_latency_bounds, parse_tunnel_args, voice_knobs, Defaults, PA_LATENCY_KEYS,
    RECORD_MAX_LATENCY_MSEC,
};
use opus_tunnel_core::argtable::{keys, TUNNEL_SOURCE, TUNNEL_SOURCE_USAGE};
use opus_tunnel_core::client::{start_record, RecordClient, RecordClientConfig, RunningFlag};
use opus_tunnel_core::codec::StreamFormat;
use opus_tunnel_core::control::{device_handlers, KnobControl, Stats};
use opus_tunnel_core::decode::Playback;
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_pulse::hooks::{watch_source_proplist, HookSlot, MessageHandler};
use opus_tunnel_pulse::mainloop::MainTimer;
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::source::{Source, SourceConfig, SourceIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, PaModule, Proplist, SampleSpec,
};
use std::rc::Rc;

/// The module instance.
pub struct TunnelSource {
    // Drop order: hooks and timer first (they hold the source and the client), then the
    // source (its IO thread stops), then the tunnel's thread.
    _messages: MessageHandler,
    _watch: HookSlot,
    _timer: MainTimer,
    source: Rc<Source>,
    _client: Rc<RecordClient>,
}

/// The source's IO-thread side: posts what the tunnel's ring holds, converted to the source's
/// sample format, and tells the far end when readers come and go.
struct CaptureIo {
    playback: Playback,
    running: RunningFlag,
    format: SampleFormat,
    scratch: Vec<f32>,
    bytes: Vec<u8>,
}

impl SourceIo for CaptureIo {
    fn capture(&mut self, out: &mut [u8]) {
        if self.format == SampleFormat::F32Le {
            self.playback.pop_bytes(out);
            return;
        }
        let n = out.len() / self.format.bytes_per_sample();
        // Sized at load for the largest block; resize only if a block is bigger.
        self.scratch.resize(n, 0.0);
        self.playback.pop(&mut self.scratch);
        self.bytes.clear();
        self.format.from_f32(&self.scratch, &mut self.bytes);
        let m = self.bytes.len().min(out.len());
        out[..m].copy_from_slice(&self.bytes[..m]);
        out[m..].fill(0);
    }

    fn ready(&self, bytes: usize) -> bool {
        self.playback.ready_samples() >= bytes / self.format.bytes_per_sample()
    }

    fn state_changed(&mut self, running: bool) {
        self.running.set(running);
    }

    fn extra_latency_usec(&self) -> u64 {
        // The far end's codec, the network and our receive buffer, held still (refreshed
        // once a second); before the first refresh, what the ring holds.
        match self.running.latency_usec() {
            0 => self.playback.queued_usec(),
            v => v,
        }
    }
}

/// Puts properties on the source.
fn publish(source: &Source, pairs: &[(String, String)]) {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(k, v);
    }
    source.update_proplist(&p);
}

impl PaModule for TunnelSource {
    fn init(module: &ModuleRef) -> Result<Self, String> {
        let arg = module.argument();
        let ma = Modargs::new(arg.as_deref(), &keys(TUNNEL_SOURCE))?;
        let get = |k: &str| ma.get(k);
        let a = parse_tunnel_args(
            &get,
            &Defaults {
                table: TUNNEL_SOURCE,
                knobs: voice_knobs(),
            },
        )?;
        let spec = SampleSpec::new(&a.format, a.rate, a.channels)?;
        let format = SampleFormat::parse(&spec.format_name()).map_err(|e| e.to_string())?;
        let fmt = StreamFormat {
            rate: a.rate,
            channels: a.channels,
        };
        let map = match ma.get("channel_map") {
            Some(m) => ChannelMap::parse(&m, a.channels)?,
            None => ChannelMap::default_for(a.channels).ok_or_else(|| {
                format!(
                    "channels: no default channel map for {} channels",
                    a.channels
                )
            })?,
        };
        let bounds = parse_latency_bounds(
            TUNNEL_SOURCE,
            &get,
            PA_LATENCY_KEYS,
            RECORD_MAX_LATENCY_MSEC,
        )?;
        let remote_source = ma.get("source");
        let name = ma
            .get("source_name")
            .unwrap_or_else(|| default_device_name("tunnel-opus-source", &a.addr));
        let user_props = ma.get_proplist("source_properties")?;
        let (playback, client) = start_record(
            RecordClientConfig {
                addr: a.addr.clone(),
                remote_source: remote_source.clone(),
                name: name.clone(),
                host: opus_tunnel_pulse::host_name(),
                compression: a.compression,
                fmt,
                channel_map: map.to_text(),
                target_usec: bounds.target_usec,
                min_usec: bounds.min_usec,
                max_usec: bounds.max_usec,
                cookie: a.cookie,
                encryption: a.encryption,
                transport: a.transport,
                realtime: module.core().realtime_hook(),
            },
            a.knobs,
        )?;
        let client = Rc::new(client);
        let mut props = Proplist::new();
        props.set(
            "device.description",
            &device_description("from", &a.addr, remote_source.as_deref()),
        );
        props.set("opus.tunnel.server", &a.addr.to_string());
        props.set(
            "opus.tunnel.remote_source",
            remote_source.as_deref().unwrap_or(""),
        );
        for (k, v) in effective_properties(a.compression, &a.knobs) {
            props.set(&k, &v);
        }
        props.set("opus.tunnel.state", "connecting");
        if let Some(p) = &user_props {
            props.update(p);
        }
        let description = props.get("device.description").unwrap_or_default();
        let block_usec = u64::from(a.latency_msec) * 1000;
        let block_samples =
            spec.usec_to_bytes(block_usec) / spec.frame_size().max(1) * usize::from(a.channels);
        let io = CaptureIo {
            playback,
            running: client.running_flag(),
            format,
            scratch: vec![0.0; block_samples * 2],
            bytes: Vec::with_capacity(block_samples * 2 * format.bytes_per_sample()),
        };
        let source = Rc::new(Source::new(
            module,
            SourceConfig {
                name: &name,
                description: &description,
                spec,
                map,
                props,
                block_usec,
                rate_scale: 1.0 + a.skew_ppm * 1e-6,
                driver: c"module-tunnel-source-opus",
            },
            Box::new(io),
        )?);
        log::info!(
            "source {} records {} at {} ({}, {} Hz, {} ch)",
            source.name(),
            remote_source.as_deref().unwrap_or("the default source"),
            a.addr,
            a.compression.as_str(),
            a.rate,
            a.channels
        );
        let (st1, st2) = (client.clone(), client.clone());
        let h = device_handlers(
            KnobControl::new(
                client.clone(),
                a.compression,
                fmt,
                source.name(),
                "asked the far end to retune:",
            ),
            &source,
            publish,
            Stats {
                get: move || st1.stat_properties(),
                tick: move || st2.stat_properties(),
            },
            "the source is gone",
        );
        // update-source-proplist: apply the knob keys that changed, refuse bad values, and put
        // the effective values back (this re-enters the hook, with nothing to do).
        let core = module.core();
        let watch = watch_source_proplist(&core, source.index(), move |p| {
            (h.on_properties)(&|k| p.get(k))
        });
        let path = message_path(&source.name());
        let messages = MessageHandler::register(
            &core,
            &path,
            "opus-tunnel source: get, set key=value ...",
            h.on_message,
        );
        let timer = MainTimer::new(&core, 1_000_000, h.on_tick);
        Ok(TunnelSource {
            _messages: messages,
            _watch: watch,
            _timer: timer,
            source,
            _client: client,
        })
    }

    fn n_used(&self) -> i32 {
        self.source.used_by() as i32
    }
}

declare_module!(
    TunnelSource,
    ModuleInfo {
        author: c"opus-tunnel developers",
        description: c"Opus-compressed network tunnel source: records a remote source (pairs with module-opus-protocol-tcp)",
        usage: TUNNEL_SOURCE_USAGE,
        load_once: false,
    }
);

opus_tunnel_core::manual_matches_table!(TUNNEL_SOURCE);
