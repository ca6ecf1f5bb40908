//! Audio streams (F32 interleaved) with a real-time process callback: a playback stream pulls
//! audio from a [`StreamIo`], a capture stream (or an `Audio/Sink` node) hands it what it
//! receives.

use crate::dict::with_dict;
use crate::module::Context;
use crate::pw_sys as pw;
use crate::spa_sys as spa;
use libspa::param::audio::{AudioFormat, AudioInfoRaw};
use libspa::pod::deserialize::PodDeserializer;
use libspa::pod::serialize::PodSerializer;
use libspa::pod::{Object, Value};
use std::cell::{Cell, UnsafeCell};
use std::ffi::{c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Which way audio flows through the stream, seen from the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We produce audio (`Stream/Output/Audio`): [`StreamIo::fill`] is called.
    Playback,
    /// We receive audio (`Stream/Input/Audio`, or an `Audio/Sink` node): [`StreamIo::consume`].
    Capture,
}

/// The real-time side of a stream; runs on PipeWire's data thread. Must not block or allocate.
pub trait StreamIo: Send + 'static {
    /// Playback: fill `out` (interleaved f32) completely.
    fn fill(&mut self, out: &mut [f32]) {
        out.fill(0.0);
    }
    /// Capture: `data` holds whole interleaved f32 frames (native endian) as bytes.
    fn consume(&mut self, _data: &[u8]) {}
    /// Playback: the rate the stream's adapter should resample at, as output (device) frames
    /// per input (stream) frame, or `None` to leave PipeWire's rate matching alone. Asked at
    /// every process cycle before [`fill`](Self::fill); written to the stream's
    /// `SPA_IO_RateMatch` area (as module-pulse-tunnel and module-rtp-source do), which the
    /// adapter's audioconvert applies from the next cycle (`rate_match.size` then says how
    /// many input frames it wants).
    fn rate_match(&mut self) -> Option<f64> {
        None
    }
    /// Playback: called before each [`fill`](Self::fill) with how long the device will take
    /// to play the first frame this cycle hands it, µs — the stream's delay to the device and
    /// what is queued in the stream and its resampler.
    fn device_latency(&mut self, _usec: u64) {}
}

/// A stream's state as PipeWire reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamState {
    Error(String),
    Unconnected,
    Connecting,
    Paused,
    Streaming,
}

/// What to create.
pub struct StreamSpec<'a> {
    /// The stream's name (and default `node.name` / `media.name`).
    pub name: &'a str,
    /// Its properties (`media.class`, `node.name`, `target.object`, …).
    pub props: &'a [(String, String)],
    pub direction: Direction,
    pub rate: u32,
    pub channels: u8,
    /// SPA channel positions (see [`channel_positions`]).
    pub positions: &'a [u32],
}

/// A stream's state-change callback (main thread).
type StateCallback = Box<dyn FnMut(StreamState)>;

/// A stream's callback for custom parameters set on its node (main thread): the `key`/`value`
/// pairs of the `params` struct of a `Props` param, as `pw-cli set-param <node> Props
/// '{ params = [ "key" value ... ] }'` sends them (values as text).
type ParamsCallback = Box<dyn FnMut(Vec<(String, String)>)>;

struct StreamData {
    raw: *mut pw::pw_stream,
    /// The live stream, or null once PipeWire destroyed it (its core went away first, at
    /// daemon shutdown) or we did.
    alive: Rc<Cell<*mut pw::pw_stream>>,
    channels: usize,
    /// The stream's rate (its frames' duration, for the device latency).
    rate: u32,
    direction: Direction,
    hook: spa::spa_hook,
    events: pw::pw_stream_events,
    // Used only on the data thread (process), and taken back by `Stream::into_io` after the
    // stream is destroyed.
    io: UnsafeCell<Option<Box<dyn StreamIo>>>,
    // Used only on the main thread (state_changed).
    on_state: UnsafeCell<Option<StateCallback>>,
    // Used only on the main thread (param_changed).
    on_params: UnsafeCell<Option<ParamsCallback>>,
    /// The stream's `SPA_IO_RateMatch` area (io_changed), or null.
    rate_match: AtomicPtr<spa::spa_io_rate_match>,
}

