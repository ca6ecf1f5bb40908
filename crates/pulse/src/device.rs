//! What a sink and a source share: pulsecore gives both the same shape (`pa_sink_*` and
//! `pa_source_*` functions over structs with the same fields), so one generic [`Device`] holds
//! the IO thread (`pa_thread` + `pa_rtpoll` + `pa_thread_mq`, clocked by the system's monotonic
//! clock like `module-null-sink`/`-source`), the creation, the property handling and the
//! teardown; a [`Kind`] names the functions and constants of each, and what differs in the IO
//! thread (rendering from a sink, posting into a source).
use crate::module::ModuleRef;
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;

/// How to create a [`Sink`](crate::sink::Sink) or a [`Source`](crate::source::Source).
pub struct DeviceConfig<'a> {
    pub name: &'a str,
    /// `device.description` unless `props` has one.
    pub description: &'a str,
    pub spec: SampleSpec,
    pub map: ChannelMap,
    pub props: Proplist,
    /// Block, µs: the device's fixed latency and wake-up period (a sink renders, a source
    /// posts one block per period).
    pub block_usec: u64,
    /// Consumption (sink) or production (source) rate relative to nominal: 1.0, or
    /// 1 + ppm·10⁻⁶ to simulate a skewed clock.
    pub rate_scale: f64,
    /// The `driver` recorded on the device (the module's file name).
    pub driver: &'static CStr,
}

/// pulsecore's `process_msg` of a message object.
pub type ProcessMsg = unsafe extern "C" fn(
    *mut sys::pa_msgobject,
    libc::c_int,
    *mut libc::c_void,
    i64,
    *mut sys::pa_memchunk,
) -> libc::c_int;

/// A kind of device: pulsecore's names for it, and what its IO thread does with a block.
/// Not nameable outside the crate.
pub trait Kind: Sized + 'static {
    /// `pa_sink` or `pa_source`.
    type Raw;
    /// The callback (`dyn SinkIo` or `dyn SourceIo`).
    type Io: ?Sized + Send;
    /// "sink" or "source", for messages.
    const WHAT: &'static str;
    /// The IO thread's name.
    const THREAD_NAME: &'static str;
    /// What the log names when the state callback, or the IO thread, panics.
    const STATE_CHANGE: &'static str;
    const IO_THREAD: &'static str;
    /// Its kind in the name registry.
    const NAMEREG: sys::pa_namereg_type_t;
    /// The core hook fired when a device's properties change.
    const PROPLIST_CHANGED: sys::pa_core_hook_t;
    const GET_LATENCY: libc::c_int;
    const INIT: libc::c_int;
    const SUSPENDED: libc::c_int;
    const RUNNING: libc::c_int;
    const IS_OPENED: unsafe extern "C" fn(libc::c_int) -> libc::c_int;
    const DEFAULT_PROCESS_MSG: ProcessMsg;
    const SET_ASYNCMSGQ: unsafe extern "C" fn(*mut Self::Raw, *mut sys::pa_asyncmsgq);
    const SET_RTPOLL: unsafe extern "C" fn(*mut Self::Raw, *mut sys::pa_rtpoll);
    const SET_FIXED_LATENCY: unsafe extern "C" fn(*mut Self::Raw, sys::pa_usec_t);
    const PUT: unsafe extern "C" fn(*mut Self::Raw);
    const UNLINK: unsafe extern "C" fn(*mut Self::Raw);
    const UNREF: unsafe extern "C" fn(*mut Self::Raw);
    const LINKED_BY: unsafe extern "C" fn(*mut Self::Raw) -> libc::c_uint;

    /// Creates the (unlinked) device: `pa_*_new` with `NETWORK | LATENCY`.
    ///
    /// # Safety
    /// Main thread, live core and module.
    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        cfg: &DeviceConfig,
        props: &Proplist,
    ) -> *mut Self::Raw;

    /// Sets what only this kind needs, after the rtpoll and before the fixed latency.
    ///
    /// # Safety
    /// Main thread, device not yet put.
    unsafe fn configure(_d: *mut Self::Raw, _block_bytes: usize) {}

    /// Hooks our process_msg and set_state_in_io_thread.
    ///
    /// # Safety
    /// Main thread, device not yet put.
    unsafe fn install(d: *mut Self::Raw);

    /// The callback's `state_changed` (IO thread).
    fn state_changed(io: &mut Self::Io, running: bool);
    /// The callback's `extra_latency_usec` (IO thread).
    fn extra_latency_usec(io: &Self::Io) -> u64;

    /// The latency to report (IO thread).
    ///
    /// # Safety
    /// `st` is the device's state, on its IO thread.
    unsafe fn latency(st: *mut IoState<Self>, extra_usec: u64) -> i64;

    /// How far ahead of `now` a block is handled (µs).
    fn lead_usec(block_usec: u64) -> u64;

    /// Whether blocks are handled now: a stream plays into (records from) the device. An
    /// opened device that nobody uses (PulseAudio's IDLE state) sleeps instead of handling
    /// silence every block.
    ///
    /// # Safety
    /// IO thread, live device.
    unsafe fn active(d: *mut Self::Raw) -> bool {
        Self::io_state(d) == Self::RUNNING
    }

    /// Done at each wake-up of the IO thread before the blocks are due.
    ///
    /// # Safety
    /// IO thread.
    unsafe fn on_wakeup(_d: *mut Self::Raw) {}

    /// Whether the audio of the next block is there. A sink renders whatever it has when its
    /// time comes; a source whose audio comes over a network may wait for late audio (see
    /// [`HOLD_BLOCKS`]).
    ///
    /// # Safety
    /// IO thread, opened device.
    unsafe fn block_ready(_st: *mut IoState<Self>) -> bool {
        true
    }

    /// Handles one block (renders it from a sink, posts it into a source); returns its length
    /// in bytes, or `None` when there was no memory for it.
    ///
    /// # Safety
    /// IO thread, opened device.
    unsafe fn one_block(st: *mut IoState<Self>) -> Option<usize>;

    /// `&mut (*d).userdata`, and the other fields pa_sink and pa_source share.
    ///
    /// # Safety (all field accessors)
    /// `d` is a live device.
    unsafe fn userdata(d: *mut Self::Raw) -> *mut *mut libc::c_void;
    unsafe fn io_state(d: *mut Self::Raw) -> libc::c_int;
    unsafe fn name(d: *mut Self::Raw) -> *const libc::c_char;
    unsafe fn index(d: *mut Self::Raw) -> u32;
    unsafe fn proplist(d: *mut Self::Raw) -> *mut sys::pa_proplist;
    unsafe fn sample_spec(d: *mut Self::Raw) -> *const sys::pa_sample_spec;
    unsafe fn update_proplist(d: *mut Self::Raw, p: *mut sys::pa_proplist);
}

