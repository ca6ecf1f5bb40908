//! The daemon core (main thread): device lookup.
use crate::device;
use crate::sink::SinkKind;
use crate::source::SourceKind;
use crate::sys;
use std::sync::Arc;

/// The daemon's `pa_core` (main thread only; not `Send`).
#[derive(Clone, Copy)]
pub struct Core {
    ptr: *mut sys::pa_core,
}

impl Core {
    /// # Safety
    /// `ptr` must be the daemon's live core.
    pub(crate) unsafe fn from_raw(ptr: *mut sys::pa_core) -> Core {
        Core { ptr }
    }

    pub(crate) fn raw(&self) -> *mut sys::pa_core {
        self.ptr
    }

    pub(crate) fn mainloop(&self) -> *mut sys::pa_mainloop_api {
        // SAFETY: live core.
        unsafe { (*self.ptr).mainloop }
    }

    /// Whether the daemon runs with real-time scheduling (for the IO threads we create).
    pub(crate) fn realtime(&self) -> Option<i32> {
        // SAFETY: live core; the bitfield accessor reads a plain field.
        unsafe {
            if (*self.ptr).realtime_scheduling() {
                Some((*self.ptr).realtime_priority)
            } else {
                None
            }
        }
    }

    /// What makes a thread of ours real-time as the daemon's own audio threads are
    /// (`realtime-scheduling`, at `realtime-priority` − 1: below the devices' IO threads it
    /// feeds); `None` when the daemon runs without real-time scheduling. Call it on the
    /// thread to raise (any thread: it holds no pointer into the core).
    pub fn realtime_for_feeders(&self) -> Option<RealtimeThread> {
        self.realtime().map(|p| RealtimeThread {
            priority: (p - 1).max(1),
        })
    }

    /// [`Core::realtime_for_feeders`] as a hook for a worker's configuration: called on the
    /// thread to raise; `None` when the daemon runs without real-time scheduling.
    pub fn realtime_hook(&self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        self.realtime_for_feeders()
            .map(|rt| Arc::new(move || rt.raise_current_thread()) as Arc<dyn Fn() + Send + Sync>)
    }

    /// Finds a sink by name (`None`: the default sink). Returns its name if it exists.
    pub fn sink_name(&self, name: Option<&str>) -> Option<String> {
        self.device_name::<SinkKind>(name)
    }

    /// Finds a source by name (`None`: the default source). Returns its name if it exists.
    pub fn source_name(&self, name: Option<&str>) -> Option<String> {
        self.device_name::<SourceKind>(name)
    }

    fn device_name<K: device::Kind>(&self, name: Option<&str>) -> Option<String> {
        let p = self.find::<K>(name);
        if p.is_null() {
            return None;
        }
        // SAFETY: p is a live device.
        unsafe { crate::from_cstr(K::name(p)) }
    }

    /// Finds a sink or a source by name (`None`: the default one); NULL if there is none.
    pub(crate) fn find<K: device::Kind>(&self, name: Option<&str>) -> *mut K::Raw {
        let c = name.map(crate::cstring);
        // SAFETY: live core; name is NULL or a valid C string.
        unsafe {
            sys::pa_namereg_get(
                self.ptr,
                c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                K::NAMEREG,
            ) as *mut K::Raw
        }
    }
}

/// Makes the calling thread real-time (see [`Core::realtime_for_feeders`]).
#[derive(Clone, Copy, Debug)]
pub struct RealtimeThread {
    priority: i32,
}

impl RealtimeThread {
    /// Raises the calling thread (PulseAudio's `pa_thread_make_realtime`: rtkit, or
    /// `SCHED_RR` where the daemon may set it); a refusal is logged by PulseAudio and the
    /// thread runs on as before.
    pub fn raise_current_thread(&self) {
        // SAFETY: acts on the calling thread only; no daemon state is touched.
        unsafe {
            sys::pa_thread_make_realtime(self.priority);
        }
    }
}
