//! Module arguments (`key=value …`, PulseAudio's syntax and quoting).
use crate::{sys, Proplist};

/// Parsed module arguments (main thread).
pub struct Modargs {
    ptr: *mut sys::pa_modargs,
}

impl Modargs {
    /// Parses `argument`, refusing keys not in `valid` with a message that names the key and
    /// lists the accepted ones.
    pub fn new(argument: Option<&str>, valid: &[&str]) -> Result<Modargs, String> {
        let arg = crate::cstring(argument.unwrap_or(""));
        // SAFETY: arg is a valid C string; a NULL key list accepts any key (we check below).
        let ptr = unsafe { sys::pa_modargs_new(arg.as_ptr(), std::ptr::null()) };
        if ptr.is_null() {
            return Err(format!(
                "cannot parse the module arguments {:?}: expected key=value pairs separated by spaces \
                 (quote values that contain spaces)",
                argument.unwrap_or("")
            ));
        }
        let ma = Modargs { ptr };
        for key in ma.keys() {
            if !valid.contains(&key.as_str()) {
                return Err(format!(
                    "unknown argument '{key}'; accepted arguments: {}",
                    valid.join(", ")
                ));
            }
        }
        Ok(ma)
    }

    /// All keys given, in the order PulseAudio stores them.
    pub fn keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut state: *mut libc::c_void = std::ptr::null_mut();
        loop {
            // SAFETY: live modargs; state is the iterator cookie owned by pulsecore.
            let k = unsafe { sys::pa_modargs_iterate(self.ptr, &mut state) };
            // SAFETY: k is NULL or a string owned by the modargs.
            match unsafe { crate::from_cstr(k) } {
                Some(k) => out.push(k),
                None => break,
            }
        }
        out
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<String> {
        let k = crate::cstring(key);
        // SAFETY: live modargs, valid key; the value is copied before the call returns.
        unsafe {
            crate::from_cstr(sys::pa_modargs_get_value(
                self.ptr,
                k.as_ptr(),
                std::ptr::null(),
            ))
        }
    }

    /// A property list argument such as `sink_properties="device.description='My tunnel'"`.
    pub fn get_proplist(&self, key: &str) -> Result<Option<Proplist>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Proplist::from_string(&v).map(Some).ok_or_else(|| {
                format!("{key}: cannot parse {v:?} as a property list (key=value, quoted values)")
            }),
        }
    }
}

impl Drop for Modargs {
    fn drop(&mut self) {
        // SAFETY: ptr came from pa_modargs_new and is freed once.
        unsafe { sys::pa_modargs_free(self.ptr) }
    }
}
