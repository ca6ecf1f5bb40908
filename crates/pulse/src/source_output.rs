//! A recording stream (`pa_source_output`) on an existing source, whose audio is handed to a
//! [`SourceOutputIo`] callback on that source's IO thread.
use crate::mainloop::WakeHandle;
use crate::module::ModuleRef;
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where the recorded audio goes, on the source's IO (real-time) thread: no blocking, no
/// locks, no socket I/O.
pub trait SourceOutputIo: Send + 'static {
    /// `data`: whole frames in the stream's sample spec, just recorded.
    fn push(&mut self, data: &[u8]);
}

/// How to create a [`SourceOutput`].
pub struct SourceOutputConfig<'a> {
    /// The source to record from; `None`: the default source.
    pub source: Option<&'a str>,
    pub spec: SampleSpec,
    pub map: ChannelMap,
    pub props: Proplist,
    /// Latency asked of the source, µs.
    pub requested_latency_usec: u64,
    /// Create the stream corked (not recording until [`SourceOutput::cork`]`(false)`).
    pub start_corked: bool,
    pub driver: &'static CStr,
    /// Woken (main thread) when the daemon kills the stream (source gone, `kill-source-output`).
    pub on_kill: Option<WakeHandle>,
}

struct SoState {
    killed: Arc<AtomicBool>,
    on_kill: Option<WakeHandle>,
    io: Box<dyn SourceOutputIo>,
}

/// A recording stream created by a module (main thread). Dropping it unlinks the stream.
pub struct SourceOutput {
    so: *mut sys::pa_source_output,
    state: *mut SoState,
    killed: Arc<AtomicBool>,
}

unsafe extern "C" fn push_cb(o: *mut sys::pa_source_output, chunk: *const sys::pa_memchunk) {
    let st = (*o).userdata as *mut SoState;
    if st.is_null() || chunk.is_null() || (*chunk).memblock.is_null() {
        return;
    }
    let base = sys::pa_memblock_acquire((*chunk).memblock) as *const u8;
    let data = std::slice::from_raw_parts(base.add((*chunk).index), (*chunk).length);
    crate::catch("stream push", || (*st).io.push(data));
    sys::pa_memblock_release((*chunk).memblock);
}

unsafe extern "C" fn kill_cb(o: *mut sys::pa_source_output) {
    let st = (*o).userdata as *mut SoState;
    sys::pa_source_output_unlink(o);
    if !st.is_null() {
        (*st).killed.store(true, Ordering::SeqCst);
        if let Some(w) = &(*st).on_kill {
            w.wake();
        }
    }
}

impl SourceOutput {
    pub fn new(
        module: &ModuleRef,
        cfg: SourceOutputConfig,
        io: Box<dyn SourceOutputIo>,
    ) -> Result<SourceOutput, String> {
        let core = module.core();
        let source = core.find_source(cfg.source);
        if source.is_null() {
            return Err(match cfg.source {
                Some(n) => format!("no source named {n:?}"),
                None => "there is no default source".into(),
            });
        }
        let killed = Arc::new(AtomicBool::new(false));
        // SAFETY: main thread; live core, module and source; the state outlives the stream
        // (freed in Drop after the stream is unlinked).
        unsafe {
            let mut data = sys::pa_source_output_new_data::default();
            sys::pa_source_output_new_data_init(&mut data);
            sys::pa_source_output_new_data_set_source(&mut data, source, false, true);
            data.driver = cfg.driver.as_ptr();
            data.module = module.raw();
            if cfg.start_corked {
                data.flags |= sys::PA_SOURCE_OUTPUT_START_CORKED as sys::pa_source_output_flags_t;
            }
            sys::pa_source_output_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
            sys::pa_source_output_new_data_set_channel_map(&mut data, &cfg.map.raw);
            sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, cfg.props.raw());
            let mut so: *mut sys::pa_source_output = std::ptr::null_mut();
            let r = sys::pa_source_output_new(&mut so, core.raw(), &mut data);
            sys::pa_source_output_new_data_done(&mut data);
            if r < 0 || so.is_null() {
                return Err(format!("the daemon refused the stream (error {r})"));
            }
            let state = Box::into_raw(Box::new(SoState {
                killed: killed.clone(),
                on_kill: cfg.on_kill,
                io,
            }));
            (*so).push = Some(push_cb);
            (*so).kill = Some(kill_cb);
            (*so).userdata = state as *mut libc::c_void;
            sys::pa_source_output_set_requested_latency(so, cfg.requested_latency_usec);
            sys::pa_source_output_put(so);
            Ok(SourceOutput { so, state, killed })
        }
    }

    /// True once the daemon killed the stream.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Stops (`true`) or resumes (`false`) recording.
    pub fn cork(&self, corked: bool) {
        if !self.killed() {
            // SAFETY: live, linked stream; main thread.
            unsafe { sys::pa_source_output_cork(self.so, corked) }
        }
    }

    /// The name of the source the stream records from.
    pub fn source_name(&self) -> Option<String> {
        // SAFETY: the stream object lives until Drop; source is NULL while unlinked.
        unsafe {
            let s = (*self.so).source;
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
            let current = Proplist::copy_of((*self.so).proplist);
            let mut changed = Proplist::new();
            let mut any = false;
            for (k, v) in props.entries() {
                if current.get(&k).as_deref() != Some(v.as_str()) {
                    changed.set(&k, &v);
                    any = true;
                }
            }
            if any {
                sys::pa_source_output_update_proplist(
                    self.so,
                    sys::PA_UPDATE_REPLACE,
                    changed.raw(),
                );
            }
        }
    }
}

impl SourceOutput {
    /// Removes the stream and gives back its callback (to be used for a new stream later).
    pub fn close(self) -> Box<dyn SourceOutputIo> {
        struct Parked;
        impl SourceOutputIo for Parked {
            fn push(&mut self, _: &[u8]) {}
        }
        // SAFETY: main thread. Unlink first: after it the IO thread no longer calls push, so
        // the callback can be taken out of the state; Drop then frees the rest.
        unsafe {
            if !self.killed() {
                sys::pa_source_output_unlink(self.so);
                self.killed.store(true, Ordering::SeqCst);
            }
            std::mem::replace(&mut (*self.state).io, Box::new(Parked))
        }
    }
}

impl Drop for SourceOutput {
    fn drop(&mut self) {
        // SAFETY: main thread. Unlinking removes the stream from the source's IO thread
        // synchronously; then our reference and state go.
        unsafe {
            if !self.killed.load(Ordering::SeqCst) {
                sys::pa_source_output_unlink(self.so);
            }
            (*self.so).userdata = std::ptr::null_mut();
            sys::pa_source_output_unref(self.so);
            drop(Box::from_raw(self.state));
        }
    }
}
