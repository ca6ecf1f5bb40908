//! What a playback stream (`pa_sink_input`) and a recording stream (`pa_source_output`)
//! share: pulsecore gives both the same shape, so one generic [`Stream`] holds the creation on
//! a named device, the kill handling, the property updates and the teardown; a [`Kind`] names
//! the functions of each and installs its own IO callbacks.
use crate::device;
use crate::mainloop::WakeHandle;
use crate::module::ModuleRef;
use crate::{sys, Proplist, SampleSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A kind of stream: pulsecore's names for it. Not nameable outside the crate.
pub trait Kind: Sized + 'static {
    /// `pa_sink_input` or `pa_source_output`.
    type Raw;
    /// The device the stream connects to.
    type Device: device::Kind;
    /// The callback (`dyn SinkInputIo` or `dyn SourceOutputIo`).
    type Io: ?Sized + Send;
    /// How to create one (`SinkInputConfig` or `SourceOutputConfig`).
    type Config<'a>;
    const PUT: unsafe extern "C" fn(*mut Self::Raw);
    const UNLINK: unsafe extern "C" fn(*mut Self::Raw);
    const UNREF: unsafe extern "C" fn(*mut Self::Raw);
    const SET_REQUESTED_LATENCY: unsafe extern "C" fn(*mut Self::Raw, u64) -> u64;
    const UPDATE_PROPLIST: unsafe extern "C" fn(
        *mut Self::Raw,
        sys::pa_update_mode_t,
        *mut sys::pa_proplist,
    );

    /// Creates the (unlinked) stream on `device` (`pa_*_new`); returns pulsecore's result and
    /// the stream.
    ///
    /// # Safety
    /// Main thread; live core, module and device.
    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        device: *mut <Self::Device as device::Kind>::Raw,
        cfg: &Self::Config<'_>,
    ) -> (libc::c_int, *mut Self::Raw);

    /// Installs the stream's callbacks (`kill` is [`kill_cb`]).
    ///
    /// # Safety
    /// Main thread, stream not yet put.
    unsafe fn install(s: *mut Self::Raw);

    /// `&mut (*s).userdata`, and the other fields both stream structs have.
    ///
    /// # Safety (all field accessors)
    /// `s` is a live stream.
    unsafe fn userdata(s: *mut Self::Raw) -> *mut *mut libc::c_void;
    unsafe fn proplist(s: *mut Self::Raw) -> *mut sys::pa_proplist;
    unsafe fn index(s: *mut Self::Raw) -> u32;
    /// The device the stream is on; NULL while unlinked.
    unsafe fn device(s: *mut Self::Raw) -> *mut <Self::Device as device::Kind>::Raw;

    /// Corks a quiet stream and lets it ask no latency of its device (so that an idle device
    /// may sleep in long blocks), or uncorks it and asks `latency_usec` again. Does nothing
    /// for a kind that has no use for it.
    ///
    /// # Safety
    /// Main thread, live linked stream.
    unsafe fn set_quiet(_s: *mut Self::Raw, _quiet: bool, _latency_usec: u64) {}
}

/// The callbacks' state (shared with the IO thread through pulsecore).
pub struct StreamState<K: Kind> {
    pub(crate) mempool: *mut sys::pa_mempool,
    pub(crate) frame_size: usize,
    killed: Arc<AtomicBool>,
    on_kill: Option<WakeHandle>,
    pub(crate) io: Box<K::Io>,
}

/// A stream created by a module (main thread). Dropping it unlinks the stream.
pub struct Stream<K: Kind> {
    pub(crate) raw: *mut K::Raw,
    pub(crate) state: *mut StreamState<K>,
    pub(crate) killed: Arc<AtomicBool>,
    /// The latency asked of the device when the stream opened, µs.
    requested_latency_usec: u64,
}

/// The daemon kills the stream (its device went away, `kill-sink-input`, ...).
pub(crate) unsafe extern "C" fn kill_cb<K: Kind>(s: *mut K::Raw) {
    let st = *K::userdata(s) as *mut StreamState<K>;
    (K::UNLINK)(s);
    if !st.is_null() {
        (*st).killed.store(true, Ordering::SeqCst);
        if let Some(w) = &(*st).on_kill {
            w.wake();
        }
    }
}