/// A PipeWire stream. Dropping it destroys the stream (PipeWire stops its process callback
/// before it returns).
pub struct Stream {
    raw: *mut pw::pw_stream,
    data: Box<StreamData>,
    alive: Rc<Cell<*mut pw::pw_stream>>,
}

/// A main-thread handle on a [`Stream`] that does nothing once the stream is gone.
#[derive(Clone)]
pub struct StreamHandle(Rc<Cell<*mut pw::pw_stream>>);

impl StreamHandle {
    /// [`Stream::update_properties`], if the stream still exists.
    pub fn update_properties(&self, pairs: &[(String, String)]) {
        let raw = self.0.get();
        if !raw.is_null() {
            update_properties_raw(raw, pairs);
        }
    }
}

fn update_properties_raw(raw: *mut pw::pw_stream, pairs: &[(String, String)]) {
    // SAFETY: callers pass a live stream; the dict outlives the call (PipeWire copies).
    with_dict(pairs.iter().map(|(k, v)| (k, v)), |dict| unsafe {
        pw::pw_stream_update_properties(raw, dict as *const _);
    });
}

/// The stream's delay to its device plus what waits in the stream and its resampler, µs;
/// `None` before the graph has timed the stream.
///
/// # Safety
/// `raw` is a live stream, on its data thread.
unsafe fn device_latency_usec(raw: *mut pw::pw_stream, rate: u32) -> Option<u64> {
    // SAFETY (of the block): pw_time is plain data (zeroes are a valid value), and
    // pw_stream_get_time_n fills at most the size we give; it is meant for the data thread.
    let mut t: pw::pw_time = std::mem::zeroed();
    if pw::pw_stream_get_time_n(raw, &mut t, std::mem::size_of::<pw::pw_time>()) < 0 {
        return None;
    }
    if t.rate.denom == 0 || t.rate.num == 0 || rate == 0 {
        return None;
    }
    // delay is in ticks of rate (num/denom s); queued (our buffers' sizes, frames) and
    // buffered (resampler) in the stream's frames.
    let delay = t.delay.max(0) as f64 * f64::from(t.rate.num) / f64::from(t.rate.denom);
    let stream = (t.queued + t.buffered) as f64;
    Some(((delay + stream / f64::from(rate)) * 1e6) as u64)
}

unsafe extern "C" fn on_process(data: *mut c_void) {
    let d = data as *const StreamData;
    let raw = (*d).raw;
    let b = pw::pw_stream_dequeue_buffer(raw);
    if b.is_null() {
        return;
    }
    let buf = (*b).buffer;
    if buf.is_null() || (*buf).n_datas == 0 || (*buf).datas.is_null() {
        pw::pw_stream_queue_buffer(raw, b);
        return;
    }
    let sd = &mut *(*buf).datas;
    if sd.data.is_null() || sd.chunk.is_null() {
        pw::pw_stream_queue_buffer(raw, b);
        return;
    }
    let Some(io) = (*(*d).io.get()).as_mut() else {
        pw::pw_stream_queue_buffer(raw, b);
        return;
    };
    let ch = (*d).channels.max(1);
    let stride = 4 * ch;
    match (*d).direction {
        Direction::Playback => {
            let rm = (*d).rate_match.load(Ordering::Acquire);
            if !rm.is_null() {
                if let Ok(Some(r)) = catch_unwind(AssertUnwindSafe(|| io.rate_match())) {
                    if r.is_finite() && (0.5..2.0).contains(&r) {
                        (*rm).rate = r;
                        (*rm).flags |= spa::SPA_IO_RATE_MATCH_FLAG_ACTIVE;
                    }
                }
            }
            let mut frames = sd.maxsize as usize / stride;
            if (*b).requested > 0 {
                frames = frames.min((*b).requested as usize);
            }
            if let Some(usec) = device_latency_usec(raw, (*d).rate) {
                let _ = catch_unwind(AssertUnwindSafe(|| io.device_latency(usec)));
            }
            let out = std::slice::from_raw_parts_mut(sd.data as *mut f32, frames * ch);
            if catch_unwind(AssertUnwindSafe(|| io.fill(out))).is_err() {
                out.fill(0.0);
            }
            let chunk = &mut *sd.chunk;
            chunk.offset = 0;
            chunk.stride = stride as i32;
            chunk.size = (frames * stride) as u32;
            (*b).size = frames as u64;
        }
        Direction::Capture => {
            let chunk = &*sd.chunk;
            let max = sd.maxsize as usize;
            let off = (chunk.offset as usize).min(max);
            let size = (chunk.size as usize).min(max - off);
            let bytes = std::slice::from_raw_parts((sd.data as *const u8).add(off), size);
            let _ = catch_unwind(AssertUnwindSafe(|| io.consume(bytes)));
        }
    }
    pw::pw_stream_queue_buffer(raw, b);
}

