//! Core of the Opus tunnel modules for PulseAudio and PipeWire: codec, wire format
//! (handshake, RTP/RTCP, RFC 4571 framing), jitter buffer, parameters and statistics.
//!
//! Pure safe Rust; the only foreign code is libopus, reached through the `audiopus` crate and,
//! for multistream (surround), through the binding crate `opus-tunnel-opus-ms`.
//! Nothing here knows either sound daemon, and nothing panics on data that a peer or user
//! controls: every parser returns a `Result` with an error that says what was wrong.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod args;
pub mod argtable;
pub mod auth;
pub mod client;
pub mod codec;
pub mod connection;
pub mod control;
pub mod decode;
pub mod encode;
pub mod framing;
pub mod handshake;
pub mod jitter;
pub mod latency;
pub mod link;
mod net;
pub mod params;
pub mod plain_rtp;
pub mod playout;
pub mod quality;
pub mod report;
pub mod rtp;
pub mod samples;
pub mod secure;
pub mod server;
pub mod session;
pub mod stats;
pub mod surround;
pub mod udp;

pub use rtp::WireError;
