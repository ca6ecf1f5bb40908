//! `module-tunnel-sink-opus`: a local sink whose audio is encoded (Opus, or L16 PCM with
//! `compression=none`) and streamed over TCP to `module-opus-protocol-tcp` on another machine,
//! to be played there on `sink=`.
//!
//! Threads: the sink's IO thread renders blocks and pushes the bytes into a lock-free ring
//! (never blocking); a worker thread ([`worker`]) converts, encodes, packetises and sends,
//! and reconnects with back-off when the link is down; the main thread publishes statistics
//! as sink properties once a second.

use opus_tunnel_core::args::{
    apply_knob_changes, default_device_name, effective_properties, knob_message, message_path,
    parse_tunnel_args, Defaults,
};
use opus_tunnel_core::codec::StreamFormat;
use opus_tunnel_core::params::{Compression, OpusKnobs, KNOB_KEYS};
use opus_tunnel_core::samples::SampleFormat;
use opus_tunnel_core::tx::{self, Feeder, Shared, WorkerConfig};
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

const USAGE: &std::ffi::CStr = c"sink_name=<name of the local sink> \
sink_properties=<properties for the sink> \
server=<tcp:HOST:PORT | HOST:PORT | HOST | unix:PATH; port 4715 by default> \
sink=<remote sink name; default: the receiver's default sink> \
format=<sample format> rate=<sample rate> channels=<number of channels> channel_map=<channel map> \
latency_msec=<sink block, 1-200 ms; default 10> \
compression=<opus|none> \
compression.bitrate=<6000-510000> compression.frame_size=<2.5|5|10|20|40|60 ms> \
compression.opus.complexity=<0-10> \
compression.opus.max_bandwidth=<narrowband|mediumband|wideband|superwideband|fullband> \
compression.opus.signal=<auto|voice|music> compression.opus.vbr=<bool> \
compression.opus.vbr_constraint=<bool> compression.opus.application=<voip|audio|lowdelay> \
compression.opus.lsb_depth=<8-24> compression.opus.dtx=<bool> compression.opus.fec=<bool> \
compression.opus.packet_loss=<0-100> \
clock_skew_ppm=<test aid: consume at (1+ppm/1e6) x the nominal rate; default 0> \
cookie=<path of a copy of the receiver's cookie file, proven when the receiver asks>";

/// Every argument the module accepts.
fn valid_args() -> Vec<&'static str> {
    let mut v = vec![
        "sink_name",
        "sink_properties",
        "server",
        "sink",
        "format",
        "rate",
        "channels",
        "channel_map",
        "latency_msec",
        "compression",
        "clock_skew_ppm",
        "cookie",
    ];
    v.extend(KNOB_KEYS);
    v
}

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

/// Live control of the encoder (main thread): property changes and `set` messages go
/// through the same validation as the module arguments.
struct Control {
    shared: Arc<Shared>,
    compression: Compression,
    fmt: StreamFormat,
    name: String,
}

impl Control {
    /// The effective value of every knob (and `compression`), as properties.
    fn effective(&self) -> Vec<(String, String)> {
        effective_properties(self.compression, &self.shared.knobs())
    }

    /// Applies what can be applied; returns the refusals (each names the key and the range).
    fn apply(&self, pairs: &[(String, String)]) -> Vec<String> {
        let u = apply_knob_changes(self.shared.knobs(), self.compression, self.fmt, pairs);
        if !u.changed.is_empty() {
            self.shared.set_knobs(u.knobs);
            log::info!("{}: retuned {}", self.name, u.changed.join(" "));
        }
        for e in &u.errors {
            log::warn!("{}: refused {e}", self.name);
        }
        u.errors
    }

    /// A `pactl send-message /opus_tunnel/<sink> MESSAGE PARAMS` request.
    fn message(&self, message: &str, params: &str, sink: &Sink) -> Result<String, String> {
        knob_message(
            message,
            params,
            || {
                let mut out = self.effective();
                out.extend(self.shared.stat_properties_peek());
                out
            },
            |pairs| {
                let errors = self.apply(pairs);
                sink.update_proplist(&to_proplist(&self.effective()));
                errors
            },
        )
    }
}

fn to_proplist(pairs: &[(String, String)]) -> Proplist {
    let mut p = Proplist::new();
    for (k, v) in pairs {
        p.set(k, v);
    }
    p
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
        let ma = Modargs::new(arg.as_deref(), &valid_args())?;

        let get = |k: &str| ma.get(k);
        let a = parse_tunnel_args(
            &get,
            &Defaults {
                channels: 2,
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
        };
        let (feeder, shared, worker) = tx::start(cfg, knobs, ring_bytes)
            .map_err(|e| format!("cannot start the worker thread: {e}"))?;

        let mut props = Proplist::new();
        props.set(
            "device.description",
            &format!(
                "Opus tunnel to {}{}",
                addr,
                remote_sink
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
        );
        props.set("opus.tunnel.server", &addr.to_string());
        props.set(
            "opus.tunnel.remote_sink",
            remote_sink.as_deref().unwrap_or(""),
        );
        props.set("compression", compression.as_str());
        for (k, v) in knobs.properties() {
            props.set(k, &v);
        }
        props.set("opus.tunnel.state", "connecting");
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
            "sink {} tunnels to {} ({}{}, {} Hz, {} ch)",
            sink.name(),
            addr,
            compression.as_str(),
            if compression == Compression::Opus {
                format!(
                    " {} bit/s, {} ms frames",
                    knobs.bitrate,
                    knobs.frame_size.as_str()
                )
            } else {
                String::new()
            },
            rate,
            channels
        );

        // Statistics as properties, once a second (main thread).
        let sink = Rc::new(sink);
        let control = Rc::new(Control {
            shared: shared.clone(),
            compression,
            fmt,
            name: sink.name(),
        });
        // update-sink-proplist: apply the knob keys that changed, refuse bad values, and put
        // the effective values back on the sink (this re-enters the hook, with nothing to do).
        let (c1, s1) = (control.clone(), Rc::downgrade(&sink));
        let watch = watch_sink_proplist(&module.core(), sink.index(), move |props| {
            let changed: Vec<(String, String)> = c1
                .effective()
                .into_iter()
                .filter_map(|(k, eff)| props.get(&k).filter(|v| *v != eff).map(|v| (k, v)))
                .collect();
            if changed.is_empty() {
                return;
            }
            c1.apply(&changed);
            if let Some(sink) = s1.upgrade() {
                sink.update_proplist(&to_proplist(&c1.effective()));
            }
        });
        let (c2, s2) = (control.clone(), Rc::downgrade(&sink));
        let path = message_path(&sink.name());
        let messages = MessageHandler::register(
            &module.core(),
            &path,
            "opus-tunnel sink: get, set key=value ...",
            move |msg, params| match s2.upgrade() {
                Some(sink) => c2.message(msg, params, &sink),
                None => Err("the sink is gone".into()),
            },
        );
        let (timer_sink, timer_shared) = (sink.clone(), shared.clone());
        let timer = MainTimer::new(&module.core(), 1_000_000, move || {
            let mut p = Proplist::new();
            for (k, v) in timer_shared.stat_properties() {
                p.set(&k, &v);
            }
            timer_sink.update_proplist(&p);
        });
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
        usage: USAGE,
        load_once: false,
    }
);
