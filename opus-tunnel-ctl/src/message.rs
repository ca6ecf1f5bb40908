//! `pa_context_send_message_to_object` (PulseAudio ≥ 15), on a connection of its own: the
//! raw libpulse calls live in `opus-tunnel-pulse-client` (crates/pulse/client), behind safe
//! functions.
pub use opus_tunnel_pulse_client::{send, strerror, Answer, ERR_NOENTITY};
