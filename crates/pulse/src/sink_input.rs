//! A playback stream (`pa_sink_input`) on an existing sink, fed by a [`SinkInputIo`] callback
//! on that sink's IO thread. The machinery is shared with recording streams
//! (`stream.rs`).
use crate::mainloop::WakeHandle;
use crate::module::ModuleRef;
use crate::sink::SinkKind;
use crate::stream::{self, stream_fields, Kind, StreamState};
use crate::{sys, ChannelMap, Proplist, SampleSpec};
use std::ffi::CStr;

/// Where the stream's audio comes from, on the sink's IO (real-time) thread: no blocking, no
/// locks, no socket I/O.
pub trait SinkInputIo: Send + 'static {
    /// Fill all of `out` (whole frames in the stream's sample spec).
    fn pop(&mut self, out: &mut [u8]);
    /// Audio queued in this stream before the sink, in µs (reported as the stream's latency).
    fn queued_usec(&self) -> u64 {
        0
    }
    /// Called before each [`pop`](Self::pop): how long the device will take to play the first
    /// frame this pop hands it, µs — the sink's latency now and what the sink input queues
    /// beyond the callback (its render queue). (The pop's later frames play that much after
    /// their own place in the stream, as if the device drained the stream continuously.)
    fn device_latency(&mut self, _usec: u64) {}
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

/// A stream created by a module (main thread). Dropping it unlinks the stream.
pub type SinkInput = stream::Stream<SinkInputKind>;

/// pulsecore's sink input, for `Stream`.
pub struct SinkInputKind;

