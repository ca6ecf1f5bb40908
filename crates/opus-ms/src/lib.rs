//! Binding: a small safe wrapper over libopus's multistream API (`opus_multistream_*`), which
//! `audiopus` does not wrap. This crate is the only place where the multistream C calls are
//! made; the core crate (`#![forbid(unsafe_code)]`) uses [`MsEncoder`] for surround and
//! [`MsDecoder`] for every Opus stream (mono and stereo as one stream), because a decoder
//! must be duplicated to conceal late audio without touching its state.
//!
//! Safety argument, for every `unsafe` block below:
//! - the state pointers come from libopus's `*_create` functions, are checked for null, are
//!   owned by exactly one wrapper value and are freed once, in `Drop`;
//! - every buffer handed to libopus is a live Rust slice whose length is passed alongside
//!   it (or is a whole number of frames of `channels` samples, checked before the call), so
//!   libopus never reads or writes past it;
//! - the variadic `*_ctl` calls pass exactly one `opus_int32` argument, which is what every
//!   `OPUS_SET_*` request that [`MsEncoder::set`] is used for takes;
//! - [`MsDecoder::duplicate`] copies a decoder's state block over a fresh one made with the
//!   same layout: both are `opus_multistream_decoder_get_size` bytes, and libopus lays the
//!   streams' decoders out by offset inside the block (no pointers), so the copy is whole.
//!
//! libopus keeps no reference to our buffers after a call returns, and a state is only used
//! through `&mut self`, so the wrappers are `Send` (not `Sync`).
#![warn(missing_docs)]

use audiopus_sys as sys;
use std::os::raw::c_int;
use std::ptr::NonNull;

/// A libopus error code with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// libopus's (negative) error code, or 0 for a check made on our side.
    pub code: i32,
    /// What went wrong.
    pub text: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Error {}

fn opus_error(code: c_int) -> Error {
    // SAFETY: opus_strerror returns a pointer to a static NUL-terminated string for any
    // code (an "unknown error" text for codes it does not know).
    let text = unsafe {
        let p = sys::opus_strerror(code);
        if p.is_null() {
            format!("libopus error {code}")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Error { code, text }
}

fn ours(text: impl Into<String>) -> Error {
    Error {
        code: 0,
        text: text.into(),
    }
}

/// How the coded streams are laid out: what a decoder needs to know (RFC 7845 §5.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLayout {
    /// Number of Opus streams in each packet.
    pub streams: u8,
    /// How many of them are coupled (stereo) streams; they come first.
    pub coupled: u8,
    /// For each input/output channel, the coded channel it is (255: silent).
    pub mapping: Vec<u8>,
}

/// An Opus multistream encoder (`OpusMSEncoder`).
#[derive(Debug)]
pub struct MsEncoder {
    st: NonNull<sys::OpusMSEncoder>,
    channels: usize,
    layout: StreamLayout,
}

// SAFETY: the state is owned by this value alone and used only through `&mut self`; libopus
// state has no thread affinity.
unsafe impl Send for MsEncoder {}

impl MsEncoder {
    /// Creates a surround encoder (`opus_multistream_surround_encoder_create`) for `channels`
    /// (1–255) interleaved channels at `rate` Hz, with RFC 7845 `mapping_family` (0: mono or
    /// stereo, 1: Vorbis order for 1–8 channels with coupled pairs and an LFE stream, 255:
    /// one uncoupled stream a channel). `application` is an `OPUS_APPLICATION_*` value. The
    /// input's channels must be in the family's order.
    pub fn surround(
        rate: u32,
        channels: u8,
        mapping_family: u8,
        application: i32,
    ) -> Result<MsEncoder, Error> {
        if channels == 0 {
            return Err(ours("no channels"));
        }
        let rate = i32::try_from(rate).map_err(|_| ours("rate out of range"))?;
        let mut streams: c_int = 0;
        let mut coupled: c_int = 0;
        let mut mapping = vec![0u8; usize::from(channels)];
        let mut err: c_int = 0;
        // SAFETY: `mapping` has room for `channels` entries, as the API requires; the other
        // out-parameters are live locals.
        let st = unsafe {
            sys::opus_multistream_surround_encoder_create(
                rate,
                c_int::from(channels),
                c_int::from(mapping_family),
                &mut streams,
                &mut coupled,
                mapping.as_mut_ptr(),
                application,
                &mut err,
            )
        };
        let st = match NonNull::new(st) {
            Some(st) if err == sys::OPUS_OK => st,
            Some(st) => {
                // SAFETY: created just above, not yet owned by a wrapper.
                unsafe { sys::opus_multistream_encoder_destroy(st.as_ptr()) };
                return Err(opus_error(err));
            }
            None => return Err(opus_error(if err == 0 { -7 } else { err })),
        };
        // From here on `enc` owns the state and frees it on every path.
        let enc = MsEncoder {
            st,
            channels: usize::from(channels),
            layout: StreamLayout {
                streams: u8::try_from(streams).unwrap_or(u8::MAX),
                coupled: u8::try_from(coupled).unwrap_or(u8::MAX),
                mapping,
            },
        };
        Ok(enc)
    }

    /// The stream layout libopus chose (what the decoder must be created with).
    pub fn layout(&self) -> &StreamLayout {
        &self.layout
    }

    /// Sets an encoder parameter: `request` is an `OPUS_SET_*_REQUEST` that takes one
    /// `opus_int32` (bitrate, complexity, bandwidth, signal, VBR, …). It applies to every
    /// stream; `OPUS_SET_BITRATE` sets the total over all streams.
    pub fn set(&mut self, request: i32, value: i32) -> Result<(), Error> {
        // SAFETY: a live state; one opus_int32 argument (see the module's safety notes).
        let r = unsafe { sys::opus_multistream_encoder_ctl(self.st.as_ptr(), request, value) };
        if r == sys::OPUS_OK {
            Ok(())
        } else {
            Err(opus_error(r))
        }
    }

    /// Encodes one frame: `pcm` holds `frame × channels` interleaved samples (a frame of
    /// 2.5–120 ms at the encoder's rate). Returns the packet's length in `out`.
    pub fn encode_float(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, Error> {
        if pcm.is_empty() || pcm.len() % self.channels != 0 {
            return Err(ours(format!(
                "{} samples are not whole frames of {} channels",
                pcm.len(),
                self.channels
            )));
        }
        let frame =
            c_int::try_from(pcm.len() / self.channels).map_err(|_| ours("frame too long"))?;
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: `pcm` holds exactly `frame × channels` samples; libopus writes at most
        // `max` bytes into `out`, which is that long.
        let n = unsafe {
            sys::opus_multistream_encode_float(
                self.st.as_ptr(),
                pcm.as_ptr(),
                frame,
                out.as_mut_ptr(),
                max,
            )
        };
        usize::try_from(n).map_err(|_| opus_error(n))
    }
}

impl Drop for MsEncoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_multistream_surround_encoder_create, freed only here.
        unsafe { sys::opus_multistream_encoder_destroy(self.st.as_ptr()) }
    }
}

