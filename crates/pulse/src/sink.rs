//! A sink with its own IO thread (`pa_thread` + `pa_rtpoll` + `pa_thread_mq`), clocked by the
//! system's monotonic clock like `module-null-sink`, that hands every rendered block to a
//! [`SinkIo`] callback on that thread. The machinery is shared with sources
//! (`device.rs`).
use crate::device::{self, device_fields, DeviceConfig, IoState, Kind};
use crate::{sys, Proplist};

/// What the sink does with its audio, on the sink's IO (real-time) thread: no blocking, no
/// locks, no socket I/O, no heavy allocation.
pub trait SinkIo: Send + 'static {
    /// `data` (whole frames in the sink's sample spec) was just rendered. `running` is false
    /// when no uncorked stream plays into the sink (then `data` is silence).
    fn render(&mut self, data: &[u8], running: bool);
    /// The sink's state changed (`running` as for [`render`](Self::render)). Also called with
    /// `false` when the sink is suspended.
    fn state_changed(&mut self, _running: bool) {}
    /// The latency downstream of the sink's clock (encoder, network, remote buffer, remote
    /// device), in µs; the sink reports it plus half its block. Keep it steady: players read
    /// it for A/V sync.
    fn extra_latency_usec(&self) -> u64 {
        0
    }
}

/// How to create a [`Sink`]; `block_usec` is the rendering block, `rate_scale` the
/// consumption rate.
pub type SinkConfig<'a> = DeviceConfig<'a>;

/// A sink created by a module (main thread). Dropping it unlinks the sink and stops its thread.
pub type Sink = device::Device<SinkKind>;

/// pulsecore's sink, for `Device`.
pub struct SinkKind;

