//! Property lists (`pa_proplist`).
use crate::sys;

/// An owned property list (main thread).
pub struct Proplist {
    ptr: *mut sys::pa_proplist,
}

impl Default for Proplist {
    fn default() -> Self {
        Self::new()
    }
}

impl Proplist {
    pub fn new() -> Proplist {
        // SAFETY: allocation; never NULL (pa_xmalloc aborts on OOM like the rest of the daemon).
        Proplist {
            ptr: unsafe { sys::pa_proplist_new() },
        }
    }

    /// Parses PulseAudio's textual form (`key=value key2="value 2"`).
    pub fn from_string(s: &str) -> Option<Proplist> {
        let c = crate::cstring(s);
        // SAFETY: valid C string.
        let ptr = unsafe { sys::pa_proplist_from_string(c.as_ptr()) };
        (!ptr.is_null()).then_some(Proplist { ptr })
    }

    /// # Safety
    /// `ptr` must be a live proplist; the copy is owned by the result.
    pub(crate) unsafe fn copy_of(ptr: *const sys::pa_proplist) -> Proplist {
        Proplist {
            ptr: sys::pa_proplist_copy(ptr),
        }
    }

    pub(crate) fn raw(&self) -> *mut sys::pa_proplist {
        self.ptr
    }

    /// Sets a string property; false if the key is not a valid property key.
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        let (k, v) = (crate::cstring(key), crate::cstring(value));
        // SAFETY: live proplist, valid C strings (copied by pulsecore).
        unsafe { sys::pa_proplist_sets(self.ptr, k.as_ptr(), v.as_ptr()) == 0 }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let k = crate::cstring(key);
        // SAFETY: live proplist; the value is copied before the call returns.
        unsafe { crate::from_cstr(sys::pa_proplist_gets(self.ptr, k.as_ptr())) }
    }

    pub fn unset(&mut self, key: &str) {
        let k = crate::cstring(key);
        // SAFETY: live proplist, valid key.
        unsafe { sys::pa_proplist_unset(self.ptr, k.as_ptr()) };
    }

    /// All (key, string value) pairs; values that are not strings are skipped.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut state: *mut libc::c_void = std::ptr::null_mut();
        loop {
            // SAFETY: live proplist; state is pulsecore's iterator cookie.
            let k = unsafe { sys::pa_proplist_iterate(self.ptr, &mut state) };
            // SAFETY: NULL or a key owned by the proplist.
            let Some(key) = (unsafe { crate::from_cstr(k) }) else {
                break;
            };
            if let Some(v) = self.get(&key) {
                out.push((key, v));
            }
        }
        out
    }

    /// Merges `other` into this list (PulseAudio's `PA_UPDATE_REPLACE`).
    pub fn update(&mut self, other: &Proplist) {
        // SAFETY: both live.
        unsafe { sys::pa_proplist_update(self.ptr, sys::PA_UPDATE_REPLACE, other.ptr) }
    }

    /// The entries of `new` whose value differs from this list's (`None`: nothing changes),
    /// so that an update touches only keys that really change.
    pub(crate) fn changes(&self, new: &Proplist) -> Option<Proplist> {
        let mut changed = Proplist::new();
        let mut any = false;
        for (k, v) in new.entries() {
            if self.get(&k).as_deref() != Some(v.as_str()) {
                changed.set(&k, &v);
                any = true;
            }
        }
        any.then_some(changed)
    }
}

impl Drop for Proplist {
    fn drop(&mut self) {
        // SAFETY: owned pointer, freed once.
        unsafe { sys::pa_proplist_free(self.ptr) }
    }
}
