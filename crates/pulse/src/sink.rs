//! A sink with its own IO thread (`pa_thread` + `pa_rtpoll` + `pa_thread_mq`), clocked by the
//! system's monotonic clock like `module-null-sink`, that hands every rendered block to a
//! [`SinkIo`] callback on that thread.
use crate::module::ModuleRef;
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;

/// What the sink does with its audio, on the sink's IO (real-time) thread: no blocking, no
/// locks, no socket I/O, no heavy allocation.
pub trait SinkIo: Send + 'static {
    /// `data` (whole frames in the sink's sample spec) was just rendered. `running` is false
    /// when no uncorked stream plays into the sink (then `data` is silence).
    fn render(&mut self, data: &[u8], running: bool);
    /// The sink's state changed (`running` as for [`render`](Self::render)). Also called with
    /// `false` when the sink is suspended.
    fn state_changed(&mut self, _running: bool) {}
    /// Audio queued downstream of the sink (queues, encoder, network, remote buffer), in µs;
    /// added to the latency the sink reports.
    fn extra_latency_usec(&self) -> u64 {
        0
    }
}

/// How to create a [`Sink`].
pub struct SinkConfig<'a> {
    pub name: &'a str,
    /// `device.description` unless `props` has one.
    pub description: &'a str,
    pub spec: SampleSpec,
    pub map: ChannelMap,
    pub props: Proplist,
    /// Rendering block, µs: the sink's fixed latency and wake-up period.
    pub block_usec: u64,
    /// Consumption rate relative to nominal: 1.0, or 1 + ppm·10⁻⁶ to simulate a skewed clock.
    pub rate_scale: f64,
    /// The `driver` recorded on the sink (the module's file name).
    pub driver: &'static CStr,
}

struct IoState {
    sink: *mut sys::pa_sink,
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
    io: Box<dyn SinkIo>,
}

/// A sink created by a module (main thread). Dropping it unlinks the sink and stops its thread.
pub struct Sink {
    sink: *mut sys::pa_sink,
    thread: *mut sys::pa_thread,
    mq: *mut sys::pa_thread_mq,
    rtpoll: *mut sys::pa_rtpoll,
    state: *mut IoState,
}

unsafe extern "C" fn sink_process_msg(
    o: *mut sys::pa_msgobject,
    code: libc::c_int,
    data: *mut libc::c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let s = o as *mut sys::pa_sink;
    let st = (*s).userdata as *mut IoState;
    if code == sys::PA_SINK_MESSAGE_GET_LATENCY as libc::c_int && !st.is_null() {
        // IO thread: the state is ours here.
        let now = sys::pa_rtclock_now() as i64;
        let extra = crate::catch("latency query", || (*st).io.extra_latency_usec()).unwrap_or(0);
        *(data as *mut i64) = (*st).timestamp as i64 - now + extra as i64;
        return 0;
    }
    sys::pa_sink_process_msg(o, code, data, offset, chunk)
}

unsafe extern "C" fn set_state_in_io_thread(
    s: *mut sys::pa_sink,
    new_state: sys::pa_sink_state_t,
    _cause: sys::pa_suspend_cause_t,
) -> libc::c_int {
    let st = (*s).userdata as *mut IoState;
    if st.is_null() {
        return 0;
    }
    let old = (*s).thread_info.state;
    if (old == sys::PA_SINK_SUSPENDED || old == sys::PA_SINK_INIT)
        && sys::PA_SINK_IS_OPENED(new_state) != 0
    {
        (*st).timestamp = sys::pa_rtclock_now();
    }
    let running = new_state == sys::PA_SINK_RUNNING;
    if running != (*st).running {
        (*st).running = running;
        crate::catch("sink state change", || (*st).io.state_changed(running));
    }
    0
}