type SiState = StreamState<SinkInputKind>;

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
    // The sink's latency and the sink input's render queue, as pulsecore's own latency query
    // counts them, read on the sink's IO thread, where we are; and this pull's own length: the
    // playout engine's line of the device's pulls takes a pull's frames over the period before
    // it, while the device plays them from now on, after what it holds (a null sink with 5 ms
    // blocks: the tunnel sink reported 4.4-5.0 ms under the measured latency without it).
    let sink = (*i).sink;
    if !sink.is_null() {
        let sink_usec = sys::pa_sink_get_latency_within_thread(sink, false).max(0) as u64;
        let queue = (*i).thread_info.render_memblockq;
        let queued = if queue.is_null() {
            0
        } else {
            sys::pa_bytes_to_usec(
                sys::pa_memblockq_get_length(queue) as u64,
                &(*sink).sample_spec,
            )
        };
        let pull = sys::pa_bytes_to_usec(len as u64, &(*i).sample_spec);
        crate::catch("stream latency", || {
            (*st).io.device_latency(sink_usec + queued + pull)
        });
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

/// Our own message to the sink input on the sink's IO thread (data: the latency to ask, µs):
/// the first half of a resume, see [`SinkInputKind::set_quiet`].
const MESSAGE_PREPARE_RESUME: libc::c_int = sys::PA_SINK_INPUT_MESSAGE_MAX as libc::c_int + 1;

unsafe extern "C" fn si_process_msg(
    o: *mut sys::pa_msgobject,
    code: libc::c_int,
    data: *mut libc::c_void,
    offset: i64,
    chunk: *mut sys::pa_memchunk,
) -> libc::c_int {
    let i = o as *mut sys::pa_sink_input;
    if code == MESSAGE_PREPARE_RESUME {
        let sink = (*i).sink;
        if !sink.is_null() && !data.is_null() {
            // Both in one message, before the sink renders again: the rewind is sized now,
            // while it still reaches back over the long block; the latency then shrinks the
            // block it renders next.
            sys::pa_sink_request_rewind(sink, usize::MAX);
            sys::pa_sink_input_set_requested_latency_within_thread(i, *(data as *const u64));
        }
        return 0;
    }
    let st = (*i).userdata as *mut SiState;
    if code == sys::PA_SINK_INPUT_MESSAGE_GET_LATENCY as libc::c_int && !st.is_null() {
        let q = crate::catch("stream latency", || (*st).io.queued_usec()).unwrap_or(0);
        *(data as *mut u64) = q;
        // The default handler adds what the sink and resampler hold.
    }
    sys::pa_sink_input_process_msg(o, code, data, offset, chunk)
}

impl Kind for SinkInputKind {
    type Raw = sys::pa_sink_input;
    type Device = SinkKind;
    type Config<'a> = SinkInputConfig<'a>;
    type Io = dyn SinkInputIo;
    const PUT: unsafe extern "C" fn(*mut sys::pa_sink_input) = sys::pa_sink_input_put;
    const UNLINK: unsafe extern "C" fn(*mut sys::pa_sink_input) = sys::pa_sink_input_unlink;
    const UNREF: unsafe extern "C" fn(*mut sys::pa_sink_input) = sys::pa_sink_input_unref;
    const SET_REQUESTED_LATENCY: unsafe extern "C" fn(*mut sys::pa_sink_input, u64) -> u64 =
        sys::pa_sink_input_set_requested_latency;
    const UPDATE_PROPLIST: unsafe extern "C" fn(
        *mut sys::pa_sink_input,
        sys::pa_update_mode_t,
        *mut sys::pa_proplist,
    ) = sys::pa_sink_input_update_proplist;

    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        sink: *mut sys::pa_sink,
        cfg: &SinkInputConfig,
    ) -> (libc::c_int, *mut sys::pa_sink_input) {
        let mut data = sys::pa_sink_input_new_data::default();
        sys::pa_sink_input_new_data_init(&mut data);
        sys::pa_sink_input_new_data_set_sink(&mut data, sink, false, true);
        data.driver = cfg.driver.as_ptr();
        data.module = module;
        sys::pa_sink_input_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
        sys::pa_sink_input_new_data_set_channel_map(&mut data, &cfg.map.raw);
        sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, cfg.props.raw());
        let mut si: *mut sys::pa_sink_input = std::ptr::null_mut();
        let r = sys::pa_sink_input_new(&mut si, core, &mut data);
        sys::pa_sink_input_new_data_done(&mut data);
        (r, si)
    }

    unsafe fn install(si: *mut sys::pa_sink_input) {
        (*si).parent.process_msg = Some(si_process_msg);
        (*si).pop = Some(pop_cb);
        (*si).process_rewind = Some(process_rewind_cb);
        (*si).kill = Some(stream::kill_cb::<Self>);
    }

    unsafe fn set_quiet(si: *mut sys::pa_sink_input, quiet: bool, latency_usec: u64) {
        if quiet {
            // No latency request (-1): an idle sink with nothing else to play may render in
            // its longest blocks.
            sys::pa_sink_input_set_requested_latency(si, u64::MAX);
            sys::pa_sink_input_cork(si, true);
        } else {
            // An idle sink has rendered up to its longest block ahead (2 s for a null sink
            // nothing reads). The stream must be heard at once, and the sink must not take a
            // whole long block from it when it does (a stream that has a few ms: the rest was
            // silence and a dozen underruns). So, on the sink's IO thread in one message, a
            // rewind of all it rendered ahead (sized while its rewind still reaches that far)
            // and the short latency (its next block is short); then the uncork, whose own
            // rewind is one short block. (Uncorking first, the sink rewound and re-rendered its
            // whole long block before the short latency reached it.)
            let sink = (*si).sink;
            if !sink.is_null() && !(*sink).asyncmsgq.is_null() {
                sys::pa_asyncmsgq_send(
                    (*sink).asyncmsgq,
                    si as *mut sys::pa_msgobject,
                    MESSAGE_PREPARE_RESUME,
                    &latency_usec as *const u64 as *const libc::c_void,
                    0,
                    std::ptr::null(),
                );
            }
            sys::pa_sink_input_cork(si, false);
            sys::pa_sink_input_set_requested_latency(si, latency_usec);
        }
    }

    stream_fields!(sink);
}

impl SinkInput {
    pub fn new(
        module: &ModuleRef,
        mut cfg: SinkInputConfig,
        io: Box<dyn SinkInputIo>,
    ) -> Result<SinkInput, String> {
        let on_kill = cfg.on_kill.take();
        let (device, latency) = (cfg.sink, cfg.requested_latency_usec);
        stream::Stream::open(module, device, &cfg, &cfg.spec, latency, on_kill, io)
    }

    pub fn index(&self) -> u32 {
        // SAFETY: the stream object lives until Drop (we hold a reference).
        unsafe { <SinkInputKind as Kind>::index(self.raw) }
    }

    /// The name of the sink the stream plays on (it may have been moved).
    pub fn sink_name(&self) -> Option<String> {
        self.device_name()
    }
}