/// The accessors of the fields pa_sink and pa_source both have (same names in both structs).
macro_rules! device_fields {
    () => {
        unsafe fn userdata(d: *mut Self::Raw) -> *mut *mut libc::c_void {
            std::ptr::addr_of_mut!((*d).userdata)
        }
        unsafe fn io_state(d: *mut Self::Raw) -> libc::c_int {
            (*d).thread_info.state
        }
        unsafe fn name(d: *mut Self::Raw) -> *const libc::c_char {
            (*d).name
        }
        unsafe fn index(d: *mut Self::Raw) -> u32 {
            (*d).index
        }
        unsafe fn proplist(d: *mut Self::Raw) -> *mut $crate::sys::pa_proplist {
            (*d).proplist
        }
        unsafe fn sample_spec(d: *mut Self::Raw) -> *const $crate::sys::pa_sample_spec {
            std::ptr::addr_of!((*d).sample_spec)
        }
    };
}
pub(crate) use device_fields;

/// The IO thread's state (shared with the main thread only through pulsecore's messages).
pub struct IoState<K: Kind> {
    pub(crate) dev: *mut K::Raw,
    rtpoll: *mut sys::pa_rtpoll,
    mq: *mut sys::pa_thread_mq,
    pub(crate) core: *mut sys::pa_core,
    module: *mut sys::pa_module,
    realtime: Option<i32>,
    pub(crate) timestamp: u64,
    pub(crate) block_usec: u64,
    pub(crate) block_bytes: usize,
    rate_scale: f64,
    running: bool,
    /// Blocks were handled at the last wake-up (see [`Kind::active`]).
    active: bool,
    /// The last block was handled without its audio (or the device has just started): the
    /// audio is not late but absent, and the next block does not wait for it.
    starved: bool,
    pub(crate) io: Box<K::Io>,
}

/// A device created by a module (main thread). Dropping it unlinks the device and stops its
/// thread.
pub struct Device<K: Kind> {
    dev: *mut K::Raw,
    thread: *mut sys::pa_thread,
    mq: *mut sys::pa_thread_mq,
    rtpoll: *mut sys::pa_rtpoll,
    state: *mut IoState<K>,
}

pub(crate) unsafe extern "C" fn process_msg<K: Kind>(
    o: *mut sys::pa_msgobject,
    code: libc::c_int,
    data: *mut libc::c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let st = *K::userdata(o as *mut K::Raw) as *mut IoState<K>;
    if code == K::GET_LATENCY && !st.is_null() {
        // IO thread: the state is ours here.
        let extra =
            crate::catch("latency query", || K::extra_latency_usec(&*(*st).io)).unwrap_or(0);
        *(data as *mut i64) = K::latency(st, extra);
        return 0;
    }
    (K::DEFAULT_PROCESS_MSG)(o, code, data, offset, chunk)
}

