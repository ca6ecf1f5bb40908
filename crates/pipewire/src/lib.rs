//! The PipeWire side of the Opus tunnel modules: `pipewire-sys`/`libspa-sys` (bindgen over the
//! installed libpipewire-0.3) and the small safe layer the module crates use — the module entry
//! point with panic catching and clean-up at unload or daemon shutdown, module arguments
//! (SPA-JSON), streams with a real-time process callback, main-loop events (signalled from any
//! thread) and timers, and logging through `log` into PipeWire's log. All the `unsafe` of the
//! PipeWire modules is here.
//!
//! Lifetimes follow PipeWire's own tunnel modules (module-pipe-tunnel, module-pulse-tunnel):
//! the module connects a core of its own to the daemon's context (`pw_context_connect`); when
//! that core goes away first (the daemon shuts down and disconnects every core before it
//! destroys the modules) the module schedules its own destruction; in the module's `destroy`
//! event the instance is dropped (its streams destroyed), then the core is disconnected if it
//! is still there.

#![allow(clippy::missing_safety_doc)]

pub use libspa_sys as spa_sys;
pub use pipewire_sys as pw_sys;

mod args;
mod dict;
mod logger;
mod module;
mod source;
mod stream;

pub use args::{parse_json_list, parse_object, Args};
pub use logger::init_logging;
pub use module::{module_init, Context, ModuleInfo, NodeInfo, PwModule};
pub use source::{Event, EventHandle, Timer};
pub use stream::{
    channel_positions, Direction, Stream, StreamHandle, StreamIo, StreamSpec, StreamState,
};

/// The machine's host name (for the handshake), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Declares the module's entry point `pipewire__module_init` for type `$t` (a [`PwModule`]).
///
/// ```ignore
/// declare_pw_module!(MyModule, ModuleInfo { author: "…", description: "…", usage: "…" });
/// ```
#[macro_export]
macro_rules! declare_pw_module {
    ($t:ty, $info:expr) => {
        /// PipeWire's module entry point.
        #[no_mangle]
        pub extern "C" fn pipewire__module_init(
            module: *mut ::std::ffi::c_void,
            args: *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::module_init::<$t>(module, args, &$info)
        }
    };
}
