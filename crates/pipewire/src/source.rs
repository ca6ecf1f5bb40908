//! Main-loop sources: an event that any thread can signal (an eventfd underneath) and a
//! periodic timer. Their callbacks run on the daemon's main thread.

use crate::module::Context;
use crate::pw_sys as pw;
use crate::spa_sys as spa;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

type Callback = Box<dyn FnMut()>;

unsafe fn utils(l: *mut pw::pw_loop) -> (*const spa::spa_loop_utils_methods, *mut c_void) {
    let u = (*l).utils;
    let cb = &(*u).iface.cb;
    (cb.funcs as *const spa::spa_loop_utils_methods, cb.data)
}

unsafe fn destroy_source(l: *mut pw::pw_loop, source: *mut spa::spa_source) {
    let (m, obj) = utils(l);
    if let Some(f) = (*m).destroy_source {
        f(obj, source);
    }
}

unsafe extern "C" fn on_event(data: *mut c_void, _count: u64) {
    let cb = &mut *(data as *mut Callback);
    if catch_unwind(AssertUnwindSafe(cb)).is_err() {
        log::error!("panic in a main-loop event (caught)");
    }
}

unsafe extern "C" fn on_timer(data: *mut c_void, _expirations: u64) {
    let cb = &mut *(data as *mut Callback);
    if catch_unwind(AssertUnwindSafe(cb)).is_err() {
        log::error!("panic in a main-loop timer (caught)");
    }
}

struct Target {
    main_loop: *mut pw::pw_loop,
    source: *mut spa::spa_source,
}

// SAFETY: the pointers are only used to call `signal_event`, which PipeWire documents as
// callable from any thread, and only while the source exists (the `Event` clears them under
// the mutex before it destroys the source).
unsafe impl Send for Target {}

/// A main-loop event: [`EventHandle::signal`] from any thread runs the callback on the main
/// thread (signals that arrive together run it once). Dropping it removes the source; handles
/// outliving it do nothing.
pub struct Event {
    target: Arc<Mutex<Option<Target>>>,
    main_loop: *mut pw::pw_loop,
    source: *mut spa::spa_source,
    _cb: Box<Callback>,
}

/// Wakes an [`Event`] from any thread.
#[derive(Clone)]
pub struct EventHandle(Arc<Mutex<Option<Target>>>);

impl EventHandle {
    pub fn signal(&self) {
        if let Ok(t) = self.0.lock() {
            if let Some(t) = t.as_ref() {
                // SAFETY: the source is alive while the target is set (see `Event::drop`).
                unsafe {
                    let (m, obj) = utils(t.main_loop);
                    if let Some(f) = (*m).signal_event {
                        f(obj, t.source);
                    }
                }
            }
        }
    }
}

impl Event {
    pub fn new(ctx: &Context, cb: impl FnMut() + 'static) -> Result<Event, String> {
        let main_loop = ctx.inner.main_loop;
        let mut boxed: Box<Callback> = Box::new(Box::new(cb));
        // SAFETY: main_loop is the daemon's live main loop; the callback box outlives the
        // source (dropped after it in `drop`).
        let source = unsafe {
            let (m, obj) = utils(main_loop);
            match (*m).add_event {
                Some(f) => f(
                    obj,
                    Some(on_event),
                    &mut *boxed as *mut Callback as *mut c_void,
                ),
                None => std::ptr::null_mut(),
            }
        };
        if source.is_null() {
            return Err("cannot add a main-loop event".into());
        }
        Ok(Event {
            target: Arc::new(Mutex::new(Some(Target { main_loop, source }))),
            main_loop,
            source,
            _cb: boxed,
        })
    }

    pub fn handle(&self) -> EventHandle {
        EventHandle(self.target.clone())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        match self.target.lock() {
            Ok(mut t) => *t = None,
            Err(p) => *p.into_inner() = None,
        }
        // SAFETY: the source is ours and no handle can reach it any more.
        unsafe { destroy_source(self.main_loop, self.source) };
    }
}

/// A periodic main-loop timer.
pub struct Timer {
    main_loop: *mut pw::pw_loop,
    source: *mut spa::spa_source,
    _cb: Box<Callback>,
}

impl Timer {
    /// Runs `cb` every `interval_usec`, the first time after one interval.
    pub fn new(
        ctx: &Context,
        interval_usec: u64,
        cb: impl FnMut() + 'static,
    ) -> Result<Timer, String> {
        let main_loop = ctx.inner.main_loop;
        let mut boxed: Box<Callback> = Box::new(Box::new(cb));
        let ts = libc_timespec(interval_usec.max(1));
        // SAFETY: as in `Event::new`; the timespecs are read during the call.
        let source = unsafe {
            let (m, obj) = utils(main_loop);
            let source = match (*m).add_timer {
                Some(f) => f(
                    obj,
                    Some(on_timer),
                    &mut *boxed as *mut Callback as *mut c_void,
                ),
                None => std::ptr::null_mut(),
            };
            if !source.is_null() {
                if let Some(f) = (*m).update_timer {
                    let mut value = ts;
                    let mut interval = ts;
                    f(obj, source, &mut value, &mut interval, false);
                }
            }
            source
        };
        if source.is_null() {
            return Err("cannot add a main-loop timer".into());
        }
        Ok(Timer {
            main_loop,
            source,
            _cb: boxed,
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: the source is ours.
        unsafe { destroy_source(self.main_loop, self.source) };
    }
}

fn libc_timespec(usec: u64) -> spa::timespec {
    spa::timespec {
        tv_sec: (usec / 1_000_000) as _,
        tv_nsec: ((usec % 1_000_000) * 1000) as _,
    }
}
