//! The daemon's main thread, from the other threads' side: a [`MainWaker`] runs a closure on
//! the main thread whenever any thread calls [`WakeHandle::wake`]; a [`MainTimer`] runs a
//! closure on the main thread periodically.
use crate::{sys, Core};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

type Callback = Box<dyn FnMut()>;

/// Runs a closure on the main thread when woken from any thread (an eventfd watched by the
/// daemon's main loop). Dropping it stops the watch; outstanding [`WakeHandle`]s stay valid
/// and harmless.
pub struct MainWaker {
    api: *mut sys::pa_mainloop_api,
    ev: *mut sys::pa_io_event,
    cb: *mut Callback,
    fd: Arc<OwnedFd>,
}

/// Wakes a [`MainWaker`]; cheap, non-blocking, usable from any thread (including real-time IO
/// threads: it is one `write` on an eventfd).
#[derive(Clone)]
pub struct WakeHandle {
    fd: Arc<OwnedFd>,
}

impl WakeHandle {
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own; a full counter
        // (EAGAIN) only means a wake-up is already pending.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }
}

unsafe extern "C" fn io_cb(
    _api: *mut sys::pa_mainloop_api,
    _e: *mut sys::pa_io_event,
    fd: libc::c_int,
    _ev: sys::pa_io_event_flags_t,
    userdata: *mut libc::c_void,
) {
    let mut v: u64 = 0;
    // SAFETY: fd is our non-blocking eventfd; reading resets its counter.
    libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8);
    let cb = userdata as *mut Callback;
    // SAFETY: userdata is the Box<Callback> owned by the MainWaker, alive while the event is.
    crate::catch("main-thread wake-up", || (*cb)());
}

impl MainWaker {
    pub fn new(core: &Core, f: impl FnMut() + 'static) -> Result<MainWaker, String> {
        // SAFETY: plain syscall.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let cb: *mut Callback = Box::into_raw(Box::new(Box::new(f)));
        let api = core.mainloop();
        // SAFETY: api is the daemon's main loop; io_new is always set; the callback and
        // userdata stay valid until Drop frees the event first.
        let ev = unsafe {
            match (*api).io_new {
                Some(io_new) => io_new(api, raw, sys::PA_IO_EVENT_INPUT, Some(io_cb), cb as *mut _),
                None => std::ptr::null_mut(),
            }
        };
        if ev.is_null() {
            // SAFETY: cb came from Box::into_raw above.
            drop(unsafe { Box::from_raw(cb) });
            return Err("the main loop refused an IO event".into());
        }
        Ok(MainWaker { api, ev, cb, fd })
    }

    pub fn handle(&self) -> WakeHandle {
        WakeHandle {
            fd: self.fd.clone(),
        }
    }
}

impl Drop for MainWaker {
    fn drop(&mut self) {
        // SAFETY: ev is live and freed once; after io_free the callback can no longer run, so
        // the closure may be dropped.
        unsafe {
            if let Some(io_free) = (*self.api).io_free {
                io_free(self.ev);
            }
            drop(Box::from_raw(self.cb));
        }
    }
}

/// Runs a closure on the main thread every `period_usec` (first run one period after creation).
pub struct MainTimer {
    inner: *mut TimerInner,
}

struct TimerInner {
    core: Core,
    ev: *mut sys::pa_time_event,
    period: u64,
    cb: Callback,
}

unsafe extern "C" fn time_cb(
    _api: *mut sys::pa_mainloop_api,
    e: *mut sys::pa_time_event,
    _tv: *const sys::timeval,
    userdata: *mut libc::c_void,
) {
    let inner = userdata as *mut TimerInner;
    // SAFETY: userdata is the TimerInner owned by the MainTimer, alive while the event is.
    crate::catch("main-thread timer", || ((*inner).cb)());
    let next = crate::rtclock_now() + (*inner).period;
    sys::pa_core_rttime_restart((*inner).core.raw(), e, next);
}

impl MainTimer {
    pub fn new(core: &Core, period_usec: u64, f: impl FnMut() + 'static) -> MainTimer {
        let inner = Box::into_raw(Box::new(TimerInner {
            core: *core,
            ev: std::ptr::null_mut(),
            period: period_usec.max(1000),
            cb: Box::new(f),
        }));
        // SAFETY: live core; inner stays valid until Drop frees the event first.
        unsafe {
            (*inner).ev = sys::pa_core_rttime_new(
                core.raw(),
                crate::rtclock_now() + (*inner).period,
                Some(time_cb),
                inner as *mut _,
            );
        }
        MainTimer { inner }
    }
}

impl Drop for MainTimer {
    fn drop(&mut self) {
        // SAFETY: the event is freed before its userdata.
        unsafe {
            let api = (*self.inner).core.mainloop();
            if let Some(time_free) = (*api).time_free {
                if !(*self.inner).ev.is_null() {
                    time_free((*self.inner).ev);
                }
            }
            drop(Box::from_raw(self.inner));
        }
    }
}