/// The stream layout libopus uses for `channels` with RFC 7845 `mapping_family` (made by
/// creating, and dropping, an encoder): what a decoder needs when the encoder is far away.
pub fn surround_layout(channels: u8, mapping_family: u8) -> Result<StreamLayout, Error> {
    MsEncoder::surround(
        48_000,
        channels,
        mapping_family,
        sys::OPUS_APPLICATION_AUDIO,
    )
    .map(|e| e.layout.clone())
}

/// An Opus multistream decoder (`OpusMSDecoder`).
#[derive(Debug)]
pub struct MsDecoder {
    st: NonNull<sys::OpusMSDecoder>,
    channels: usize,
    /// What it was made with, to make a twin ([`MsDecoder::duplicate`]).
    rate: u32,
    layout: StreamLayout,
}

// SAFETY: as for `MsEncoder`.
unsafe impl Send for MsDecoder {}

impl MsDecoder {
    /// Creates a decoder for `channels` output channels at `rate` Hz from packets laid out as
    /// `layout` says (`layout.mapping` must have `channels` entries; libopus checks the rest).
    pub fn new(rate: u32, channels: u8, layout: &StreamLayout) -> Result<MsDecoder, Error> {
        if channels == 0 || layout.mapping.len() != usize::from(channels) {
            return Err(ours(format!(
                "a mapping of {} entries for {channels} channels",
                layout.mapping.len()
            )));
        }
        let rate_hz = rate;
        let rate = i32::try_from(rate).map_err(|_| ours("rate out of range"))?;
        let mut err: c_int = 0;
        // SAFETY: `mapping` holds `channels` entries, as the API requires.
        let st = unsafe {
            sys::opus_multistream_decoder_create(
                rate,
                c_int::from(channels),
                c_int::from(layout.streams),
                c_int::from(layout.coupled),
                layout.mapping.as_ptr(),
                &mut err,
            )
        };
        match NonNull::new(st) {
            Some(st) if err == sys::OPUS_OK => Ok(MsDecoder {
                st,
                channels: usize::from(channels),
                rate: rate_hz,
                layout: layout.clone(),
            }),
            Some(st) => {
                // SAFETY: created just above, not owned by anything else.
                unsafe { sys::opus_multistream_decoder_destroy(st.as_ptr()) };
                Err(opus_error(err))
            }
            None => Err(opus_error(if err == 0 { -7 } else { err })),
        }
    }

