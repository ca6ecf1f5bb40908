//! The receiver's plain RTP input (`rtp_port=`): datagrams from four senders (two admitted by
//! the ACL), sorted by the demultiplexer (admission, payload type, sequence guard) into
//! streams, each played through its real decode path (jitter buffer, Opus decoder, playout
//! engine) with a device pulling 10 ms a datagram: nothing panics, every sample is finite.
//! Input: a sender byte, a length byte, the datagram, repeated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    opus_tunnel_core::plain_rtp::fuzz_datagrams(data);
});
