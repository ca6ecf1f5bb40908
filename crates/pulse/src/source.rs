//! A source with its own IO thread (`pa_thread` + `pa_rtpoll` + `pa_thread_mq`), clocked by
//! the system's monotonic clock like `module-null-source`, that asks a [`SourceIo`] callback
//! for every block it posts to its readers.
use crate::module::ModuleRef;
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;

/// Where the source's audio comes from, on the source's IO (real-time) thread: no blocking,
/// no locks, no socket I/O, no heavy allocation.
pub trait SourceIo: Send + 'static {
    /// Fill all of `out` (whole frames in the source's sample spec) with the next block.
    fn capture(&mut self, out: &mut [u8]);
    /// The source's state changed: `running` is true while an uncorked stream records from
    /// it. Also called with `false` when the source is suspended.
    fn state_changed(&mut self, _running: bool) {}
    /// Audio queued upstream of the source (remote capture, encoder, network, buffer), in
    /// µs; added to the latency the source reports.
    fn extra_latency_usec(&self) -> u64 {
        0
    }
}

/// How to create a [`Source`].
pub struct SourceConfig<'a> {
    pub name: &'a str,
    /// `device.description` unless `props` has one.
    pub description: &'a str,
    pub spec: SampleSpec,
    pub map: ChannelMap,
    pub props: Proplist,
    /// Block, µs: the source's fixed latency and wake-up period.
    pub block_usec: u64,
    /// Production rate relative to nominal: 1.0, or 1 + ppm·10⁻⁶ to simulate a skewed clock.
    pub rate_scale: f64,
    /// The `driver` recorded on the source (the module's file name).
    pub driver: &'static CStr,
}

struct IoState {
    source: *mut sys::pa_source,
    rtpoll: *mut sys::pa_rtpoll,
    mq: *mut sys::pa_thread_mq,
    core: *mut sys::pa_core,
    module: *mut sys::pa_module,
    realtime: Option<i32>,
    timestamp: u64,
    block_usec: u64,
    block_bytes: usize,
    rate_scale: f64,
    running: bool,
    io: Box<dyn SourceIo>,
}

/// A source created by a module (main thread). Dropping it unlinks the source and stops its
/// thread.
pub struct Source {
    source: *mut sys::pa_source,
    thread: *mut sys::pa_thread,
    mq: *mut sys::pa_thread_mq,
    rtpoll: *mut sys::pa_rtpoll,
    state: *mut IoState,
}

unsafe extern "C" fn source_process_msg(
    o: *mut sys::pa_msgobject,
    code: libc::c_int,
    data: *mut libc::c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let s = o as *mut sys::pa_source;
    let st = (*s).userdata as *mut IoState;
    if code == sys::PA_SOURCE_MESSAGE_GET_LATENCY as libc::c_int && !st.is_null() {
        // IO thread: the state is ours here. Audio is posted when its block is due, so the
        // latency is what waits upstream.
        let extra = crate::catch("latency query", || (*st).io.extra_latency_usec()).unwrap_or(0);
        *(data as *mut i64) = extra as i64;
        return 0;
    }
    sys::pa_source_process_msg(o, code, data, offset, chunk)
}

unsafe extern "C" fn set_state_in_io_thread(
    s: *mut sys::pa_source,
    new_state: sys::pa_source_state_t,
    _cause: sys::pa_suspend_cause_t,
) -> libc::c_int {
    let st = (*s).userdata as *mut IoState;
    if st.is_null() {
        return 0;
    }
    let old = (*s).thread_info.state;
    if (old == sys::PA_SOURCE_SUSPENDED || old == sys::PA_SOURCE_INIT)
        && sys::PA_SOURCE_IS_OPENED(new_state) != 0
    {
        (*st).timestamp = sys::pa_rtclock_now();
    }
    let running = new_state == sys::PA_SOURCE_RUNNING;
    if running != (*st).running {
        (*st).running = running;
        crate::catch("source state change", || (*st).io.state_changed(running));
    }
    0
}

/// Posts what is due. IO thread.
unsafe fn post_due(st: *mut IoState, now: u64) {
    let s = (*st).source;
    if now > (*st).timestamp + 4 * (*st).block_usec {
        (*st).timestamp = now;
    }
    let mut budget = 4;
    while (*st).timestamp <= now && budget > 0 {
        budget -= 1;
        let len = (*st).block_bytes;
        let block = sys::pa_memblock_new((*(*st).core).mempool, len);
        if block.is_null() {
            break;
        }
        let base = sys::pa_memblock_acquire(block) as *mut u8;
        let out = std::slice::from_raw_parts_mut(base, len);
        if crate::catch("source capture", || (*st).io.capture(out)).is_none() {
            out.fill(0);
        }
        sys::pa_memblock_release(block);
        let chunk = sys::pa_memchunk {
            memblock: block,
            index: 0,
            length: len,
        };
        sys::pa_source_post(s, &chunk);
        sys::pa_memblock_unref(block);
        let dur = sys::pa_bytes_to_usec(len as u64, &(*s).sample_spec) as f64;
        (*st).timestamp += (dur / (*st).rate_scale).round() as u64;
    }
}