    /// Decodes `packet` into `out` (interleaved; its length decides the most samples per
    /// channel that may come out, and must be a whole number of frames). `None` conceals a
    /// lost packet (PLC) of `out`'s duration; `fec` recovers the packet before `packet` from
    /// its in-band FEC data. Returns the samples per channel written.
    pub fn decode_float(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut [f32],
        fec: bool,
    ) -> Result<usize, Error> {
        if out.is_empty() || out.len() % self.channels != 0 {
            return Err(ours(format!(
                "an output of {} samples is not whole frames of {} channels",
                out.len(),
                self.channels
            )));
        }
        let frame =
            c_int::try_from(out.len() / self.channels).map_err(|_| ours("output too long"))?;
        let (data, len) = match packet {
            Some(p) => (
                p.as_ptr(),
                i32::try_from(p.len()).map_err(|_| ours("packet too long"))?,
            ),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `data` is null (PLC) or points at `len` readable bytes; libopus writes at
        // most `frame × channels` samples into `out`, which is exactly that long.
        let n = unsafe {
            sys::opus_multistream_decode_float(
                self.st.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        };
        usize::try_from(n).map_err(|_| opus_error(n))
    }
}

impl MsDecoder {
    /// A decoder in exactly this one's state: what it conceals or decodes next, the twin
    /// would too, and each goes on alone. (libopus keeps a decoder's whole state, its
    /// streams' decoders included, in one block without pointers, so a byte copy of the
    /// block is a working decoder: opus_multistream_decoder.c lays the streams out by
    /// offset.)
    pub fn duplicate(&self) -> Result<MsDecoder, Error> {
        let twin = MsDecoder::new(self.rate, self.channels as u8, &self.layout)?;
        // SAFETY: both states were made by opus_multistream_decoder_create with the same
        // streams and coupled streams, so each block is `size` bytes long; they are two
        // allocations, so they do not overlap; `twin` is not in use yet.
        unsafe {
            let size = sys::opus_multistream_decoder_get_size(
                c_int::from(self.layout.streams),
                c_int::from(self.layout.coupled),
            );
            let size = usize::try_from(size).map_err(|_| opus_error(size))?;
            std::ptr::copy_nonoverlapping(
                self.st.as_ptr() as *const u8,
                twin.st.as_ptr() as *mut u8,
                size,
            );
        }
        Ok(twin)
    }
}

impl Drop for MsDecoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_multistream_decoder_create, freed only here.
        unsafe { sys::opus_multistream_decoder_destroy(self.st.as_ptr()) }
    }
}

/// `OPUS_APPLICATION_*` values, re-exported for callers of [`MsEncoder::surround`].
pub use sys::{
    OPUS_APPLICATION_AUDIO, OPUS_APPLICATION_RESTRICTED_LOWDELAY, OPUS_APPLICATION_VOIP,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_one_layouts_are_rfc_7845() {
        // RFC 7845 §5.1.1.2: 5.1 is four streams, two coupled (L/R, rear L/R), C and LFE alone.
        let l = surround_layout(6, 1).unwrap();
        assert_eq!((l.streams, l.coupled), (4, 2));
        assert_eq!(l.mapping, [0, 4, 1, 2, 3, 5]);
        // 7.1: five streams, three coupled (front, side, rear pairs).
        let l = surround_layout(8, 1).unwrap();
        assert_eq!((l.streams, l.coupled), (5, 3));
        assert_eq!(l.mapping, [0, 6, 1, 2, 3, 4, 5, 7]);
        let l = surround_layout(4, 255).unwrap();
        assert_eq!((l.streams, l.coupled), (4, 0));
        assert_eq!(l.mapping, [0, 1, 2, 3]);
        assert!(surround_layout(9, 1).is_err());
        assert!(surround_layout(0, 1).is_err());
    }

    #[test]
    fn round_trip_and_bad_input() {
        let mut e = MsEncoder::surround(48_000, 6, 1, OPUS_APPLICATION_AUDIO).unwrap();
        e.set(4002, 192_000).unwrap(); // OPUS_SET_BITRATE
        assert!(e.set(4002, -5).is_err());
        let pcm = vec![0.1f32; 960 * 6];
        let mut pkt = vec![0u8; 4000];
        let n = e.encode_float(&pcm, &mut pkt).unwrap();
        assert!(n > 0);
        assert!(e.encode_float(&pcm[..7], &mut pkt).is_err());
        let mut d = MsDecoder::new(48_000, 6, e.layout()).unwrap();
        let mut out = vec![0f32; 960 * 6];
        assert_eq!(
            d.decode_float(Some(&pkt[..n]), &mut out, false).unwrap(),
            960
        );
        assert_eq!(d.decode_float(None, &mut out, false).unwrap(), 960);
        assert!(d
            .decode_float(Some(&[0xff, 0xff, 0xff]), &mut out, false)
            .is_err());
        assert!(d
            .decode_float(Some(&pkt[..n]), &mut out[..5], false)
            .is_err());
        let bad = StreamLayout {
            streams: 4,
            coupled: 5,
            mapping: vec![0; 6],
        };
        assert!(MsDecoder::new(48_000, 6, &bad).is_err());
    }
}
