//! Module entry points. A module implements [`PaModule`] and calls
//! [`declare_module!`](crate::declare_module), which exports `pa__init`, `pa__done`,
//! `pa__get_author`, `pa__get_description`, `pa__get_usage`, `pa__get_version`,
//! `pa__load_once` and `pa__get_n_used` with every call guarded against panics.
use crate::{sys, Core};
use std::ffi::CStr;

/// A loaded module instance, owned by the daemon's main thread.
pub trait PaModule: Sized + 'static {
    /// Creates the instance from the module's argument string. An `Err` fails `load-module`;
    /// its text is logged as the reason.
    fn init(module: &ModuleRef) -> Result<Self, String>;
    /// How many clients (streams) use this instance; the daemon asks before auto-unloading.
    fn n_used(&self) -> i32 {
        0
    }
}

/// The daemon's `pa_module` of this instance (main thread only; valid while the module is
/// loaded, which outlasts everything the module owns).
#[derive(Clone, Copy)]
pub struct ModuleRef {
    ptr: *mut sys::pa_module,
}

impl ModuleRef {
    /// The module's raw pointer, for the device constructors of this crate.
    pub(crate) fn raw(&self) -> *mut sys::pa_module {
        self.ptr
    }

    /// The module argument string as given to `load-module`.
    pub fn argument(&self) -> Option<String> {
        // SAFETY: ptr is the live module passed to pa__init.
        unsafe { crate::from_cstr((*self.ptr).argument) }
    }

    /// The module's name as loaded (e.g. `module-tunnel-sink-opus`).
    pub fn name(&self) -> String {
        // SAFETY: as above.
        unsafe { crate::from_cstr((*self.ptr).name) }.unwrap_or_default()
    }

    /// The module's index in the daemon.
    pub fn index(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.ptr).index }
    }

    /// The daemon core.
    pub fn core(&self) -> Core {
        // SAFETY: as above; the core outlives every module.
        unsafe { Core::from_raw((*self.ptr).core) }
    }

    /// Asks the daemon to unload this module (from the main thread, at its next iteration).
    pub fn request_unload(&self) {
        // SAFETY: live module, main thread.
        unsafe { sys::pa_module_unload_request(self.ptr, true) }
    }
}

/// The daemon this module was loaded into speaks the version we were built for?
/// The loader already compares `pa__get_version`; this second check covers a libpulse of
/// another version sitting beside the daemon.
fn check_version() -> Result<(), String> {
    // SAFETY: returns a static string.
    let running = unsafe { crate::from_cstr(sys::pa_get_library_version()) }.unwrap_or_default();
    // libpulse says "16.1.0" where the daemon's modules say "16.1": compare without trailing
    // zero components.
    fn norm(v: &str) -> Vec<&str> {
        let mut parts: Vec<&str> = v.trim().split('.').collect();
        while parts.len() > 1 && parts.last() == Some(&"0") {
            parts.pop();
        }
        parts
    }
    if norm(&running) != norm(crate::PA_VERSION) {
        return Err(format!(
            "this module was built for PulseAudio {} but the daemon is {running}; \
             pulsecore has no stable ABI, so it refuses to load. Rebuild it against PulseAudio {running}.",
            crate::PA_VERSION
        ));
    }
    Ok(())
}

/// The `pa_module*` the daemon passes to the entry points, as an opaque value (same ABI as the
/// pointer), so that the exported functions in the module crates need no `unsafe`.
#[repr(transparent)]
pub struct ModulePtr(*mut sys::pa_module);

#[doc(hidden)]
pub fn do_init<M: PaModule>(m: ModulePtr) -> libc::c_int {
    let m = m.0;
    crate::logging::init();
    if m.is_null() {
        return -1;
    }
    let module = ModuleRef { ptr: m };
    let r = crate::catch("pa__init", || {
        check_version()?;
        M::init(&module)
    });
    match r {
        Some(Ok(inst)) => {
            let b = Box::new(inst);
            // SAFETY: m is live; userdata is ours until pa__done.
            unsafe { (*m).userdata = Box::into_raw(b) as *mut libc::c_void };
            0
        }
        Some(Err(e)) => {
            log::error!("{}: {e}", module.name());
            -1
        }
        None => -1,
    }
}

#[doc(hidden)]
pub fn do_done<M: PaModule>(m: ModulePtr) {
    let m = m.0;
    if m.is_null() {
        return;
    }
    // SAFETY: userdata was set by do_init to a Box<M> (or is NULL after a failed init).
    let p = unsafe { (*m).userdata } as *mut M;
    if p.is_null() {
        return;
    }
    // SAFETY: m is live.
    unsafe { (*m).userdata = std::ptr::null_mut() };
    crate::catch("pa__done", || {
        // SAFETY: p came from Box::into_raw in do_init and is dropped exactly once.
        drop(unsafe { Box::from_raw(p) });
    });
}

#[doc(hidden)]
pub fn do_n_used<M: PaModule>(m: ModulePtr) -> libc::c_int {
    let m = m.0;
    if m.is_null() {
        return 0;
    }
    // SAFETY: userdata is a live Box<M> between init and done (main thread).
    let p = unsafe { (*m).userdata } as *const M;
    if p.is_null() {
        return 0;
    }
    crate::catch("pa__get_n_used", || unsafe { &*p }.n_used()).unwrap_or(0)
}

/// Static strings of a module, NUL-terminated for C.
pub struct ModuleInfo {
    pub author: &'static CStr,
    pub description: &'static CStr,
    pub usage: &'static CStr,
    pub load_once: bool,
}

/// Exports PulseAudio's module entry points for a type implementing [`PaModule`].
///
/// ```ignore
/// declare_module!(MyModule, ModuleInfo { author: c"…", description: c"…", usage: c"…", load_once: false });
/// ```
#[macro_export]
macro_rules! declare_module {
    ($ty:ty, $info:expr) => {
        const _OPUS_TUNNEL_MODULE_INFO: $crate::module::ModuleInfo = $info;

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__init(m: $crate::module::ModulePtr) -> ::std::os::raw::c_int {
            $crate::module::do_init::<$ty>(m)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__done(m: $crate::module::ModulePtr) {
            $crate::module::do_done::<$ty>(m)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__get_n_used(m: $crate::module::ModulePtr) -> ::std::os::raw::c_int {
            $crate::module::do_n_used::<$ty>(m)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__get_author() -> *const ::std::os::raw::c_char {
            _OPUS_TUNNEL_MODULE_INFO.author.as_ptr()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__get_description() -> *const ::std::os::raw::c_char {
            _OPUS_TUNNEL_MODULE_INFO.description.as_ptr()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__get_usage() -> *const ::std::os::raw::c_char {
            _OPUS_TUNNEL_MODULE_INFO.usage.as_ptr()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__get_version() -> *const ::std::os::raw::c_char {
            $crate::PA_VERSION_C.as_ptr()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn pa__load_once() -> bool {
            _OPUS_TUNNEL_MODULE_INFO.load_once
        }
    };
}
