//! The PulseAudio binding of opus-tunnel: bindgen output over pulsecore (the daemon's internal
//! library, of exactly the installed version) and a small safe layer over it.
//!
//! This crate is the only place in the project with `unsafe`. What it offers the modules:
//! - [`module`]: the module entry points (`pa__init`, `pa__done`, …) with panics caught, via
//!   [`declare_module!`](crate::declare_module);
//! - [`logging`]: the `log` crate routed into the daemon's log;
//! - [`Modargs`], [`Proplist`], [`SampleSpec`], [`ChannelMap`]: argument and property handling;
//! - [`mainloop`]: waking the daemon's main thread from a worker thread, and periodic timers;
//! - [`sink`]: a sink with its own IO thread (rtpoll + thread_mq) that hands rendered audio to
//!   a callback;
//! - [`sink_input`]: a playback stream on an existing sink, fed by a callback on the sink's IO
//!   thread.
//! - [`source`], [`source_output`]: the same for recording; a sink and a source share one
//!   generic implementation (`device.rs`), as do the two kinds of stream (`stream.rs`).
//!
//! Threads: [`Core`], [`Modargs`], [`Proplist`] and the device handles belong to the daemon's
//! main thread (they are not `Send`). The IO-thread callbacks are trait objects that are `Send`.

pub mod sys {
    //! Raw bindgen output: pulsecore of the installed daemon.
    #![allow(
        non_camel_case_types,
        non_upper_case_globals,
        non_snake_case,
        dead_code,
        improper_ctypes,
        unsafe_op_in_unsafe_fn,
        unnecessary_transmutes,
        clippy::all
    )]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub mod core;
mod device;
pub mod hooks;
pub mod logging;
pub mod mainloop;
pub mod modargs;
pub mod module;
pub mod proplist;
pub mod sink;
pub mod sink_input;
pub mod source;
pub mod source_output;
pub mod spec;
mod stream;

pub use crate::core::{Core, RealtimeThread};
pub use modargs::Modargs;
pub use module::{ModuleRef, PaModule};
pub use proplist::Proplist;
pub use spec::{ChannelMap, SampleSpec};
pub use stream::ModuleStream;

/// The PulseAudio version these bindings were generated for (the installed daemon's at build
/// time), e.g. `"16.1"`.
pub const PA_VERSION: &str = env!("OPUS_TUNNEL_PA_VERSION");

/// NUL-terminated copy of [`PA_VERSION`] for `pa__get_version`.
pub const PA_VERSION_C: &std::ffi::CStr = {
    const BYTES: &[u8] = concat!(env!("OPUS_TUNNEL_PA_VERSION"), "\0").as_bytes();
    match std::ffi::CStr::from_bytes_with_nul(BYTES) {
        Ok(s) => s,
        Err(_) => panic!("version string contains a NUL"),
    }
};

/// Monotonic time in microseconds, as the daemon counts it (`pa_rtclock_now`).
pub fn rtclock_now() -> u64 {
    // SAFETY: pure function of the clock.
    unsafe { sys::pa_rtclock_now() }
}

/// The host name, as the daemon reports it.
pub fn host_name() -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: buf is writable for its length; pa_get_host_name NUL-terminates within it.
    let p = unsafe { sys::pa_get_host_name(buf.as_mut_ptr(), buf.len()) };
    if p.is_null() {
        return "localhost".to_string();
    }
    // SAFETY: p points into buf and is NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// Turns a Rust string into a C string, replacing interior NULs (which a C API could not see).
pub(crate) fn cstring(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Copies a C string into an owned `String` (lossy), `None` for NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn from_cstr(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Runs `f`, turning a panic into `None` after logging it: no panic may unwind into C.
pub fn catch<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("internal error in {what}: {msg} (caught; the daemon goes on)");
            None
        }
    }
}
