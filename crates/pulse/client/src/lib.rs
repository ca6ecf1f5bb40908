//! `pa_context_send_message_to_object` (PulseAudio ≥ 15), on a connection of its own.
//!
//! libpulse-binding 2.30.1 has `Introspector::send_message_to_object` (feature `pa_v15`), but
//! its C callback proxy inverts the null check on the response
//! (`response.is_null().then(|| CStr::from_ptr(response) ...)`): a real response arrives as
//! `None`, and a failed request (response NULL) would be read through a null pointer. Its
//! `Context` does not give out the raw `pa_context` either, so this module drives the C API
//! through libpulse-sys directly: a standard main loop, a context, one request, its answer.
//!
//! `unsafe` stays in this crate; [`send`] and [`strerror`] are safe.

use anyhow::{bail, Result};
use libpulse_sys as sys;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

/// What the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The handler's response text.
    Response(String),
    /// The request failed in the daemon (no handler at that path, access denied, ...):
    /// PulseAudio's error code.
    Failed(i32),
}

/// PulseAudio's text for an error code (`pa_strerror`).
pub fn strerror(code: i32) -> String {
    // SAFETY: pa_strerror returns a pointer to a static string (or NULL for unknown codes).
    let p = unsafe { sys::pa_strerror(code) };
    if p.is_null() {
        format!("error {code}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// PA_ERR_NOENTITY: no such object (here: no message handler at that path).
pub const ERR_NOENTITY: i32 = 5;

struct Reply {
    done: bool,
    success: bool,
    text: Option<String>,
}

extern "C" fn on_reply(
    _c: *mut sys::pa_context,
    success: c_int,
    response: *const c_char,
    userdata: *mut c_void,
) {
    // SAFETY: userdata is the &mut Reply given to pa_context_send_message_to_object, alive
    // until the main loop below has seen `done`; only this thread touches it.
    let reply = unsafe { &mut *(userdata as *mut Reply) };
    reply.done = true;
    reply.success = success != 0;
    reply.text = if response.is_null() {
        None
    } else {
        // SAFETY: non-null response strings are NUL-terminated and valid during the callback.
        Some(
            unsafe { CStr::from_ptr(response) }
                .to_string_lossy()
                .into_owned(),
        )
    };
}

/// Owns the main loop and the context; frees them in order.
struct Conn {
    mainloop: *mut sys::pa_mainloop,
    context: *mut sys::pa_context,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: both pointers came from the matching constructors and are freed once.
        unsafe {
            if !self.context.is_null() {
                sys::pa_context_disconnect(self.context);
                sys::pa_context_unref(self.context);
            }
            if !self.mainloop.is_null() {
                sys::pa_mainloop_free(self.mainloop);
            }
        }
    }
}

impl Conn {
    fn iterate(&self) -> Result<()> {
        // SAFETY: a valid main loop, iterated on the thread that owns it.
        if unsafe { sys::pa_mainloop_iterate(self.mainloop, 1, ptr::null_mut()) } < 0 {
            bail!("the PulseAudio main loop failed");
        }
        Ok(())
    }

    fn errno(&self) -> i32 {
        // SAFETY: valid context.
        unsafe { sys::pa_context_errno(self.context) }
    }
}

/// Connects (to `server`, or to what `PULSE_SERVER` / client.conf name when `None`), sends
/// `message` with `params` to the object at `path`, and returns the answer.
pub fn send(server: Option<&str>, path: &str, message: &str, params: &str) -> Result<Answer> {
    let c_name = CString::new("opus-tunnel-ctl")?;
    let c_server = server.map(CString::new).transpose()?;
    let which = server.map(|s| format!(" {s}")).unwrap_or_default();
    let c_path = CString::new(path)?;
    let c_message = CString::new(message)?;
    let c_params = CString::new(params)?;
    // SAFETY: plain constructor; checked for NULL below.
    let mainloop = unsafe { sys::pa_mainloop_new() };
    if mainloop.is_null() {
        bail!("cannot create a PulseAudio main loop");
    }
    let mut conn = Conn {
        mainloop,
        context: ptr::null_mut(),
    };
    // SAFETY: the API pointer belongs to the main loop, which outlives the context (Conn's
    // Drop frees the context first); the name is copied by libpulse.
    conn.context =
        unsafe { sys::pa_context_new(sys::pa_mainloop_get_api(mainloop), c_name.as_ptr()) };
    if conn.context.is_null() {
        bail!("cannot create a PulseAudio context");
    }
    let server_ptr = c_server.as_ref().map_or(ptr::null(), |s| s.as_ptr());
    // SAFETY: valid context; the server string is copied by libpulse.
    let r = unsafe {
        sys::pa_context_connect(
            conn.context,
            server_ptr,
            sys::PA_CONTEXT_NOAUTOSPAWN,
            ptr::null(),
        )
    };
    if r < 0 {
        bail!(
            "cannot connect to the sound server{which}: {}",
            strerror(conn.errno())
        );
    }
    loop {
        // SAFETY: valid context.
        match unsafe { sys::pa_context_get_state(conn.context) } {
            sys::PA_CONTEXT_READY => break,
            sys::PA_CONTEXT_FAILED | sys::PA_CONTEXT_TERMINATED => {
                bail!(
                    "cannot connect to the sound server{which}: {}",
                    strerror(conn.errno())
                )
            }
            _ => conn.iterate()?,
        }
    }
    let mut reply = Reply {
        done: false,
        success: false,
        text: None,
    };
    // SAFETY: valid, ready context; the strings are copied into the request; `reply` outlives
    // the operation (we iterate until the callback has run, and the callback is the only
    // user of the pointer).
    let op = unsafe {
        sys::pa_context_send_message_to_object(
            conn.context,
            c_path.as_ptr(),
            c_message.as_ptr(),
            c_params.as_ptr(),
            Some(on_reply),
            &mut reply as *mut Reply as *mut c_void,
        )
    };
    if op.is_null() {
        bail!(
            "cannot send the message to {path}: {}",
            strerror(conn.errno())
        );
    }
    let result = loop {
        if reply.done {
            break Ok(());
        }
        if let Err(e) = conn.iterate() {
            break Err(e);
        }
        // SAFETY: valid context.
        let state = unsafe { sys::pa_context_get_state(conn.context) };
        if state == sys::PA_CONTEXT_FAILED || state == sys::PA_CONTEXT_TERMINATED {
            break Err(anyhow::anyhow!(
                "connection lost: {}",
                strerror(conn.errno())
            ));
        }
    };
    // SAFETY: cancel (a no-op once done) and drop our reference; after this libpulse will
    // never call back with `reply`.
    unsafe {
        sys::pa_operation_cancel(op);
        sys::pa_operation_unref(op);
    }
    result?;
    Ok(match (reply.success, reply.text) {
        (true, text) => Answer::Response(text.unwrap_or_default()),
        (false, _) => Answer::Failed(conn.errno()),
    })
}
