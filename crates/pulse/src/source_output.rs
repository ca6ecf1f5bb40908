//! A recording stream (`pa_source_output`) on an existing source, whose audio is handed to a
//! [`SourceOutputIo`] callback on that source's IO thread. The machinery is shared with
//! playback streams (`stream.rs`).
use crate::mainloop::WakeHandle;
use crate::module::ModuleRef;
use crate::source::SourceKind;
use crate::stream::{self, stream_fields, Kind, StreamState};
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;
use std::sync::atomic::Ordering;

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
    /// Create the stream corked (not recording until `SourceOutput::cork(false)`).
    pub start_corked: bool,
    pub driver: &'static CStr,
    /// Woken (main thread) when the daemon kills the stream (source gone, `kill-source-output`).
    pub on_kill: Option<WakeHandle>,
}

/// A recording stream created by a module (main thread). Dropping it unlinks the stream.
pub type SourceOutput = stream::Stream<SourceOutputKind>;

/// pulsecore's source output, for `Stream`.
pub struct SourceOutputKind;

unsafe extern "C" fn push_cb(o: *mut sys::pa_source_output, chunk: *const sys::pa_memchunk) {
    let st = (*o).userdata as *mut StreamState<SourceOutputKind>;
    if st.is_null() || chunk.is_null() || (*chunk).memblock.is_null() {
        return;
    }
    let base = sys::pa_memblock_acquire((*chunk).memblock) as *const u8;
    let data = std::slice::from_raw_parts(base.add((*chunk).index), (*chunk).length);
    crate::catch("stream push", || (*st).io.push(data));
    sys::pa_memblock_release((*chunk).memblock);
}

impl Kind for SourceOutputKind {
    type Raw = sys::pa_source_output;
    type Device = SourceKind;
    type Config<'a> = SourceOutputConfig<'a>;
    type Io = dyn SourceOutputIo;
    const PUT: unsafe extern "C" fn(*mut sys::pa_source_output) = sys::pa_source_output_put;
    const UNLINK: unsafe extern "C" fn(*mut sys::pa_source_output) = sys::pa_source_output_unlink;
    const UNREF: unsafe extern "C" fn(*mut sys::pa_source_output) = sys::pa_source_output_unref;
    const SET_REQUESTED_LATENCY: unsafe extern "C" fn(*mut sys::pa_source_output, u64) -> u64 =
        sys::pa_source_output_set_requested_latency;
    const UPDATE_PROPLIST: unsafe extern "C" fn(
        *mut sys::pa_source_output,
        sys::pa_update_mode_t,
        *mut sys::pa_proplist,
    ) = sys::pa_source_output_update_proplist;

    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        source: *mut sys::pa_source,
        cfg: &SourceOutputConfig,
    ) -> (libc::c_int, *mut sys::pa_source_output) {
        let mut data = sys::pa_source_output_new_data::default();
        sys::pa_source_output_new_data_init(&mut data);
        sys::pa_source_output_new_data_set_source(&mut data, source, false, true);
        data.driver = cfg.driver.as_ptr();
        data.module = module;
        if cfg.start_corked {
            data.flags |= sys::PA_SOURCE_OUTPUT_START_CORKED as sys::pa_source_output_flags_t;
        }
        sys::pa_source_output_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
        sys::pa_source_output_new_data_set_channel_map(&mut data, &cfg.map.raw);
        sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, cfg.props.raw());
        let mut so: *mut sys::pa_source_output = std::ptr::null_mut();
        let r = sys::pa_source_output_new(&mut so, core, &mut data);
        sys::pa_source_output_new_data_done(&mut data);
        (r, so)
    }

    unsafe fn install(so: *mut sys::pa_source_output) {
        (*so).push = Some(push_cb);
        (*so).kill = Some(stream::kill_cb::<Self>);
    }

    stream_fields!(source);
}

impl SourceOutput {
    pub fn new(
        module: &ModuleRef,
        mut cfg: SourceOutputConfig,
        io: Box<dyn SourceOutputIo>,
    ) -> Result<SourceOutput, String> {
        let on_kill = cfg.on_kill.take();
        let (device, latency) = (cfg.source, cfg.requested_latency_usec);
        stream::Stream::open(module, device, &cfg, &cfg.spec, latency, on_kill, io)
    }

    /// Stops (`true`) or resumes (`false`) recording.
    pub fn cork(&self, corked: bool) {
        if !self.killed() {
            // SAFETY: live, linked stream; main thread.
            unsafe { sys::pa_source_output_cork(self.raw, corked) }
        }
    }

    /// The name of the source the stream records from.
    pub fn source_name(&self) -> Option<String> {
        self.device_name()
    }

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
                sys::pa_source_output_unlink(self.raw);
                self.killed.store(true, Ordering::SeqCst);
            }
            std::mem::replace(&mut (*self.state).io, Box::new(Parked))
        }
    }
}
