//! `module-tunnel-source-opus`: a local source whose audio is recorded on another machine
//! from `source=` (the user's microphone) by `module-opus-protocol-tcp`, encoded there (Opus,
//! or L16 with `compression=none`), sent here, decoded, drift-corrected against this daemon's
//! clock and posted to the applications that record from it.
//!
//! The far end records only while something here records from the tunnel source. Threads:
//! the source's IO thread posts a block every period from the ring the tunnel's thread fills
//! (`opus_tunnel_core::rx::start_record`); the main thread publishes statistics and relays
//! knob changes (`update-source-proplist`, `pactl send-message /opus_tunnel/<source>`).
use opus_tunnel_core::args::{
    apply_knob_changes, default_device_name, effective_properties, knob_message, message_path,
    parse_tunnel_args, Defaults,
};
use opus_tunnel_core::codec::StreamFormat;
use opus_tunnel_core::params::{Compression, OpusKnobs, Signal, KNOB_KEYS};
use opus_tunnel_core::rx::{start_record, Playback, RecordClient, RecordClientConfig, RunningFlag};
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_pulse::hooks::{watch_source_proplist, HookSlot, MessageHandler};
use opus_tunnel_pulse::mainloop::MainTimer;
use opus_tunnel_pulse::module::ModuleInfo;
use opus_tunnel_pulse::source::{Source, SourceConfig, SourceIo};
use opus_tunnel_pulse::{
    declare_module, ChannelMap, Modargs, ModuleRef, PaModule, Proplist, SampleSpec,
};
use std::rc::Rc;

const USAGE: &std::ffi::CStr = c"source_name=<name of the local source> \
source_properties=<properties for the source> \
server=<tcp:HOST:PORT | HOST:PORT | HOST | unix:PATH; port 4715 by default> \
source=<remote source name; default: the far end's default source> \
format=<sample format> rate=<sample rate> channels=<number of channels; default 1> channel_map=<channel map> \
latency_msec=<source block, 1-200 ms; default 10> \
target_latency_msec=<receive buffer target, 10-2000 ms; default 60> \
max_latency_msec=<the most the target may grow to after underruns; default 500> \
compression=<opus|none> \
compression.bitrate=<6000-510000; default 32000> compression.frame_size=<2.5|5|10|20|40|60 ms> \
compression.opus.complexity=<0-10> \
compression.opus.max_bandwidth=<narrowband|mediumband|wideband|superwideband|fullband> \
compression.opus.signal=<auto|voice|music; default voice> compression.opus.vbr=<bool> \
compression.opus.vbr_constraint=<bool> compression.opus.application=<voip|audio|lowdelay> \
compression.opus.lsb_depth=<8-24> compression.opus.dtx=<bool> compression.opus.fec=<bool> \
compression.opus.packet_loss=<0-100> \
clock_skew_ppm=<test aid: produce at (1+ppm/1e6) x the nominal rate; default 0> \
cookie=<path of a copy of the far end's cookie file>";

fn valid_args() -> Vec<&'static str> {
    let mut v = vec![
        "source_name",
        "source_properties",
        "server",
        "source",
        "format",
        "rate",
        "channels",
        "channel_map",
        "latency_msec",
        "target_latency_msec",
        "max_latency_msec",
        "compression",
        "clock_skew_ppm",
        "cookie",
    ];
    v.extend(KNOB_KEYS);
    v
}

/// Microphone defaults: mono, voice, 32 kbit/s (ample for speech; music-grade Opus at 64k is
/// one argument away).
fn voice_knobs() -> OpusKnobs {
    OpusKnobs {
        bitrate: 32_000,
        signal: Signal::Voice,
        ..OpusKnobs::default()
    }
}

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

    fn state_changed(&mut self, running: bool) {
        self.running.set(running);
    }

    fn extra_latency_usec(&self) -> u64 {
        self.playback.queued_usec()
    }
}

/// Knob control from the main thread.
struct Control {
    client: Rc<RecordClient>,
    compression: Compression,
    fmt: StreamFormat,
    name: String,
}

impl Control {
    fn effective(&self) -> Vec<(String, String)> {
        effective_properties(self.compression, &self.client.knobs())
    }

    fn apply(&self, pairs: &[(String, String)]) -> Vec<String> {
        let u = apply_knob_changes(self.client.knobs(), self.compression, self.fmt, pairs);
        if !u.changed.is_empty() {
            self.client.set_knobs(u.knobs);
            log::info!(
                "{}: asked the far end to retune: {}",
                self.name,
                u.changed.join(" ")
            );
        }
        for e in &u.errors {
            log::warn!("{}: refused {e}", self.name);
        }
        u.errors
    }
}

fn to_proplist(pairs: &[(String, String)]) -> Proplist {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(k, v);
    }
    p
}

impl PaModule for TunnelSource {
    fn init(module: &ModuleRef) -> Result<Self, String> {
        let arg = module.argument();
        let ma = Modargs::new(arg.as_deref(), &valid_args())?;
        let get = |k: &str| ma.get(k);
        let a = parse_tunnel_args(
            &get,
            &Defaults {
                channels: 1,
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
        let target_ms =
            opus_tunnel_core::args::parse_u32(&get, "target_latency_msec", 60, 10, 2000)?;
        let max_ms = opus_tunnel_core::args::parse_u32(
            &get,
            "max_latency_msec",
            500.max(target_ms),
            target_ms,
            10_000,
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
                target_usec: u64::from(target_ms) * 1000,
                max_usec: u64::from(max_ms) * 1000,
                cookie: a.cookie,
            },
            a.knobs,
        )?;
        let client = Rc::new(client);
        let mut props = Proplist::new();
        props.set(
            "device.description",
            &format!(
                "Opus tunnel from {}{}",
                a.addr,
                remote_source
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
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
        let control = Rc::new(Control {
            client: client.clone(),
            compression: a.compression,
            fmt,
            name: source.name(),
        });
        let (c1, s1) = (control.clone(), Rc::downgrade(&source));
        let watch = watch_source_proplist(&module.core(), source.index(), move |props| {
            let changed: Vec<(String, String)> = c1
                .effective()
                .into_iter()
                .filter_map(|(k, eff)| props.get(&k).filter(|v| *v != eff).map(|v| (k, v)))
                .collect();
            if changed.is_empty() {
                return;
            }
            c1.apply(&changed);
            if let Some(source) = s1.upgrade() {
                source.update_proplist(&to_proplist(&c1.effective()));
            }
        });
        let (c2, s2) = (control.clone(), Rc::downgrade(&source));
        let path = message_path(&source.name());
        let messages = MessageHandler::register(
            &module.core(),
            &path,
            "opus-tunnel source: get, set key=value ...",
            move |msg, params| {
                let Some(source) = s2.upgrade() else {
                    return Err("the source is gone".into());
                };
                knob_message(
                    msg,
                    params,
                    || {
                        let mut out = c2.effective();
                        out.extend(c2.client.stat_properties());
                        out
                    },
                    |pairs| {
                        let errors = c2.apply(pairs);
                        source.update_proplist(&to_proplist(&c2.effective()));
                        errors
                    },
                )
            },
        );
        let (timer_source, timer_client) = (source.clone(), client.clone());
        let timer = MainTimer::new(&module.core(), 1_000_000, move || {
            timer_source.update_proplist(&to_proplist(&timer_client.stat_properties()));
        });
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
        usage: USAGE,
        load_once: false,
    }
);
