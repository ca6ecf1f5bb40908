//! A source with its own IO thread (`pa_thread` + `pa_rtpoll` + `pa_thread_mq`), clocked by
//! the system's monotonic clock like `module-null-source`, that asks a [`SourceIo`] callback
//! for every block it posts to its readers. The machinery is shared with sinks
//! (`device.rs`).
use crate::device::{self, device_fields, DeviceConfig, IoState, Kind};
use crate::{sys, Proplist};

/// Where the source's audio comes from, on the source's IO (real-time) thread: no blocking,
/// no locks, no socket I/O, no heavy allocation.
pub trait SourceIo: Send + 'static {
    /// Fill all of `out` (whole frames in the source's sample spec) with the next block.
    fn capture(&mut self, out: &mut [u8]);
    /// Whether the next block (`bytes` long) is there to capture. While it is not, the source
    /// waits for it up to [`HOLD_BLOCKS`](crate::device::HOLD_BLOCKS) blocks past its time
    /// (its readers get it that much later) before it captures what there is.
    fn ready(&self, _bytes: usize) -> bool {
        true
    }
    /// The source's state changed: `running` is true while an uncorked stream records from
    /// it. Also called with `false` when the source is suspended.
    fn state_changed(&mut self, _running: bool) {}
    /// The latency upstream of the source's clock (remote capture, encoder, network, buffer),
    /// in µs; the source reports it less half its block. Keep it steady: recorders read it to
    /// time what they record.
    fn extra_latency_usec(&self) -> u64 {
        0
    }
}

/// How to create a [`Source`]; `block_usec` is the posting block, `rate_scale` the
/// production rate.
pub type SourceConfig<'a> = DeviceConfig<'a>;

/// A source created by a module (main thread). Dropping it unlinks the source and stops its
/// thread.
pub type Source = device::Device<SourceKind>;

/// pulsecore's source, for `Device`.
pub struct SourceKind;

impl Kind for SourceKind {
    type Raw = sys::pa_source;
    type Io = dyn SourceIo;
    const WHAT: &'static str = "source";
    const THREAD_NAME: &'static str = "opus-tunnel-src";
    const STATE_CHANGE: &'static str = "source state change";
    const IO_THREAD: &'static str = "source IO thread";
    const NAMEREG: sys::pa_namereg_type_t = sys::PA_NAMEREG_SOURCE;
    const PROPLIST_CHANGED: sys::pa_core_hook_t = sys::PA_CORE_HOOK_SOURCE_PROPLIST_CHANGED;
    const GET_LATENCY: libc::c_int = sys::PA_SOURCE_MESSAGE_GET_LATENCY as libc::c_int;
    const INIT: libc::c_int = sys::PA_SOURCE_INIT;
    const SUSPENDED: libc::c_int = sys::PA_SOURCE_SUSPENDED;
    const RUNNING: libc::c_int = sys::PA_SOURCE_RUNNING;
    const IS_OPENED: unsafe extern "C" fn(libc::c_int) -> libc::c_int = sys::PA_SOURCE_IS_OPENED;
    const DEFAULT_PROCESS_MSG: device::ProcessMsg = sys::pa_source_process_msg;
    const SET_ASYNCMSGQ: unsafe extern "C" fn(*mut sys::pa_source, *mut sys::pa_asyncmsgq) =
        sys::pa_source_set_asyncmsgq;
    const SET_RTPOLL: unsafe extern "C" fn(*mut sys::pa_source, *mut sys::pa_rtpoll) =
        sys::pa_source_set_rtpoll;
    const SET_FIXED_LATENCY: unsafe extern "C" fn(*mut sys::pa_source, sys::pa_usec_t) =
        sys::pa_source_set_fixed_latency;
    const PUT: unsafe extern "C" fn(*mut sys::pa_source) = sys::pa_source_put;
    const UNLINK: unsafe extern "C" fn(*mut sys::pa_source) = sys::pa_source_unlink;
    const UNREF: unsafe extern "C" fn(*mut sys::pa_source) = sys::pa_source_unref;
    const LINKED_BY: unsafe extern "C" fn(*mut sys::pa_source) -> libc::c_uint =
        sys::pa_source_linked_by;

    unsafe fn create(
        core: *mut sys::pa_core,
        module: *mut sys::pa_module,
        cfg: &DeviceConfig,
        props: &Proplist,
    ) -> *mut sys::pa_source {
        let mut data = sys::pa_source_new_data::default();
        sys::pa_source_new_data_init(&mut data);
        data.driver = cfg.driver.as_ptr();
        data.module = module;
        let name = crate::cstring(cfg.name);
        sys::pa_source_new_data_set_name(&mut data, name.as_ptr());
        sys::pa_source_new_data_set_sample_spec(&mut data, &cfg.spec.raw);
        sys::pa_source_new_data_set_channel_map(&mut data, &cfg.map.raw);
        sys::pa_proplist_update(data.proplist, sys::PA_UPDATE_REPLACE, props.raw());
        let flags = sys::PA_SOURCE_LATENCY | sys::PA_SOURCE_NETWORK;
        let source = sys::pa_source_new(core, &mut data, flags as sys::pa_source_flags_t);
        sys::pa_source_new_data_done(&mut data);
        source
    }

    unsafe fn install(s: *mut sys::pa_source) {
        (*s).parent.process_msg = Some(device::process_msg::<Self>);
        (*s).set_state_in_io_thread = Some(device::set_state_in_io_thread::<Self>);
    }

    fn state_changed(io: &mut dyn SourceIo, running: bool) {
        io.state_changed(running)
    }

    fn extra_latency_usec(io: &dyn SourceIo) -> u64 {
        io.extra_latency_usec()
    }

    unsafe fn latency(st: *mut IoState<Self>, extra_usec: u64) -> i64 {
        // A block is posted when its end is due: the next frame to post has waited from none
        // to a whole block of that already, half a block on average, reported as such so
        // that the figure holds still between posts. Before that, what waits upstream.
        (extra_usec as i64 - ((*st).block_usec / 2) as i64).max(0)
    }

    fn lead_usec(_block_usec: u64) -> u64 {
        0
    }

    unsafe fn block_ready(st: *mut IoState<Self>) -> bool {
        let bytes = (*st).block_bytes;
        crate::catch("source ready", || (*st).io.ready(bytes)).unwrap_or(true)
    }

    unsafe fn one_block(st: *mut IoState<Self>) -> Option<usize> {
        let len = (*st).block_bytes;
        let block = sys::pa_memblock_new((*(*st).core).mempool, len);
        if block.is_null() {
            return None;
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
        sys::pa_source_post((*st).dev, &chunk);
        sys::pa_memblock_unref(block);
        Some(len)
    }

    unsafe fn update_proplist(s: *mut sys::pa_source, p: *mut sys::pa_proplist) {
        sys::pa_source_update_proplist(s, sys::PA_UPDATE_REPLACE, p);
    }

    device_fields!();
}