pub(crate) unsafe extern "C" fn set_state_in_io_thread<K: Kind>(
    d: *mut K::Raw,
    new_state: libc::c_int,
    _cause: sys::pa_suspend_cause_t,
) -> libc::c_int {
    let st = *K::userdata(d) as *mut IoState<K>;
    if st.is_null() {
        return 0;
    }
    let old = K::io_state(d);
    if (old == K::SUSPENDED || old == K::INIT) && (K::IS_OPENED)(new_state) != 0 {
        (*st).timestamp = sys::pa_rtclock_now();
    }
    let running = new_state == K::RUNNING;
    if running != (*st).running {
        (*st).running = running;
        crate::catch(K::STATE_CHANGE, || {
            K::state_changed(&mut *(*st).io, running)
        });
    }
    0
}

/// How many blocks past its time a block may wait for its audio ([`Kind::block_ready`])
/// before it is handled with what there is (the rest is the stream's underrun). A
/// source is virtual: late audio posted late is only latency for its readers, silence in its
/// place is lost audio. This is what a stall of the whole host needs: the far end's burst of
/// catch-up audio and our own catch-up posts wake together, and ours must not win by
/// posting silence. Only a block after one that had its audio waits: audio that has not come
/// for a whole hold (the far end stopped, the device has just started) is absent, not late,
/// and the device keeps its pace.
pub const HOLD_BLOCKS: u64 = 3;

/// How often the IO thread looks again for a block's late audio, µs.
const HOLD_POLL_USEC: u64 = 2_000;

/// Handles the blocks that are due; returns true when a due block waits for its audio (the
/// thread looks again in [`HOLD_POLL_USEC`]). IO thread.
unsafe fn handle_due<K: Kind>(st: *mut IoState<K>, now: u64) -> bool {
    // After a stall (or resume) of more than a few blocks, start afresh instead of handling
    // a burst of catch-up audio.
    if now > (*st).timestamp + 4 * (*st).block_usec {
        (*st).timestamp = now;
    }
    let lead = K::lead_usec((*st).block_usec);
    let mut budget = 4;
    while (*st).timestamp <= now + lead && budget > 0 {
        let ready = K::block_ready(st);
        if !ready && !(*st).starved && now < (*st).timestamp + HOLD_BLOCKS * (*st).block_usec {
            return true;
        }
        (*st).starved = !ready;
        budget -= 1;
        let Some(len) = K::one_block(st) else {
            break;
        };
        let dur = sys::pa_bytes_to_usec(len as u64, K::sample_spec((*st).dev)) as f64;
        (*st).timestamp += (dur / (*st).rate_scale).round() as u64;
    }
    false
}

unsafe extern "C" fn thread_func<K: Kind>(userdata: *mut libc::c_void) {
    let st = userdata as *mut IoState<K>;
    if let Some(prio) = (*st).realtime {
        sys::pa_thread_make_realtime(prio);
    }
    sys::pa_thread_mq_install((*st).mq);
    (*st).timestamp = sys::pa_rtclock_now();
    let ok = crate::catch(K::IO_THREAD, || loop {
        let d = (*st).dev;
        // Opened and in use: an idle device (nothing plays into a sink or records its
        // monitor, nothing records from a source) waits for messages only.
        let active = (K::IS_OPENED)(K::io_state(d)) != 0 && K::active(d);
        K::on_wakeup(d);
        if active {
            let now = sys::pa_rtclock_now();
            if !(*st).active {
                // Start afresh: the clock counts from the first block.
                (*st).timestamp = now;
                (*st).starved = true;
            }
            let waiting =
                (*st).timestamp <= now + K::lead_usec((*st).block_usec) && handle_due(st, now);
            let wake = if waiting {
                now + HOLD_POLL_USEC
            } else {
                (*st).timestamp
            };
            sys::pa_rtpoll_set_timer_absolute((*st).rtpoll, wake);
        } else {
            sys::pa_rtpoll_set_timer_disabled((*st).rtpoll);
        }
        (*st).active = active;
        let ret = sys::pa_rtpoll_run((*st).rtpoll);
        if ret < 0 {
            break false;
        }
        if ret == 0 {
            break true;
        }
    });
    if ok != Some(true) {
        // Not a regular shutdown: ask the core to unload us and keep answering messages until
        // the main thread sends PA_MESSAGE_SHUTDOWN.
        sys::pa_asyncmsgq_post(
            (*(*st).mq).outq,
            (*st).core as *mut sys::pa_msgobject,
            sys::PA_CORE_MESSAGE_UNLOAD_MODULE as libc::c_int,
            (*st).module as *mut libc::c_void,
            0,
            std::ptr::null(),
            None,
        );
        sys::pa_asyncmsgq_wait_for((*(*st).mq).inq, sys::PA_MESSAGE_SHUTDOWN as libc::c_int);
    }
}