unsafe extern "C" fn on_io_changed(data: *mut c_void, id: u32, area: *mut c_void, size: u32) {
    if id != spa::SPA_IO_RateMatch {
        return;
    }
    let d = data as *const StreamData;
    let p = if area.is_null() || (size as usize) < std::mem::size_of::<spa::spa_io_rate_match>() {
        std::ptr::null_mut()
    } else {
        area as *mut spa::spa_io_rate_match
    };
    (*d).rate_match.store(p, Ordering::Release);
}

unsafe extern "C" fn on_destroy(data: *mut c_void) {
    // The daemon disconnects our core before it destroys the module, and that destroys the
    // streams on it: from now on the stream must not be touched (nor destroyed again).
    let d = data as *const StreamData;
    (*d).alive.set(std::ptr::null_mut());
}

unsafe extern "C" fn on_state_changed(
    data: *mut c_void,
    _old: pw::pw_stream_state,
    state: pw::pw_stream_state,
    error: *const std::ffi::c_char,
) {
    let d = data as *const StreamData;
    let st = convert_state(state, error);
    if let Some(cb) = (*(*d).on_state.get()).as_mut() {
        if catch_unwind(AssertUnwindSafe(|| cb(st))).is_err() {
            log::error!("panic in a stream state callback (caught)");
        }
    }
}

unsafe extern "C" fn on_param_changed(data: *mut c_void, id: u32, param: *const spa::spa_pod) {
    if id != spa::SPA_PARAM_Props || param.is_null() {
        return;
    }
    let d = data as *const StreamData;
    // SAFETY: PipeWire hands a valid pod for the duration of the call: its header says how
    // many bytes follow.
    let bytes = std::slice::from_raw_parts(
        param as *const u8,
        std::mem::size_of::<spa::spa_pod>() + (*param).size as usize,
    );
    let r = catch_unwind(AssertUnwindSafe(|| {
        let pairs = props_params(bytes);
        if pairs.is_empty() {
            return;
        }
        if let Some(cb) = (*(*d).on_params.get()).as_mut() {
            cb(pairs);
        }
    }));
    if r.is_err() {
        log::error!("panic in a stream parameter callback (caught)");
    }
}

