//! Core hooks (`pa_hook_connect`) and message handlers (`pa_message_handler_register`, what
//! `pactl send-message` talks to), with Rust closures on the main thread.
use crate::device;
use crate::sink::SinkKind;
use crate::source::SourceKind;
use crate::{sys, Core, Proplist};

// `Fn`, not `FnMut`: a hook may fire again from inside its own callback (a callback that
// updates the properties it watches), and the closure is then entered twice.
type HookFn = Box<dyn Fn(*mut libc::c_void)>;

/// A connected core hook; dropping it disconnects.
pub struct HookSlot {
    slot: *mut sys::pa_hook_slot,
    cb: *mut HookFn,
}

unsafe extern "C" fn hook_cb(
    _hook_data: *mut libc::c_void,
    call_data: *mut libc::c_void,
    slot_data: *mut libc::c_void,
) -> sys::pa_hook_result_t {
    let cb = slot_data as *mut HookFn;
    // SAFETY: slot_data is the closure owned by the HookSlot, alive while connected.
    crate::catch("hook", || (*cb)(call_data));
    sys::PA_HOOK_OK
}

impl HookSlot {
    /// # Safety
    /// `hook` must be a valid core hook index; `f` receives the hook's call data pointer.
    unsafe fn connect(core: &Core, hook: sys::pa_core_hook_t, f: HookFn) -> HookSlot {
        let cb = Box::into_raw(Box::new(f));
        let h = &mut (*core.raw()).hooks[hook as usize] as *mut sys::pa_hook;
        let slot = sys::pa_hook_connect(h, sys::PA_HOOK_NORMAL, Some(hook_cb), cb as *mut _);
        HookSlot { slot, cb }
    }
}

impl Drop for HookSlot {
    fn drop(&mut self) {
        // SAFETY: the slot is freed before its closure (no call can come in between: main
        // thread).
        unsafe {
            if !self.slot.is_null() {
                sys::pa_hook_slot_free(self.slot);
            }
            drop(Box::from_raw(self.cb));
        }
    }
}

/// Calls `f` with a copy of the sink's properties whenever they change
/// (`update-sink-proplist`, or any module's update). `f` may update the sink's properties
/// itself; it is then called again from inside that update.
pub fn watch_sink_proplist(
    core: &Core,
    sink_index: u32,
    f: impl Fn(&Proplist) + 'static,
) -> HookSlot {
    watch_proplist::<SinkKind>(core, sink_index, f)
}

/// Calls `f` with a copy of the source's properties whenever they change
/// (`update-source-proplist`, or any module's update); see [`watch_sink_proplist`].
pub fn watch_source_proplist(
    core: &Core,
    source_index: u32,
    f: impl Fn(&Proplist) + 'static,
) -> HookSlot {
    watch_proplist::<SourceKind>(core, source_index, f)
}

fn watch_proplist<K: device::Kind>(
    core: &Core,
    index: u32,
    f: impl Fn(&Proplist) + 'static,
) -> HookSlot {
    let hook = move |call_data: *mut libc::c_void| {
        let d = call_data as *mut K::Raw;
        // SAFETY: the hook passes the live device whose proplist changed.
        unsafe {
            if !d.is_null() && K::index(d) == index {
                f(&Proplist::copy_of(K::proplist(d)));
            }
        }
    };
    // SAFETY: a valid hook index whose call data is a device of kind K.
    unsafe { HookSlot::connect(core, K::PROPLIST_CHANGED, Box::new(hook)) }
}

type MsgFn = Box<dyn FnMut(&str, &str) -> Result<String, String>>;

/// A message handler at an object path (`pactl send-message PATH MESSAGE PARAMS`); dropping it
/// unregisters.
pub struct MessageHandler {
    core: Core,
    path: std::ffi::CString,
    cb: *mut MsgFn,
}

unsafe extern "C" fn msg_cb(
    _path: *const libc::c_char,
    message: *const libc::c_char,
    params: *const sys::pa_json_object,
    response: *mut *mut libc::c_char,
    userdata: *mut libc::c_void,
) -> libc::c_int {
    let cb = userdata as *mut MsgFn;
    let message = crate::from_cstr(message).unwrap_or_default();
    // Parameters arrive parsed as JSON; a plain word list (what users type) arrives as one
    // JSON string. Anything else is handed over empty.
    let params =
        if !params.is_null() && sys::pa_json_object_get_type(params) == sys::PA_JSON_TYPE_STRING {
            crate::from_cstr(sys::pa_json_object_get_string(params)).unwrap_or_default()
        } else {
            String::new()
        };
    // SAFETY: userdata is the closure owned by the handler, alive while registered.
    let r = crate::catch("message handler", || (*cb)(&message, &params))
        .unwrap_or_else(|| Err("internal error".into()));
    // Errors travel as a response text starting with "error: ", so that clients can show the
    // reason (a negative return would reach them as a bare error code).
    let text = match r {
        Ok(t) => t,
        Err(e) => format!("error: {e}"),
    };
    let c = crate::cstring(&text);
    *response = sys::pa_xstrdup(c.as_ptr());
    0
}

impl MessageHandler {
    /// `path` must start with `/` and use letters, digits, `.`, `_`, `-` and single `/`.
    pub fn register(
        core: &Core,
        path: &str,
        description: &str,
        f: impl FnMut(&str, &str) -> Result<String, String> + 'static,
    ) -> MessageHandler {
        let cpath = crate::cstring(path);
        let desc = crate::cstring(description);
        let cb: *mut MsgFn = Box::into_raw(Box::new(Box::new(f)));
        // SAFETY: main thread; the strings are copied by pulsecore; the closure lives until
        // unregistered.
        unsafe {
            sys::pa_message_handler_register(
                core.raw(),
                cpath.as_ptr(),
                desc.as_ptr(),
                Some(msg_cb),
                cb as *mut _,
            )
        };
        MessageHandler {
            core: *core,
            path: cpath,
            cb,
        }
    }
}

impl Drop for MessageHandler {
    fn drop(&mut self) {
        // SAFETY: unregister first, then free the closure.
        unsafe {
            sys::pa_message_handler_unregister(self.core.raw(), self.path.as_ptr());
            drop(Box::from_raw(self.cb));
        }
    }
}
