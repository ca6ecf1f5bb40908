//! Live control of a tunnel's Opus knobs, the same for every module and daemon: the effective
//! values as properties, changes checked as at load (a bad value is refused with a log line
//! naming the key and the accepted range), property-list changes, and the `get`/`set`
//! messages (`pactl send-message /opus_tunnel/<device>`). The module only moves properties
//! between this and its daemon.
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{apply_knob_changes, effective_properties, knob_message};
use crate::client::RecordClient;
use crate::codec::StreamFormat;
use crate::encode::Shared;
use crate::params::{Compression, OpusKnobs};

/// Where the knobs live: a sending tunnel's encoder, or the far end's (relayed by a record
/// tunnel's client).
pub trait KnobStore {
    /// The knobs in effect.
    fn knobs(&self) -> OpusKnobs;
    /// Puts `knobs` into effect.
    fn set_knobs(&self, knobs: OpusKnobs);
}

impl KnobStore for Arc<Shared> {
    fn knobs(&self) -> OpusKnobs {
        Shared::knobs(self)
    }
    fn set_knobs(&self, knobs: OpusKnobs) {
        Shared::set_knobs(self, knobs)
    }
}

impl KnobStore for Rc<RecordClient> {
    fn knobs(&self) -> OpusKnobs {
        RecordClient::knobs(self)
    }
    fn set_knobs(&self, knobs: OpusKnobs) {
        RecordClient::set_knobs(self, knobs)
    }
}

/// A tunnel device's knob control (main thread).
pub struct KnobControl {
    store: Box<dyn KnobStore>,
    compression: Compression,
    fmt: StreamFormat,
    name: String,
    retuned: &'static str,
}

impl KnobControl {
    /// Control of `store`'s knobs for the device `name`; `retuned` starts the log line of an
    /// applied change (e.g. `retuned`).
    pub fn new(
        store: impl KnobStore + 'static,
        compression: Compression,
        fmt: StreamFormat,
        name: String,
        retuned: &'static str,
    ) -> KnobControl {
        KnobControl {
            store: Box::new(store),
            compression,
            fmt,
            name,
            retuned,
        }
    }

    /// The effective value of every knob (and `compression`), as properties.
    pub fn effective(&self) -> Vec<(String, String)> {
        effective_properties(self.compression, &self.store.knobs())
    }

    /// Applies what can be applied; returns the refusals (each names the key and the range).
    pub fn apply(&self, pairs: &[(String, String)]) -> Vec<String> {
        let u = apply_knob_changes(self.store.knobs(), self.compression, self.fmt, pairs);
        if !u.changed.is_empty() {
            self.store.set_knobs(u.knobs);
            log::info!("{}: {} {}", self.name, self.retuned, u.changed.join(" "));
        }
        for e in &u.errors {
            log::warn!("{}: refused {e}", self.name);
        }
        u.errors
    }

