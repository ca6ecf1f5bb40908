//! `log` records into PipeWire's log (the daemon's journal or stderr), with the module's name.

use crate::pw_sys as pw;
use crate::spa_sys as spa;
use std::ffi::CString;
use std::sync::OnceLock;

struct PwLogger {
    prefix: &'static str,
}

impl log::Log for PwLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => spa::SPA_LOG_LEVEL_ERROR,
            log::Level::Warn => spa::SPA_LOG_LEVEL_WARN,
            log::Level::Info => spa::SPA_LOG_LEVEL_INFO,
            log::Level::Debug => spa::SPA_LOG_LEVEL_DEBUG,
            log::Level::Trace => spa::SPA_LOG_LEVEL_TRACE,
        };
        let text = format!("{}: {}", self.prefix, record.args()).replace('\0', " ");
        let Ok(msg) = CString::new(text) else { return };
        let file = CString::new(record.file().unwrap_or("?")).unwrap_or_default();
        // SAFETY: every pointer is a valid C string for the duration of the call; the format
        // consumes exactly one string argument.
        unsafe {
            pw::pw_log_log(
                level,
                file.as_ptr(),
                record.line().unwrap_or(0) as i32,
                c"opus-tunnel".as_ptr(),
                c"%s".as_ptr(),
                msg.as_ptr(),
            );
        }
    }

    fn flush(&self) {}
}

/// Routes `log` into PipeWire's log, once per process (the first module loaded names the
/// logger; the messages of the core crate's threads then carry that name).
pub fn init_logging(prefix: &'static str) {
    static LOGGER: OnceLock<PwLogger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| PwLogger { prefix });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