impl<K: Kind> Device<K> {
    pub fn new(module: &ModuleRef, cfg: DeviceConfig, io: Box<K::Io>) -> Result<Self, String> {
        let core = module.core();
        let m = module.raw();
        // SAFETY: main thread, live module and core; every pointer created here is owned by
        // the returned Device (or freed on the error paths), in the order null-sink uses.
        unsafe {
            let rtpoll = sys::pa_rtpoll_new();
            let mq: *mut sys::pa_thread_mq = Box::into_raw(Box::default());
            if sys::pa_thread_mq_init(mq, core.mainloop(), rtpoll) < 0 {
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err(format!("cannot create the {}'s message queue", K::WHAT));
            }
            let mut props = Proplist::new();
            props.set("device.description", cfg.description);
            props.set("device.class", "abstract");
            props.update(&cfg.props);
            let dev = K::create(core.raw(), m, &cfg, &props);
            if dev.is_null() {
                sys::pa_thread_mq_done(mq);
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err(format!("cannot create {} {:?}", K::WHAT, cfg.name));
            }
            let block_bytes = cfg
                .spec
                .usec_to_bytes(cfg.block_usec)
                .max(cfg.spec.frame_size());
            let state = Box::into_raw(Box::new(IoState::<K> {
                dev,
                rtpoll,
                mq,
                core: core.raw(),
                module: m,
                realtime: core.realtime(),
                timestamp: 0,
                block_usec: cfg.block_usec,
                block_bytes,
                rate_scale: if cfg.rate_scale > 0.5 && cfg.rate_scale < 2.0 {
                    cfg.rate_scale
                } else {
                    1.0
                },
                running: false,
                active: false,
                starved: true,
                io,
            }));
            K::install(dev);
            *K::userdata(dev) = state as *mut libc::c_void;
            (K::SET_ASYNCMSGQ)(dev, (*mq).inq);
            (K::SET_RTPOLL)(dev, rtpoll);
            K::configure(dev, block_bytes);
            (K::SET_FIXED_LATENCY)(dev, cfg.block_usec);
            let tname = crate::cstring(K::THREAD_NAME);
            let thread =
                sys::pa_thread_new(tname.as_ptr(), Some(thread_func::<K>), state as *mut _);
            let me = Device {
                dev,
                thread,
                mq,
                rtpoll,
                state,
            };
            if thread.is_null() {
                return Err(format!("cannot start the {}'s IO thread", K::WHAT));
            }
            (K::PUT)(dev);
            Ok(me)
        }
    }

    /// The device's name as registered (PulseAudio may have made it unique).
    pub fn name(&self) -> String {
        // SAFETY: live device.
        unsafe { crate::from_cstr(K::name(self.dev)) }.unwrap_or_default()
    }

    pub fn index(&self) -> u32 {
        // SAFETY: live device.
        unsafe { K::index(self.dev) }
    }

    /// Streams connected to the device (for `pa__get_n_used`).
    pub fn used_by(&self) -> u32 {
        // SAFETY: live device, main thread.
        unsafe { (K::LINKED_BY)(self.dev) }
    }

    /// A copy of the device's current properties.
    pub fn proplist(&self) -> Proplist {
        // SAFETY: live device, main thread.
        unsafe { Proplist::copy_of(K::proplist(self.dev)) }
    }

    /// Merges `props` into the device's properties (subscribers are told, as with
    /// `update-sink-proplist`). Keys whose value is unchanged are left alone.
    pub fn update_proplist(&self, props: &Proplist) {
        if let Some(changed) = self.proplist().changes(props) {
            // SAFETY: live device, main thread.
            unsafe { K::update_proplist(self.dev, changed.raw()) };
        }
    }
}

impl<K: Kind> Drop for Device<K> {
    fn drop(&mut self) {
        // SAFETY: main thread; the teardown order of module-null-sink: unlink, stop the thread,
        // then free what it used.
        unsafe {
            if !self.dev.is_null() && !self.thread.is_null() {
                (K::UNLINK)(self.dev);
            }
            if !self.thread.is_null() {
                sys::pa_asyncmsgq_send(
                    (*self.mq).inq,
                    std::ptr::null_mut(),
                    sys::PA_MESSAGE_SHUTDOWN as libc::c_int,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                );
                sys::pa_thread_free(self.thread);
            }
            sys::pa_thread_mq_done(self.mq);
            if !self.dev.is_null() {
                *K::userdata(self.dev) = std::ptr::null_mut();
                (K::UNREF)(self.dev);
            }
            drop(Box::from_raw(self.mq));
            sys::pa_rtpoll_free(self.rtpoll);
            drop(Box::from_raw(self.state));
        }
    }
}