/// The `params` struct of a `Props` object pod as key/value text pairs (numbers without a
/// fraction are written as integers: `16000`, not `16000.0`). Anything else in the pod, or a
/// pod that does not parse, gives nothing.
pub(crate) fn props_params(bytes: &[u8]) -> Vec<(String, String)> {
    let Ok((_, Value::Object(obj))) = PodDeserializer::deserialize_any_from(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in obj.properties {
        if p.key != spa::SPA_PROP_params {
            continue;
        }
        let Value::Struct(items) = p.value else {
            continue;
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let Value::String(k) = k else { continue };
            let v = match v {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Int(n) => n.to_string(),
                Value::Long(n) => n.to_string(),
                Value::Float(f) => number(f64::from(f)),
                Value::Double(f) => number(f),
                Value::Id(i) => i.0.to_string(),
                _ => continue,
            };
            out.push((k, v));
        }
    }
    out
}

fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

unsafe fn convert_state(state: pw::pw_stream_state, error: *const std::ffi::c_char) -> StreamState {
    match state {
        pw::pw_stream_state_PW_STREAM_STATE_UNCONNECTED => StreamState::Unconnected,
        pw::pw_stream_state_PW_STREAM_STATE_CONNECTING => StreamState::Connecting,
        pw::pw_stream_state_PW_STREAM_STATE_PAUSED => StreamState::Paused,
        pw::pw_stream_state_PW_STREAM_STATE_STREAMING => StreamState::Streaming,
        _ => StreamState::Error(if error.is_null() {
            "error".into()
        } else {
            CStr::from_ptr(error).to_string_lossy().into_owned()
        }),
    }
}

/// Builds a `pw_properties` from pairs (ownership passes to the callee it is given to).
fn new_properties(pairs: &[(String, String)]) -> *mut pw::pw_properties {
    // SAFETY: NULL key ends the (empty) vararg list; set copies the strings.
    unsafe {
        let p = pw::pw_properties_new(std::ptr::null());
        if p.is_null() {
            return p;
        }
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (CString::new(k.as_str()), CString::new(v.as_str())) {
                pw::pw_properties_set(p, k.as_ptr(), v.as_ptr());
            }
        }
        p
    }
}

fn format_pod(rate: u32, channels: u8, positions: &[u32]) -> Result<Vec<u8>, String> {
    let mut info = AudioInfoRaw::new();
    info.set_format(AudioFormat::F32LE);
    info.set_rate(rate);
    info.set_channels(u32::from(channels));
    let mut pos = [0u32; spa::SPA_AUDIO_MAX_CHANNELS as usize];
    for (i, p) in positions.iter().take(pos.len()).enumerate() {
        pos[i] = *p;
    }
    info.set_position(pos);
    let obj = Object {
        type_: spa::SPA_TYPE_OBJECT_Format,
        id: spa::SPA_PARAM_EnumFormat,
        properties: info.into(),
    };
    PodSerializer::serialize(std::io::Cursor::new(Vec::new()), &Value::Object(obj))
        .map(|(c, _)| c.into_inner())
        .map_err(|e| format!("cannot build the format: {e:?}"))
}

