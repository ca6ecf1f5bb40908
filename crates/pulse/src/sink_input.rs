//! A playback stream (`pa_sink_input`) on an existing sink, fed by a [`SinkInputIo`] callback
//! on that sink's IO thread.
use crate::mainloop::WakeHandle;
use crate::module::ModuleRef;
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where the stream's audio comes from, on the sink's IO (real-time) thread: no blocking, no
/// locks, no socket I/O.
pub trait SinkInputIo: Send + 'static {
    /// Fill all of `out` (whole frames in the stream's sample spec).
    fn pop(&mut self, out: &mut [u8]);
    /// Audio queued in this stream before the sink, in µs (reported as the stream's latency).
    fn queued_usec(&self) -> u64 {
        0
    }
}

/// How to create a [`SinkInput`].
pub struct SinkInputConfig<'a> {
    /// The sink to play on; `None`: the default sink.
    pub sink: Option<&'a str>,
    pub spec: SampleSpec,
    pub map: ChannelMap,
    pub props: Proplist,
    /// Latency asked of the sink, µs (its block size follows the smallest request).
    pub requested_latency_usec: u64,
    pub driver: &'static CStr,
    /// Woken (main thread) when the daemon kills the stream (sink gone, `kill-sink-input`).
    pub on_kill: Option<WakeHandle>,
}

struct SiState {
    mempool: *mut sys::pa_mempool,
    frame_size: usize,
    killed: Arc<AtomicBool>,
    on_kill: Option<WakeHandle>,
    io: Box<dyn SinkInputIo>,
}

/// A stream created by a module (main thread). Dropping it unlinks the stream.
pub struct SinkInput {
    si: *mut sys::pa_sink_input,
    state: *mut SiState,
    killed: Arc<AtomicBool>,
}

unsafe extern "C" fn pop_cb(
    i: *mut sys::pa_sink_input,
    nbytes: usize,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let st = (*i).userdata as *mut SiState;
    if st.is_null() {
        return -1;
    }
    let fs = (*st).frame_size.max(1);
    let len = (nbytes.clamp(fs, 64 * 1024) / fs) * fs;
    let block = sys::pa_memblock_new((*st).mempool, len);
    if block.is_null() {
        return -1;
    }
    let base = sys::pa_memblock_acquire(block) as *mut u8;
    let out = std::slice::from_raw_parts_mut(base, len);
    if crate::catch("stream pop", || (*st).io.pop(out)).is_none() {
        out.fill(0);
    }
    sys::pa_memblock_release(block);
    (*chunk).memblock = block;
    (*chunk).index = 0;
    (*chunk).length = len;
    0
}

unsafe extern "C" fn process_rewind_cb(_i: *mut sys::pa_sink_input, _nbytes: usize) {
    // Live audio: what was handed out stays handed out; the sink replays its own history.
}

unsafe extern "C" fn kill_cb(i: *mut sys::pa_sink_input) {
    let st = (*i).userdata as *mut SiState;
    sys::pa_sink_input_unlink(i);
    if !st.is_null() {
        (*st).killed.store(true, Ordering::SeqCst);
        if let Some(w) = &(*st).on_kill {
            w.wake();
        }
    }
}

unsafe extern "C" fn si_process_msg(
    o: *mut sys::pa_msgobject,
    code: libc::c_int,
    data: *mut libc::c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let i = o as *mut sys::pa_sink_input;
    let st = (*i).userdata as *mut SiState;
    if code == sys::PA_SINK_INPUT_MESSAGE_GET_LATENCY as libc::c_int && !st.is_null() {
        let q = crate::catch("stream latency", || (*st).io.queued_usec()).unwrap_or(0);
        *(data as *mut u64) = q;
        // The default handler adds what the sink and resampler hold.
    }
    sys::pa_sink_input_process_msg(o, code, data, offset, chunk)
}

impl SinkInput {
    pub fn new(
        module: &ModuleRef,
        cfg: SinkInputConfig,
        io: Box<dyn SinkInputIo>,
    ) -> Result<SinkInput, String> {
        let core = module.core();
        let sink = core.find_sink(cfg.sink);
        if sink.is_null() {
            return Err(match cfg.sink {
                Some(n) => format!("no sink named {n:?}"),
                None => "there is no default sink".into(),
            });
        }
        let killed = Arc::new(AtomicBool::new(false));
        // SAFETY: main thread; live core, module and sink; the state outlives the stream
        // (freed in Drop after the stream is unlinked).
        unsafe {
            let mut data = sys::pa_sink_input_new_data::default();
            sys::pa_sink_input_new_data_init(&mut data);
            sys::pa_sink_input_new_data_set_sink(&mut data, sink, false, true);
            data.driver = cfg.driver.as_ptr();
            data.module = module.raw();
            sys::pa_sink_input_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
            sys::pa_sink_input_new_data_set_channel_map(&mut data, &cfg.map.raw);
            sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, cfg.props.raw());
            let mut si: *mut sys::pa_sink_input = std::ptr::null_mut();
            let r = sys::pa_sink_input_new(&mut si, core.raw(), &mut data);
            sys::pa_sink_input_new_data_done(&mut data);
            if r < 0 || si.is_null() {
                return Err(format!("the daemon refused the stream (error {r})"));
            }
            let state = Box::into_raw(Box::new(SiState {
                mempool: (*core.raw()).mempool,
                frame_size: cfg.spec.frame_size(),
                killed: killed.clone(),
                on_kill: cfg.on_kill,
                io,
            }));
            (*si).parent.process_msg = Some(si_process_msg);
            (*si).pop = Some(pop_cb);
            (*si).process_rewind = Some(process_rewind_cb);
            (*si).kill = Some(kill_cb);
            (*si).userdata = state as *mut libc::c_void;
            sys::pa_sink_input_set_requested_latency(si, cfg.requested_latency_usec);
            sys::pa_sink_input_put(si);
            Ok(SinkInput { si, state, killed })
        }
    }

    /// True once the daemon killed the stream (its sink went away, or `kill-sink-input`).
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub fn index(&self) -> u32 {
        // SAFETY: the stream object lives until Drop (we hold a reference).
        unsafe { (*self.si).index }
    }

    /// The name of the sink the stream plays on (it may have been moved).
    pub fn sink_name(&self) -> Option<String> {
        // SAFETY: as above; sink is NULL while unlinked.
        unsafe {
            let s = (*self.si).sink;
            if s.is_null() {
                None
            } else {
                crate::from_cstr((*s).name)
            }
        }
    }

    /// Merges `props` into the stream's properties; unchanged keys are left alone.
    pub fn update_proplist(&self, props: &Proplist) {
        if self.killed() {
            return;
        }
        // SAFETY: live, linked stream; main thread.
        unsafe {
            let current = Proplist::copy_of((*self.si).proplist);
            let mut changed = Proplist::new();
            let mut any = false;
            for (k, v) in props.entries() {
                if current.get(&k).as_deref() != Some(v.as_str()) {
                    changed.set(&k, &v);
                    any = true;
                }
            }
            if any {
                sys::pa_sink_input_update_proplist(self.si, sys::PA_UPDATE_REPLACE, changed.raw());
            }
        }
    }
}

impl Drop for SinkInput {
    fn drop(&mut self) {
        // SAFETY: main thread. Unlinking removes the stream from the sink's IO thread
        // synchronously, so no pop runs after it; then our reference and state go.
        unsafe {
            if !self.killed() {
                sys::pa_sink_input_unlink(self.si);
            }
            (*self.si).userdata = std::ptr::null_mut();
            sys::pa_sink_input_unref(self.si);
            drop(Box::from_raw(self.state));
        }
    }
}