impl<K: Kind> Stream<K> {
    /// Creates the stream on the device named `device` (`None`: the default one) and starts
    /// it; `spec`, the requested latency and `on_kill` come from `cfg`, taken apart by the
    /// caller.
    pub(crate) fn open(
        module: &ModuleRef,
        device: Option<&str>,
        cfg: &K::Config<'_>,
        spec: &SampleSpec,
        requested_latency_usec: u64,
        on_kill: Option<WakeHandle>,
        io: Box<K::Io>,
    ) -> Result<Stream<K>, String> {
        use device::Kind as _;
        let what = K::Device::WHAT;
        let core = module.core();
        let name = device;
        let device = core.find::<K::Device>(name);
        if device.is_null() {
            return Err(match name {
                Some(n) => format!("no {what} named {n:?}"),
                None => format!("there is no default {what}"),
            });
        }
        let killed = Arc::new(AtomicBool::new(false));
        // SAFETY: main thread; live core, module and device; the state outlives the stream
        // (freed in Drop after the stream is unlinked).
        unsafe {
            let (r, raw) = K::create(core.raw(), module.raw(), device, cfg);
            if r < 0 || raw.is_null() {
                return Err(format!("the daemon refused the stream (error {r})"));
            }
            let state = Box::into_raw(Box::new(StreamState::<K> {
                mempool: (*core.raw()).mempool,
                frame_size: spec.frame_size(),
                killed: killed.clone(),
                on_kill,
                io,
            }));
            K::install(raw);
            *K::userdata(raw) = state as *mut libc::c_void;
            (K::SET_REQUESTED_LATENCY)(raw, requested_latency_usec);
            (K::PUT)(raw);
            Ok(Stream {
                raw,
                state,
                killed,
                requested_latency_usec,
            })
        }
    }

    /// True once the daemon killed the stream (its device went away, or `kill-sink-input` /
    /// `kill-source-output`).
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// The name of the device the stream is on (it may have been moved).
    pub(crate) fn device_name(&self) -> Option<String> {
        // SAFETY: the stream object lives until Drop (we hold a reference); its device is NULL
        // while unlinked.
        unsafe {
            let d = K::device(self.raw);
            if d.is_null() {
                None
            } else {
                crate::from_cstr(<K::Device as device::Kind>::name(d))
            }
        }
    }

    /// A quiet stream (nothing to play for a while) is corked and asks no latency of its
    /// device, so that the device can idle in long blocks or be suspended
    /// (`module-suspend-on-idle`); `false` uncorks it and asks its latency again. (Playback
    /// streams only; the others ignore it.)
    pub fn set_quiet(&self, quiet: bool) {
        if self.killed() {
            return;
        }
        // SAFETY: live, linked stream; main thread.
        unsafe { K::set_quiet(self.raw, quiet, self.requested_latency_usec) }
    }

    /// Merges `props` into the stream's properties; unchanged keys are left alone.
    pub fn update_proplist(&self, props: &Proplist) {
        if self.killed() {
            return;
        }
        // SAFETY: live, linked stream; main thread.
        unsafe {
            let current = Proplist::copy_of(K::proplist(self.raw));
            if let Some(changed) = current.changes(props) {
                (K::UPDATE_PROPLIST)(self.raw, sys::PA_UPDATE_REPLACE, changed.raw());
            }
        }
    }
}

impl<K: Kind> Drop for Stream<K> {
    fn drop(&mut self) {
        // SAFETY: main thread. Unlinking removes the stream from the device's IO thread
        // synchronously, so no callback runs after it; then our reference and state go.
        unsafe {
            if !self.killed() {
                (K::UNLINK)(self.raw);
            }
            *K::userdata(self.raw) = std::ptr::null_mut();
            (K::UNREF)(self.raw);
            drop(Box::from_raw(self.state));
        }
    }
}

/// The accessors of the fields both stream structs have; `$device` is the field naming the
/// device (`sink` or `source`).
macro_rules! stream_fields {
    ($device:ident) => {
        unsafe fn userdata(s: *mut Self::Raw) -> *mut *mut libc::c_void {
            std::ptr::addr_of_mut!((*s).userdata)
        }
        unsafe fn proplist(s: *mut Self::Raw) -> *mut $crate::sys::pa_proplist {
            (*s).proplist
        }
        unsafe fn index(s: *mut Self::Raw) -> u32 {
            (*s).index
        }
        unsafe fn device(s: *mut Self::Raw) -> *mut <Self::Device as $crate::device::Kind>::Raw {
            (*s).$device
        }
    };
}
pub(crate) use stream_fields;

/// What every stream of a module, sink-input or source-output, can tell and take.
pub trait ModuleStream {
    /// The daemon killed the stream (`pactl kill-sink-input`, its device went away).
    fn killed(&self) -> bool;
    /// Merges `props` into the stream's properties.
    fn update_proplist(&self, props: &Proplist);
    /// See [`Stream::set_quiet`].
    fn set_quiet(&self, quiet: bool);
}

impl<K: Kind> ModuleStream for Stream<K> {
    fn killed(&self) -> bool {
        Stream::killed(self)
    }
    fn update_proplist(&self, props: &Proplist) {
        Stream::update_proplist(self, props)
    }
    fn set_quiet(&self, quiet: bool) {
        Stream::set_quiet(self, quiet)
    }
}