impl Stream {
    /// Creates and connects a stream on the module's core (AUTOCONNECT: the session manager
    /// links it), F32 interleaved at `spec.rate`/`spec.channels`. `on_state` runs on the main
    /// thread at every state change.
    pub fn new(
        ctx: &Context,
        spec: &StreamSpec,
        io: Box<dyn StreamIo>,
        on_state: Option<Box<dyn FnMut(StreamState)>>,
    ) -> Result<Stream, String> {
        let core = ctx.inner.core.get();
        if core.is_null() {
            return Err("the daemon is shutting down".into());
        }
        let pod = format_pod(spec.rate, spec.channels, spec.positions)?;
        let name = CString::new(spec.name).map_err(|_| "bad stream name".to_string())?;
        let props = new_properties(spec.props);
        if props.is_null() {
            return Err("out of memory".into());
        }
        // SAFETY: core is live (checked above); pw_stream_new takes ownership of props.
        let raw = unsafe { pw::pw_stream_new(core, name.as_ptr(), props) };
        if raw.is_null() {
            return Err(format!(
                "cannot create the stream: {}",
                std::io::Error::last_os_error()
            ));
        }
        let alive = Rc::new(Cell::new(raw));
        // SAFETY: zeroed hook is its initial state; the data is boxed, so the pointers handed
        // to PipeWire stay valid until `drop` destroys the stream and then frees the box.
        let data = unsafe {
            let mut data = Box::new(StreamData {
                raw,
                alive: alive.clone(),
                channels: usize::from(spec.channels),
                rate: spec.rate,
                direction: spec.direction,
                hook: std::mem::zeroed(),
                events: pw::pw_stream_events {
                    version: pw::PW_VERSION_STREAM_EVENTS,
                    destroy: Some(on_destroy),
                    state_changed: Some(on_state_changed),
                    process: Some(on_process),
                    param_changed: Some(on_param_changed),
                    io_changed: Some(on_io_changed),
                    ..std::mem::zeroed()
                },
                io: UnsafeCell::new(Some(io)),
                on_state: UnsafeCell::new(on_state),
                on_params: UnsafeCell::new(None),
                rate_match: AtomicPtr::new(std::ptr::null_mut()),
            });
            let dp: *mut StreamData = &mut *data;
            pw::pw_stream_add_listener(
                raw,
                &mut (*dp).hook as *mut spa::spa_hook as *mut _,
                &(*dp).events,
                dp as *mut c_void,
            );
            data
        };
        let stream = Stream { raw, data, alive };
        let dir = match spec.direction {
            Direction::Playback => spa::SPA_DIRECTION_OUTPUT,
            Direction::Capture => spa::SPA_DIRECTION_INPUT,
        };
        let mut params = [pod.as_ptr() as *const spa::spa_pod];
        let flags = pw::pw_stream_flags_PW_STREAM_FLAG_AUTOCONNECT
            | pw::pw_stream_flags_PW_STREAM_FLAG_MAP_BUFFERS
            | pw::pw_stream_flags_PW_STREAM_FLAG_RT_PROCESS;
        // SAFETY: the stream is live; the format pod is valid for the call (PipeWire copies).
        let res = unsafe {
            pw::pw_stream_connect(
                stream.raw,
                dir,
                pw::PW_ID_ANY,
                flags,
                params.as_mut_ptr(),
                1,
            )
        };
        if res < 0 {
            return Err(format!(
                "cannot connect the stream: {}",
                std::io::Error::from_raw_os_error(-res)
            ));
        }
        Ok(stream)
    }

    /// Adds or changes properties of the stream's node (`pw-dump` and `pw-cli info` show them).
    pub fn update_properties(&self, pairs: &[(String, String)]) {
        let raw = self.alive.get();
        if !raw.is_null() {
            update_properties_raw(raw, pairs);
        }
    }

    /// Calls `cb` (main thread) with the key/value pairs of every `Props` param set on the
    /// stream's node with custom `params` (`pw-cli set-param <node id> Props '{ params = [
    /// "compression.bitrate" 16000 ] }'`). Replaces an earlier callback.
    pub fn on_params(&self, cb: impl FnMut(Vec<(String, String)>) + 'static) {
        // SAFETY: main thread only, like `on_param_changed` which reads it; not called from
        // within that callback (the callback does not get the stream).
        unsafe {
            *self.data.on_params.get() = Some(Box::new(cb));
        }
    }

    /// Destroys the stream and gives back its real-time side (to park it until a new stream
    /// is made). `None` only if it was lost to a panic.
    pub fn into_io(mut self) -> Option<Box<dyn StreamIo>> {
        self.destroy();
        // SAFETY: the stream is destroyed: no process callback runs any more.
        unsafe { (*self.data.io.get()).take() }
    }

    fn destroy(&mut self) {
        // SAFETY: the stream is ours; pw_stream_destroy stops the process callback (it
        // synchronises with the data thread), removes our hook with the rest of its listeners
        // and frees the stream; our data box is freed after it.
        // If PipeWire already destroyed it (see `on_destroy`), there is nothing to do.
        let raw = self.alive.replace(std::ptr::null_mut());
        if !raw.is_null() {
            debug_assert_eq!(raw, self.raw);
            unsafe {
                pw::pw_stream_destroy(raw);
            }
        }
    }

