//! Routes the `log` crate into the daemon's log (`pa_log_level_meta`), so that module messages
//! appear where PulseAudio users look, at the daemon's log level.
use crate::sys;
use std::ffi::CString;

struct PaLogger;

static LOGGER: PaLogger = PaLogger;

impl log::Log for PaLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => sys::PA_LOG_ERROR,
            log::Level::Warn => sys::PA_LOG_WARN,
            log::Level::Info => sys::PA_LOG_INFO,
            log::Level::Debug | log::Level::Trace => sys::PA_LOG_DEBUG,
        };
        let msg = crate::cstring(&record.args().to_string());
        let file = CString::new(record.file().unwrap_or("")).unwrap_or_default();
        let func = crate::cstring(record.target());
        // SAFETY: all strings are valid NUL-terminated C strings that outlive the call; the
        // format is a constant "%s" taking exactly one string argument.
        unsafe {
            sys::pa_log_level_meta(
                level,
                file.as_ptr(),
                record.line().unwrap_or(0) as libc::c_int,
                func.as_ptr(),
                c"%s".as_ptr(),
                msg.as_ptr(),
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the daemon logger for this module's copy of `log` (idempotent).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