unsafe extern "C" fn thread_func(userdata: *mut libc::c_void) {
    let st = userdata as *mut IoState;
    if let Some(prio) = (*st).realtime {
        sys::pa_thread_make_realtime(prio);
    }
    sys::pa_thread_mq_install((*st).mq);
    (*st).timestamp = sys::pa_rtclock_now();
    let ok = crate::catch("source IO thread", || loop {
        let s = (*st).source;
        let opened = sys::PA_SOURCE_IS_OPENED((*s).thread_info.state) != 0;
        if opened {
            let now = sys::pa_rtclock_now();
            if (*st).timestamp <= now {
                post_due(st, now);
            }
            sys::pa_rtpoll_set_timer_absolute((*st).rtpoll, (*st).timestamp);
        } else {
            sys::pa_rtpoll_set_timer_disabled((*st).rtpoll);
        }
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

impl Source {
    pub fn new(
        module: &ModuleRef,
        cfg: SourceConfig,
        io: Box<dyn SourceIo>,
    ) -> Result<Source, String> {
        let core = module.core();
        let m = module.raw();
        // SAFETY: main thread, live module and core; every pointer created here is owned by
        // the returned Source (or freed on the error paths), in the order null-source uses.
        unsafe {
            let rtpoll = sys::pa_rtpoll_new();
            let mq: *mut sys::pa_thread_mq = Box::into_raw(Box::default());
            if sys::pa_thread_mq_init(mq, core.mainloop(), rtpoll) < 0 {
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err("cannot create the source's message queue".into());
            }
            let mut data = sys::pa_source_new_data::default();
            sys::pa_source_new_data_init(&mut data);
            data.driver = cfg.driver.as_ptr();
            data.module = m;
            let name = crate::cstring(cfg.name);
            sys::pa_source_new_data_set_name(&mut data, name.as_ptr());
            sys::pa_source_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
            sys::pa_source_new_data_set_channel_map(&mut data, &cfg.map.raw);
            let mut props = Proplist::new();
            props.set("device.description", cfg.description);
            props.set("device.class", "abstract");
            props.update(&cfg.props);
            sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, props.raw());
            let source = sys::pa_source_new(
                core.raw(),
                &mut data,
                (sys::PA_SOURCE_LATENCY | sys::PA_SOURCE_NETWORK) as sys::pa_source_flags_t,
            );
            sys::pa_source_new_data_done(&mut data);
            if source.is_null() {
                sys::pa_thread_mq_done(mq);
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err(format!("cannot create source {:?}", cfg.name));
            }
            let block_bytes = cfg
                .spec
                .usec_to_bytes(cfg.block_usec)
                .max(cfg.spec.frame_size());
            let state = Box::into_raw(Box::new(IoState {
                source,
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
                io,
            }));
            (*source).parent.process_msg = Some(source_process_msg);
            (*source).set_state_in_io_thread = Some(set_state_in_io_thread);
            (*source).userdata = state as *mut libc::c_void;
            sys::pa_source_set_asyncmsgq(source, (*mq).inq);
            sys::pa_source_set_rtpoll(source, rtpoll);
            sys::pa_source_set_fixed_latency(source, cfg.block_usec);
            let tname = crate::cstring("opus-tunnel-src");
            let thread = sys::pa_thread_new(tname.as_ptr(), Some(thread_func), state as *mut _);
            let me = Source {
                source,
                thread,
                mq,
                rtpoll,
                state,
            };
            if thread.is_null() {
                return Err("cannot start the source's IO thread".into());
            }
            sys::pa_source_put(source);
            Ok(me)
        }
    }

    /// The source's name as registered (PulseAudio may have made it unique).
    pub fn name(&self) -> String {
        // SAFETY: live source.
        unsafe { crate::from_cstr((*self.source).name) }.unwrap_or_default()
    }

    pub fn index(&self) -> u32 {
        // SAFETY: live source.
        unsafe { (*self.source).index }
    }

    /// Streams connected to the source (for `pa__get_n_used`).
    pub fn used_by(&self) -> u32 {
        // SAFETY: live source, main thread.
        unsafe { sys::pa_source_linked_by(self.source) }
    }

    /// A copy of the source's current properties.
    pub fn proplist(&self) -> Proplist {
        // SAFETY: live source, main thread.
        unsafe { Proplist::copy_of((*self.source).proplist) }
    }

    /// Merges `props` into the source's properties (subscribers are told, as with
    /// `update-source-proplist`). Keys whose value is unchanged are left alone.
    pub fn update_proplist(&self, props: &Proplist) {
        let current = self.proplist();
        let mut changed = Proplist::new();
        let mut any = false;
        for (k, v) in props.entries() {
            if current.get(&k).as_deref() != Some(v.as_str()) {
                changed.set(&k, &v);
                any = true;
            }
        }
        if any {
            // SAFETY: live source, main thread.
            unsafe {
                sys::pa_source_update_proplist(self.source, sys::PA_UPDATE_REPLACE, changed.raw())
            };
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: main thread; the teardown order of module-null-source: unlink, stop the thread,
        // then free what it used.
        unsafe {
            if !self.source.is_null() && !self.thread.is_null() {
                sys::pa_source_unlink(self.source);
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
            if !self.source.is_null() {
                (*self.source).userdata = std::ptr::null_mut();
                sys::pa_source_unref(self.source);
            }
            drop(Box::from_raw(self.mq));
            sys::pa_rtpoll_free(self.rtpoll);
            drop(Box::from_raw(self.state));
        }
    }
}