/// Renders what is due. IO thread.
unsafe fn render_due(st: *mut IoState, now: u64) {
    let s = (*st).sink;
    // After a stall (or resume) of more than a few blocks, start afresh instead of rendering
    // a burst of catch-up audio.
    if now > (*st).timestamp + 4 * (*st).block_usec {
        (*st).timestamp = now;
    }
    let running = (*s).thread_info.state == sys::PA_SINK_RUNNING;
    let mut budget = 4;
    while (*st).timestamp <= now + (*st).block_usec / 2 && budget > 0 {
        budget -= 1;
        let mut chunk = sys::pa_memchunk::default();
        sys::pa_sink_render_full(s, (*st).block_bytes, &mut chunk);
        if chunk.memblock.is_null() {
            break;
        }
        let base = sys::pa_memblock_acquire(chunk.memblock) as *const u8;
        let data = std::slice::from_raw_parts(base.add(chunk.index), chunk.length);
        crate::catch("sink render", || (*st).io.render(data, running));
        sys::pa_memblock_release(chunk.memblock);
        sys::pa_memblock_unref(chunk.memblock);
        let dur = sys::pa_bytes_to_usec(chunk.length as u64, &(*s).sample_spec) as f64;
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
    let ok = crate::catch("sink IO thread", || loop {
        let s = (*st).sink;
        let opened = sys::PA_SINK_IS_OPENED((*s).thread_info.state) != 0;
        if (*s).thread_info.rewind_requested {
            // Audio leaves for the network as soon as it is rendered: nothing to rewind.
            sys::pa_sink_process_rewind(s, 0);
        }
        if opened {
            let now = sys::pa_rtclock_now();
            if (*st).timestamp <= now + (*st).block_usec / 2 {
                render_due(st, now);
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

impl Sink {
    pub fn new(module: &ModuleRef, cfg: SinkConfig, io: Box<dyn SinkIo>) -> Result<Sink, String> {
        let core = module.core();
        let m = module.raw();
        // SAFETY: main thread, live module and core; every pointer created here is owned by
        // the returned Sink (or freed on the error paths), in the order null-sink uses.
        unsafe {
            let rtpoll = sys::pa_rtpoll_new();
            let mq: *mut sys::pa_thread_mq = Box::into_raw(Box::default());
            if sys::pa_thread_mq_init(mq, core.mainloop(), rtpoll) < 0 {
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err("cannot create the sink's message queue".into());
            }
            let mut data = sys::pa_sink_new_data::default();
            sys::pa_sink_new_data_init(&mut data);
            data.driver = cfg.driver.as_ptr();
            data.module = m;
            let name = crate::cstring(cfg.name);
            sys::pa_sink_new_data_set_name(&mut data, name.as_ptr());
            sys::pa_sink_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
            sys::pa_sink_new_data_set_channel_map(&mut data, &cfg.map.raw);
            let mut props = Proplist::new();
            props.set("device.description", cfg.description);
            props.set("device.class", "abstract");
            props.update(&cfg.props);
            sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, props.raw());
            let sink = sys::pa_sink_new(
                core.raw(),
                &mut data,
                (sys::PA_SINK_LATENCY | sys::PA_SINK_NETWORK) as sys::pa_sink_flags_t,
            );
            sys::pa_sink_new_data_done(&mut data);
            if sink.is_null() {
                sys::pa_thread_mq_done(mq);
                drop(Box::from_raw(mq));
                sys::pa_rtpoll_free(rtpoll);
                return Err(format!("cannot create sink {:?}", cfg.name));
            }
            let block_bytes = cfg
                .spec
                .usec_to_bytes(cfg.block_usec)
                .max(cfg.spec.frame_size());
            let state = Box::into_raw(Box::new(IoState {
                sink,
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
            (*sink).parent.process_msg = Some(sink_process_msg);
            (*sink).set_state_in_io_thread = Some(set_state_in_io_thread);
            (*sink).userdata = state as *mut libc::c_void;
            sys::pa_sink_set_asyncmsgq(sink, (*mq).inq);
            sys::pa_sink_set_rtpoll(sink, rtpoll);
            sys::pa_sink_set_max_request(sink, block_bytes);
            sys::pa_sink_set_max_rewind(sink, 0);
            sys::pa_sink_set_fixed_latency(sink, cfg.block_usec);
            let tname = crate::cstring("opus-tunnel-sink");
            let thread = sys::pa_thread_new(tname.as_ptr(), Some(thread_func), state as *mut _);
            let me = Sink {
                sink,
                thread,
                mq,
                rtpoll,
                state,
            };
            if thread.is_null() {
                return Err("cannot start the sink's IO thread".into());
            }
            sys::pa_sink_put(sink);
            Ok(me)
        }
    }

    /// The sink's name as registered (PulseAudio may have made it unique).
    pub fn name(&self) -> String {
        // SAFETY: live sink.
        unsafe { crate::from_cstr((*self.sink).name) }.unwrap_or_default()
    }

    pub fn index(&self) -> u32 {
        // SAFETY: live sink.
        unsafe { (*self.sink).index }
    }

    /// Streams connected to the sink (for `pa__get_n_used`).
    pub fn used_by(&self) -> u32 {
        // SAFETY: live sink, main thread.
        unsafe { sys::pa_sink_linked_by(self.sink) }
    }

    /// A copy of the sink's current properties.
    pub fn proplist(&self) -> Proplist {
        // SAFETY: live sink, main thread.
        unsafe { Proplist::copy_of((*self.sink).proplist) }
    }

    /// Merges `props` into the sink's properties (subscribers are told, as with
    /// `update-sink-proplist`). Keys whose value is unchanged are left alone.
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
            // SAFETY: live sink, main thread.
            unsafe {
                sys::pa_sink_update_proplist(self.sink, sys::PA_UPDATE_REPLACE, changed.raw())
            };
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // SAFETY: main thread; the teardown order of module-null-sink: unlink, stop the thread,
        // then free what it used.
        unsafe {
            if !self.sink.is_null() && !self.thread.is_null() {
                sys::pa_sink_unlink(self.sink);
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
            if !self.sink.is_null() {
                (*self.sink).userdata = std::ptr::null_mut();
                sys::pa_sink_unref(self.sink);
            }
            drop(Box::from_raw(self.mq));
            sys::pa_rtpoll_free(self.rtpoll);
            drop(Box::from_raw(self.state));
        }
    }
}