    /// The device's properties changed (`update-sink-proplist` …; `get` reads one): applies
    /// the knob keys whose value differs from the effective one and returns the effective
    /// values to put back on the device, or `None` when no knob changed (as when the device
    /// shows what this returned).
    pub fn properties_changed(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Option<Vec<(String, String)>> {
        let changed: Vec<(String, String)> = self
            .effective()
            .into_iter()
            .filter_map(|(k, eff)| get(&k).filter(|v| *v != eff).map(|v| (k, v)))
            .collect();
        if changed.is_empty() {
            return None;
        }
        self.apply(&changed);
        Some(self.effective())
    }

    /// Applies `pairs` and hands the effective values to `publish` (a node's `Props` change).
    pub fn apply_and_publish(
        &self,
        pairs: &[(String, String)],
        publish: impl FnOnce(&[(String, String)]),
    ) -> Vec<String> {
        let errors = self.apply(pairs);
        publish(&self.effective());
        errors
    }

    /// A `MESSAGE PARAMS` request (`get`: the effective knobs and `stats`; `set "k=v …"`:
    /// applied, then the effective values go to `publish`).
    pub fn message(
        &self,
        message: &str,
        params: &str,
        stats: impl FnOnce() -> Vec<(String, String)>,
        publish: impl FnOnce(&[(String, String)]),
    ) -> Result<String, String> {
        knob_message(
            message,
            params,
            || {
                let mut out = self.effective();
                out.extend(stats());
                out
            },
            |pairs| self.apply_and_publish(pairs, publish),
        )
    }
}

/// A device's property lookup.
pub type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// How a device's statistics are read: for a `get` message (must not disturb rates) and
/// once a second for its properties.
pub struct Stats<G, T> {
    /// For `get`.
    pub get: G,
    /// Once a second.
    pub tick: T,
}

/// The answer to a `MESSAGE PARAMS` request.
pub type OnMessage = dyn FnMut(&str, &str) -> Result<String, String>;

/// A device's reactions (see [`device_handlers`]), to hand to its daemon.
pub struct Handlers {
    /// The device's properties changed: give it their lookup.
    pub on_properties: Box<dyn Fn(&Lookup<'_>)>,
    /// A `MESSAGE PARAMS` request.
    pub on_message: Box<OnMessage>,
    /// Once a second: publishes the statistics.
    pub on_tick: Box<dyn FnMut()>,
}

/// How often an idle tunnel's statistics are published when only its counters moved (its
/// keepalives): each publication wakes the daemon's subscribers and costs its main thread.
const IDLE_PUBLISH: Duration = Duration::from_secs(5);

/// The counters a keepalive moves, and the bitrate they make.
const KEEPALIVE_COUNTERS: [&str; 5] = [
    "opus.tunnel.bytes_sent",
    "opus.tunnel.packets_sent",
    "opus.tunnel.bytes_received",
    "opus.tunnel.packets_received",
    "opus.tunnel.bitrate",
];

/// `after` says the tunnel is idle and differs from `before` only in the counters its
/// keepalives move.
fn idle_counters_only(before: &[(String, String)], after: &[(String, String)]) -> bool {
    let idle = after
        .iter()
        .any(|(k, v)| k == "opus.tunnel.state" && v == "idle");
    idle && before.len() == after.len()
        && before
            .iter()
            .zip(after)
            .all(|(a, b)| a == b || (a.0 == b.0 && KEEPALIVE_COUNTERS.contains(&a.0.as_str())))
}

/// What a device's knob control answers its daemon: the reaction to a property change, the
/// answer to a message, and the once-a-second statistics. All reach the device through a weak
/// handle: once it is gone a property change and a tick do nothing and a message is answered
/// `gone`.
pub fn device_handlers<D: 'static>(
    control: KnobControl,
    device: &Rc<D>,
    publish: fn(&D, &[(String, String)]),
    stats: Stats<
        impl Fn() -> Vec<(String, String)> + 'static,
        impl Fn() -> Vec<(String, String)> + 'static,
    >,
    gone: &'static str,
) -> Handlers {
    let control = Rc::new(control);
    let (c1, d1) = (control.clone(), Rc::downgrade(device));
    let on_properties = move |get: &Lookup<'_>| {
        if let (Some(eff), Some(d)) = (c1.properties_changed(get), d1.upgrade()) {
            publish(&d, &eff);
        }
    };
    let (d2, d3) = (Rc::downgrade(device), Rc::downgrade(device));
    let c3 = control.clone();
    let Stats { get, tick } = stats;
    let on_message = move |msg: &str, params: &str| match d2.upgrade() {
        Some(d) => control.message(msg, params, &get, |eff| publish(&d, eff)),
        None => Err(gone.to_string()),
    };
    let mut last: Option<(Instant, Vec<(String, String)>)> = None;
    let on_tick = move || {
        if let Some(d) = d3.upgrade() {
            // The knobs too: the worker may change one itself (`transport=udp` feeds
            // `packet_loss` from the receiver's reports), and the device shows what is in effect.
            let mut props = tick();
            props.extend(c3.effective());
            if let Some((at, before)) = &last {
                if at.elapsed() < IDLE_PUBLISH && idle_counters_only(before, &props) {
                    return;
                }
            }
            publish(&d, &props);
            last = Some((Instant::now(), props));
        }
    };
    Handlers {
        on_properties: Box::new(on_properties),
        on_message: Box::new(on_message),
        on_tick: Box::new(on_tick),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Cellar(Rc<Cell<OpusKnobs>>);

    impl KnobStore for Cellar {
        fn knobs(&self) -> OpusKnobs {
            self.0.get()
        }
        fn set_knobs(&self, knobs: OpusKnobs) {
            self.0.set(knobs)
        }
    }

    fn control() -> (KnobControl, Rc<Cell<OpusKnobs>>) {
        let cell = Rc::new(Cell::new(OpusKnobs::default()));
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let c = KnobControl::new(
            Cellar(cell.clone()),
            Compression::Opus,
            fmt,
            "t".into(),
            "retuned",
        );
        (c, cell)
    }

    #[test]
    fn properties_changed() {
        let (c, cell) = control();
        assert_eq!(c.properties_changed(|_| None), None);
        let same = c.effective();
        let get = |k: &str| same.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(c.properties_changed(get), None);
        let got = c
            .properties_changed(|k| (k == "compression.bitrate").then(|| "16000".to_string()))
            .unwrap();
        assert_eq!(cell.get().bitrate, 16000);
        assert!(got.contains(&("compression.bitrate".into(), "16000".into())));
        // A refused value: nothing changes, the effective values go back.
        let got = c
            .properties_changed(|k| (k == "compression.opus.complexity").then(|| "11".to_string()))
            .unwrap();
        assert!(got.contains(&("compression.opus.complexity".into(), "10".into())));
    }

    #[test]
    fn device_handlers_reach_a_live_device() {
        let (c, cell) = control();
        type Props = std::cell::RefCell<Vec<(String, String)>>;
        let device = Rc::new(Props::default());
        let publish: fn(&Props, &[(String, String)]) = |d, p| d.borrow_mut().extend_from_slice(p);
        let stats = Stats {
            get: Vec::new,
            tick: || vec![("opus.tunnel.state".to_string(), "idle".to_string())],
        };
        let Handlers {
            on_properties: on_props,
            on_message: mut on_msg,
            mut on_tick,
        } = device_handlers(c, &device, publish, stats, "gone");
        on_props(&|k| (k == "compression.bitrate").then(|| "24000".to_string()));
        assert_eq!(cell.get().bitrate, 24000);
        assert!(!device.borrow().is_empty());
        assert_eq!(on_msg("set", "compression.bitrate=20000").unwrap(), "ok");
        on_tick();
        assert!(device
            .borrow()
            .iter()
            .any(|(k, _)| k == "opus.tunnel.state"));
        drop(device);
        on_tick();
        assert_eq!(on_msg("get", "").unwrap_err(), "gone");
    }

    #[test]
    fn messages() {
        let (c, cell) = control();
        let published = Cell::new(false);
        let stats = || vec![("opus.tunnel.state".to_string(), "idle".to_string())];
        let out = c.message("get", "", stats, |_| unreachable!()).unwrap();
        assert!(out.contains("compression.bitrate=64000\n") && out.contains("state=idle"));
        let r = c.message("set", "compression.bitrate=20k", Vec::new, |p| {
            published.set(
                p.iter()
                    .any(|(k, v)| k == "compression.bitrate" && v == "20000"),
            )
        });
        assert_eq!(r.unwrap(), "ok");
        assert!(published.get());
        assert_eq!(cell.get().bitrate, 20000);
        let e = c
            .message("set", "compression.opus.complexity=11", Vec::new, |_| {})
            .unwrap_err();
        assert!(e.contains("0 to 10"), "{e}");
    }
}