    /// A handle for callbacks that must not own the stream.
    pub fn handle(&self) -> StreamHandle {
        StreamHandle(self.alive.clone())
    }

    /// The stream's current state.
    pub fn state(&self) -> StreamState {
        let raw = self.alive.get();
        if raw.is_null() {
            return StreamState::Unconnected;
        }
        let mut err: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: the stream is live; err is set to a string owned by the stream (or NULL).
        unsafe {
            let s = pw::pw_stream_get_state(raw, &mut err);
            convert_state(s, err)
        }
    }

    /// The node id of the stream (`u32::MAX` until it is known).
    pub fn node_id(&self) -> u32 {
        let raw = self.alive.get();
        if raw.is_null() {
            return u32::MAX;
        }
        // SAFETY: the stream is live.
        unsafe { pw::pw_stream_get_node_id(raw) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.destroy();
        let _ = &self.data;
    }
}

/// SPA channel positions for a PulseAudio-style channel map (`front-left,front-right`); when
/// the map is empty or has another number of channels, the usual positions for that many
/// channels. A name this end does not know becomes an AUX position of its own, so that the
/// known positions keep their places (a surround stream is never shifted by one odd name).
pub fn channel_positions(map: &str, channels: u8) -> Vec<u32> {
    let names: Vec<&str> = map.split(',').map(str::trim).collect();
    if map.trim().is_empty() || names.len() != usize::from(channels) {
        return default_positions(channels);
    }
    names
        .iter()
        .enumerate()
        .map(|(i, n)| position(n).unwrap_or(spa::SPA_AUDIO_CHANNEL_AUX0 + i as u32))
        .collect()
}

fn position(name: &str) -> Option<u32> {
    Some(match name {
        "mono" => spa::SPA_AUDIO_CHANNEL_MONO,
        "front-left" | "left" => spa::SPA_AUDIO_CHANNEL_FL,
        "front-right" | "right" => spa::SPA_AUDIO_CHANNEL_FR,
        "front-center" | "center" => spa::SPA_AUDIO_CHANNEL_FC,
        "lfe" | "subwoofer" => spa::SPA_AUDIO_CHANNEL_LFE,
        "rear-left" => spa::SPA_AUDIO_CHANNEL_RL,
        "rear-right" => spa::SPA_AUDIO_CHANNEL_RR,
        "rear-center" => spa::SPA_AUDIO_CHANNEL_RC,
        "side-left" => spa::SPA_AUDIO_CHANNEL_SL,
        "side-right" => spa::SPA_AUDIO_CHANNEL_SR,
        "front-left-of-center" => spa::SPA_AUDIO_CHANNEL_FLC,
        "front-right-of-center" => spa::SPA_AUDIO_CHANNEL_FRC,
        "top-center" => spa::SPA_AUDIO_CHANNEL_TC,
        "top-front-left" => spa::SPA_AUDIO_CHANNEL_TFL,
        "top-front-right" => spa::SPA_AUDIO_CHANNEL_TFR,
        "top-front-center" => spa::SPA_AUDIO_CHANNEL_TFC,
        "top-rear-left" => spa::SPA_AUDIO_CHANNEL_TRL,
        "top-rear-right" => spa::SPA_AUDIO_CHANNEL_TRR,
        "top-rear-center" => spa::SPA_AUDIO_CHANNEL_TRC,
        other => {
            let n: u32 = other.strip_prefix("aux")?.parse().ok()?;
            spa::SPA_AUDIO_CHANNEL_AUX0 + n
        }
    })
}

fn default_positions(channels: u8) -> Vec<u32> {
    use spa::*;
    match channels {
        1 => vec![SPA_AUDIO_CHANNEL_MONO],
        2 => vec![SPA_AUDIO_CHANNEL_FL, SPA_AUDIO_CHANNEL_FR],
        3 => vec![
            SPA_AUDIO_CHANNEL_FL,
            SPA_AUDIO_CHANNEL_FR,
            SPA_AUDIO_CHANNEL_LFE,
        ],
        4 => vec![
            SPA_AUDIO_CHANNEL_FL,
            SPA_AUDIO_CHANNEL_FR,
            SPA_AUDIO_CHANNEL_RL,
            SPA_AUDIO_CHANNEL_RR,
        ],
        6 => vec![
            SPA_AUDIO_CHANNEL_FL,
            SPA_AUDIO_CHANNEL_FR,
            SPA_AUDIO_CHANNEL_FC,
            SPA_AUDIO_CHANNEL_LFE,
            SPA_AUDIO_CHANNEL_RL,
            SPA_AUDIO_CHANNEL_RR,
        ],
        n => (0..u32::from(n))
            .map(|i| SPA_AUDIO_CHANNEL_AUX0 + i)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_of_props() {
        use libspa::pod::{Property, PropertyFlags};
        let obj = Object {
            type_: spa::SPA_TYPE_OBJECT_Props,
            id: spa::SPA_PARAM_Props,
            properties: vec![Property {
                key: spa::SPA_PROP_params,
                flags: PropertyFlags::empty(),
                value: Value::Struct(vec![
                    Value::String("compression.bitrate".into()),
                    Value::Int(16000),
                    Value::String("compression.opus.vbr".into()),
                    Value::Bool(false),
                    Value::String("compression.frame_size".into()),
                    Value::Float(2.5),
                    Value::String("compression.opus.complexity".into()),
                    Value::Double(5.0),
                    Value::String("dangling".into()),
                ]),
            }],
        };
        let bytes = PodSerializer::serialize(std::io::Cursor::new(Vec::new()), &Value::Object(obj))
            .unwrap()
            .0
            .into_inner();
        assert_eq!(
            props_params(&bytes),
            vec![
                ("compression.bitrate".to_string(), "16000".to_string()),
                ("compression.opus.vbr".to_string(), "false".to_string()),
                ("compression.frame_size".to_string(), "2.5".to_string()),
                ("compression.opus.complexity".to_string(), "5".to_string()),
            ]
        );
        assert!(props_params(&bytes[..10]).is_empty());
        assert!(props_params(&[]).is_empty());
    }

    #[test]
    fn positions() {
        assert_eq!(
            channel_positions("front-left,front-right", 2),
            vec![spa::SPA_AUDIO_CHANNEL_FL, spa::SPA_AUDIO_CHANNEL_FR]
        );
        assert_eq!(channel_positions("", 1), vec![spa::SPA_AUDIO_CHANNEL_MONO]);
        assert_eq!(channel_positions("bogus,x", 2).len(), 2);
        // 5.1 in PulseAudio's order keeps it; an unknown name takes an AUX place of its own.
        use spa::*;
        assert_eq!(
            channel_positions(
                "front-left,front-right,rear-left,rear-right,front-center,lfe",
                6
            ),
            vec![
                SPA_AUDIO_CHANNEL_FL,
                SPA_AUDIO_CHANNEL_FR,
                SPA_AUDIO_CHANNEL_RL,
                SPA_AUDIO_CHANNEL_RR,
                SPA_AUDIO_CHANNEL_FC,
                SPA_AUDIO_CHANNEL_LFE
            ]
        );
        assert_eq!(
            channel_positions("front-left,front-right,weird,lfe", 4),
            vec![
                SPA_AUDIO_CHANNEL_FL,
                SPA_AUDIO_CHANNEL_FR,
                SPA_AUDIO_CHANNEL_AUX0 + 2,
                SPA_AUDIO_CHANNEL_LFE
            ]
        );
        assert_eq!(
            channel_positions("front-left,front-right", 6),
            default_positions(6)
        );
    }
}