impl Kind for SinkKind {
    type Raw = sys::pa_sink;
    type Io = dyn SinkIo;
    const WHAT: &'static str = "sink";
    const THREAD_NAME: &'static str = "opus-tunnel-sink";
    const STATE_CHANGE: &'static str = "sink state change";
    const IO_THREAD: &'static str = "sink IO thread";
    const NAMEREG: sys::pa_namereg_type_t = sys::PA_NAMEREG_SINK;
    const PROPLIST_CHANGED: sys::pa_core_hook_t = sys::PA_CORE_HOOK_SINK_PROPLIST_CHANGED;
    const GET_LATENCY: libc::c_int = sys::PA_SINK_MESSAGE_GET_LATENCY as libc::c_int;
    const INIT: libc::c_int = sys::PA_SINK_INIT;
    const SUSPENDED: libc::c_int = sys::PA_SINK_SUSPENDED;
    const RUNNING: libc::c_int = sys::PA_SINK_RUNNING;
    const IS_OPENED: unsafe extern "C" fn(libc::c_int) -> libc::c_int = sys::PA_SINK_IS_OPENED;
    const DEFAULT_PROCESS_MSG: device::ProcessMsg = sys::pa_sink_process_msg;
    const SET_ASYNCMSGQ: unsafe extern "C" fn(*mut sys::pa_sink, *mut sys::pa_asyncmsgq) =
        sys::pa_sink_set_asyncmsgq;
    const SET_RTPOLL: unsafe extern "C" fn(*mut sys::pa_sink, *mut sys::pa_rtpoll) =
        sys::pa_sink_set_rtpoll;
    const SET_FIXED_LATENCY: unsafe extern "C" fn(*mut sys::pa_sink, sys::pa_usec_t) =
        sys::pa_sink_set_fixed_latency;
    const PUT: unsafe extern "C" fn(*mut sys::pa_sink) = sys::pa_sink_put;
    const UNLINK: unsafe extern "C" fn(*mut sys::pa_sink) = sys::pa_sink_unlink;
    const UNREF: unsafe extern "C" fn(*mut sys::pa_sink) = sys::pa_sink_unref;
    const LINKED_BY: unsafe extern "C" fn(*mut sys::pa_sink) -> libc::c_uint =
        sys::pa_sink_linked_by;

    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        cfg: &DeviceConfig,
        props: &Proplist,
    ) -> *mut sys::pa_sink {
        let mut data = sys::pa_sink_new_data::default();
        sys::pa_sink_new_data_init(&mut data);
        data.driver = cfg.driver.as_ptr();
        data.module = module;
        let name = crate::cstring(cfg.name);
        sys::pa_sink_new_data_set_name(&mut data, name.as_ptr());
        sys::pa_sink_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
        sys::pa_sink_new_data_set_channel_map(&mut data, &cfg.map.raw);
        sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, props.raw());
        let flags = sys::PA_SINK_LATENCY | sys::PA_SINK_NETWORK;
        let sink = sys::pa_sink_new(core, &mut data, flags as sys::pa_sink_flags_t);
        sys::pa_sink_new_data_done(&mut data);
        sink
    }

    unsafe fn configure(s: *mut sys::pa_sink, block_bytes: usize) {
        sys::pa_sink_set_max_request(s, block_bytes);
        sys::pa_sink_set_max_rewind(s, 0);
    }

    unsafe fn install(s: *mut sys::pa_sink) {
        (*s).parent.process_msg = Some(device::process_msg::<Self>);
        (*s).set_state_in_io_thread = Some(device::set_state_in_io_thread::<Self>);
    }

    fn state_changed(io: &mut dyn SinkIo, running: bool) {
        io.state_changed(running)
    }

    fn extra_latency_usec(io: &dyn SinkIo) -> u64 {
        io.extra_latency_usec()
    }

    unsafe fn latency(st: *mut IoState<Self>, extra_usec: u64) -> i64 {
        // Rendered audio leaves at once. The sink renders a block when its clock reaches the
        // block's start, so what it holds ahead of its clock runs from a block down to nothing:
        // half a block on average, reported as such so that the figure holds still from one
        // query to the next (the sawtooth moved it by a whole block). Then what waits
        // downstream.
        ((*st).block_usec / 2 + extra_usec) as i64
    }

    fn lead_usec(block_usec: u64) -> u64 {
        block_usec / 2
    }

    unsafe fn active(s: *mut sys::pa_sink) -> bool {
        // A stream plays into the sink, or one records its monitor (the sink is then IDLE
        // but must render for the monitor).
        let m = (*s).monitor_source;
        (*s).thread_info.state == sys::PA_SINK_RUNNING
            || (!m.is_null() && (*m).thread_info.state == sys::PA_SOURCE_RUNNING)
    }

    unsafe fn on_wakeup(s: *mut sys::pa_sink) {
        if (*s).thread_info.rewind_requested {
            // Audio leaves for the network as soon as it is rendered: nothing to rewind.
            sys::pa_sink_process_rewind(s, 0);
        }
    }

    unsafe fn one_block(st: *mut IoState<Self>) -> Option<usize> {
        let s = (*st).dev;
        let running = (*s).thread_info.state == sys::PA_SINK_RUNNING;
        let mut chunk = sys::pa_memchunk::default();
        sys::pa_sink_render_full(s, (*st).block_bytes, &mut chunk);
        if chunk.memblock.is_null() {
            return None;
        }
        let base = sys::pa_memblock_acquire(chunk.memblock) as *const u8;
        let data = std::slice::from_raw_parts(base.add(chunk.index), chunk.length);
        crate::catch("sink render", || (*st).io.render(data, running));
        sys::pa_memblock_release(chunk.memblock);
        sys::pa_memblock_unref(chunk.memblock);
        Some(chunk.length)
    }

    unsafe fn update_proplist(s: *mut sys::pa_sink, p: *mut sys::pa_proplist) {
        sys::pa_sink_update_proplist(s, sys::PA_UPDATE_REPLACE, p);
    }

    device_fields!();
}
