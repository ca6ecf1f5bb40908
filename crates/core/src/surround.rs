//! Surround through Opus: which multistream layout carries a channel map, in what channel
//! order, how the handshake announces it, and the default bitrate for a channel count.
//!
//! Mono and stereo stay single-stream Opus (RFC 7587, unchanged). Three to eight channels
//! are Opus multistream (libopus's `opus_multistream_*`, through the binding crate
//! `opus-tunnel-opus-ms`):
//! - when the channel map holds exactly the positions of an RFC 7845 mapping family 1 layout
//!   (§5.1.1.2: L C R; FL FR RL RR; FL C FR RL RR; 5.1; 6.1; 7.1 — the rear pair of the 4, 5
//!   and 6 channel layouts may be the side pair instead), the channels are reordered into the
//!   Vorbis order before the encoder and back after the decoder, so the coupled pairs are real
//!   left/right pairs and the LFE channel is coded as LFE;
//! - any other map (e.g. PulseAudio's 3-channel default `front-left,front-right,lfe`, or
//!   `aux0,aux1,…`) is carried as mapping family 255: one uncoupled stream a channel, in the
//!   map's own order. Less efficient, never misrouted.
//!
//! Both ends compute the layout from the handshake's `Channels` and `Channel-Map`; the sender
//! (play) or the requester (record) names the family in the [`HEADER`] header, and a receiver
//! refuses (415) a multistream hello without it or with another family. A receiver from before
//! surround refuses Opus with more than two channels (415, "with compression=opus 1 or 2
//! channels") on its own.

use crate::params::Compression;
use std::collections::BTreeMap;

/// Handshake header naming the RFC 7845 channel mapping family of a >2-channel Opus stream.
pub const HEADER: &str = "Opus-Mapping-Family";

/// Default bitrate of mono and stereo Opus, bit/s.
pub const DEFAULT_BITRATE_STEREO: i32 = 64_000;
/// Default bitrate per channel of 3–8 channel Opus, bit/s (64 kbit/s per coupled pair,
/// 32 kbit/s per single stream).
pub const DEFAULT_BITRATE_PER_CHANNEL: i32 = 32_000;

/// The default `compression.bitrate` for `channels` when the user gives none: 64 kbit/s for
/// mono and stereo, 32 kbit/s a channel for 3–8 (5.1: 192 kbit/s, 7.1: 256 kbit/s). `base`
/// is the module's default for 1–2 channels (64000, or 32000 for a voice source).
pub fn default_bitrate(channels: u8, base: i32) -> i32 {
    if channels <= 2 {
        base
    } else {
        DEFAULT_BITRATE_PER_CHANNEL * i32::from(channels)
    }
}

/// How the channels of a stream are carried in Opus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// RFC 7845 channel mapping family: 0 (mono/stereo, single stream), 1 (Vorbis order
    /// surround), 255 (one uncoupled stream per channel).
    pub family: u8,
    /// For each channel in the family's order, the index of that channel in the stream's own
    /// (channel map) order.
    pub order: Vec<usize>,
}

impl Layout {
    /// True when the codec order is the stream order.
    pub fn is_identity(&self) -> bool {
        self.order.iter().enumerate().all(|(i, &j)| i == j)
    }

    /// Interleaved `pcm` (stream order) → `out` (family order). `pcm` must be whole frames.
    pub fn to_codec(&self, pcm: &[f32], out: &mut Vec<f32>) {
        let ch = self.order.len().max(1);
        out.clear();
        out.reserve(pcm.len());
        for frame in pcm.chunks_exact(ch) {
            out.extend(self.order.iter().map(|&j| frame[j]));
        }
    }

    /// Interleaved `coded` (family order) → appended to `out` in stream order.
    pub fn from_codec(&self, coded: &[f32], out: &mut Vec<f32>) {
        let ch = self.order.len().max(1);
        let start = out.len();
        out.resize(start + coded.len() / ch * ch, 0.0);
        for (frame, dst) in coded
            .chunks_exact(ch)
            .zip(out[start..].chunks_exact_mut(ch))
        {
            for (k, &j) in self.order.iter().enumerate() {
                dst[j] = frame[k];
            }
        }
    }
}

/// A position name, PulseAudio's spelling, with its aliases folded.
fn canonical(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "left" => "front-left".into(),
        "right" => "front-right".into(),
        "center" => "front-center".into(),
        "subwoofer" => "lfe".into(),
        _ => n,
    }
}

/// RFC 7845 §5.1.1.2 (Vorbis channel order) for 3–8 channels: each slot's accepted positions.
fn vorbis_order(channels: u8) -> Option<&'static [&'static [&'static str]]> {
    const FL: &[&str] = &["front-left"];
    const FC: &[&str] = &["front-center"];
    const FR: &[&str] = &["front-right"];
    const SURL: &[&str] = &["rear-left", "side-left"];
    const SURR: &[&str] = &["rear-right", "side-right"];
    const SL: &[&str] = &["side-left"];
    const SR: &[&str] = &["side-right"];
    const RL: &[&str] = &["rear-left"];
    const RR: &[&str] = &["rear-right"];
    const RC: &[&str] = &["rear-center"];
    const LFE: &[&str] = &["lfe"];
    Some(match channels {
        3 => &[FL, FC, FR],
        4 => &[FL, FR, SURL, SURR],
        5 => &[FL, FC, FR, SURL, SURR],
        6 => &[FL, FC, FR, SURL, SURR, LFE],
        7 => &[FL, FC, FR, SL, SR, RC, LFE],
        8 => &[FL, FC, FR, SL, SR, RL, RR, LFE],
        _ => return None,
    })
}

/// The layout that carries `channels` channels whose positions are `map` (PulseAudio's text
/// form, e.g. `front-left,front-right,rear-left,rear-right,front-center,lfe`).
pub fn layout(channels: u8, map: &str) -> Layout {
    let n = usize::from(channels);
    let identity = |family| Layout {
        family,
        order: (0..n).collect(),
    };
    if channels <= 2 {
        return identity(0);
    }
    let names: Vec<String> = map.split(',').map(canonical).collect();
    let Some(slots) = vorbis_order(channels) else {
        return identity(255);
    };
    if names.len() != n {
        return identity(255);
    }
    let mut used = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for accepted in slots {
        let found = accepted.iter().find_map(|want| {
            names
                .iter()
                .enumerate()
                .position(|(j, name)| !used[j] && name == want)
        });
        match found {
            Some(j) => {
                used[j] = true;
                order.push(j);
            }
            None => return identity(255),
        }
    }
    Layout { family: 1, order }
}

/// The [`HEADER`] value a hello carries for this stream, `None` for mono, stereo and PCM.
pub fn hello_field(codec: Compression, channels: u8, map: &str) -> Option<String> {
    (codec == Compression::Opus && channels > 2).then(|| layout(channels, map).family.to_string())
}

/// The hello's header fields that announce the stream's layout: [`HEADER`] for 3–8 channel
/// Opus, none otherwise (the wire of mono, stereo and PCM is unchanged).
pub fn hello_fields(codec: Compression, channels: u8, map: &str) -> BTreeMap<String, String> {
    hello_field(codec, channels, map)
        .map(|v| (HEADER.to_string(), v))
        .into_iter()
        .collect()
}

/// Checks a hello's multistream announcement (the receiver's side): Opus with more than two
/// channels needs the [`HEADER`] header, naming the family this end derives from the map.
/// The error is the reason of a 415.
pub fn check_hello(
    codec: Compression,
    channels: u8,
    map: &str,
    fields: &BTreeMap<String, String>,
) -> Result<(), String> {
    let Some(want) = hello_field(codec, channels, map) else {
        return Ok(());
    };
    let given = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HEADER))
        .map(|(_, v)| v.trim());
    match given {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(format!(
            "{HEADER}: {v:?}: this end carries {channels}-channel map {map:?} as Opus mapping family {want}"
        )),
        None => Err(format!(
            "Opus with {channels} channels needs multistream ({HEADER} header); the sender did not announce it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S51: &str = "front-left,front-right,rear-left,rear-right,front-center,lfe";
    const S71: &str =
        "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right";

    #[test]
    fn pulseaudio_surround_maps_to_vorbis_order() {
        // Vorbis 5.1: FL C FR RL RR LFE.
        let l = layout(6, S51);
        assert_eq!(l.family, 1);
        assert_eq!(l.order, [0, 4, 1, 2, 3, 5]);
        // Vorbis 7.1: FL C FR SL SR RL RR LFE.
        let l = layout(8, S71);
        assert_eq!(l.family, 1);
        assert_eq!(l.order, [0, 4, 1, 6, 7, 2, 3, 5]);
        // PipeWire's order for 5.1 (FL FR FC LFE RL RR) and the side variant.
        let l = layout(
            6,
            "front-left,front-right,front-center,lfe,side-left,side-right",
        );
        assert_eq!((l.family, l.order.as_slice()), (1, &[0, 2, 1, 4, 5, 3][..]));
        // 3, 4, 5 channels; aliases.
        assert_eq!(layout(3, "left,center,right").order, [0, 1, 2]);
        assert_eq!(
            layout(3, "front-left,front-right,front-center").order,
            [0, 2, 1]
        );
        assert_eq!(
            layout(4, "front-left,front-right,rear-left,rear-right").order,
            [0, 1, 2, 3]
        );
        let l = layout(
            5,
            "front-left,front-right,rear-left,rear-right,front-center",
        );
        assert_eq!((l.family, l.order.as_slice()), (1, &[0, 4, 1, 2, 3][..]));
        let l = layout(
            7,
            "front-left,front-right,front-center,lfe,rear-center,side-left,side-right",
        );
        assert_eq!(
            (l.family, l.order.as_slice()),
            (1, &[0, 2, 1, 5, 6, 4, 3][..])
        );
    }

    #[test]
    fn other_maps_are_one_stream_a_channel() {
        for (ch, map) in [
            (3, "front-left,front-right,lfe"),
            (4, "aux0,aux1,aux2,aux3"),
            (
                6,
                "front-left,front-right,rear-left,rear-right,front-center,front-center",
            ),
            (6, ""),
            (8, S51),
        ] {
            let l = layout(ch, map);
            assert_eq!(l.family, 255, "{map}");
            assert!(l.is_identity());
        }
        assert_eq!(layout(2, "front-left,front-right").family, 0);
        assert_eq!(layout(1, "mono").family, 0);
    }

    #[test]
    fn reorder_round_trip() {
        let l = layout(6, S51);
        let pcm: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut coded = Vec::new();
        l.to_codec(&pcm, &mut coded);
        // Frame 0 of stream order 0..6 in Vorbis order: FL(0) C(4) FR(1) RL(2) RR(3) LFE(5).
        assert_eq!(&coded[..6], &[0.0, 4.0, 1.0, 2.0, 3.0, 5.0]);
        let mut back = vec![-1.0];
        l.from_codec(&coded, &mut back);
        assert_eq!(&back[1..], &pcm[..]);
    }

    #[test]
    fn negotiation() {
        let mut f = BTreeMap::new();
        assert!(check_hello(Compression::Opus, 2, "front-left,front-right", &f).is_ok());
        assert!(check_hello(Compression::None, 6, S51, &f).is_ok());
        let e = check_hello(Compression::Opus, 6, S51, &f).unwrap_err();
        assert!(e.contains("needs multistream"), "{e}");
        assert_eq!(hello_field(Compression::Opus, 6, S51).as_deref(), Some("1"));
        f.insert("opus-mapping-family".into(), "1".into());
        assert!(check_hello(Compression::Opus, 6, S51, &f).is_ok());
        assert!(check_hello(Compression::Opus, 6, "aux0,aux1,aux2,aux3,aux4,aux5", &f).is_err());
    }

    #[test]
    fn bitrate_table() {
        assert_eq!(default_bitrate(1, 64_000), 64_000);
        assert_eq!(default_bitrate(2, 64_000), 64_000);
        assert_eq!(default_bitrate(1, 32_000), 32_000);
        assert_eq!(default_bitrate(3, 64_000), 96_000);
        assert_eq!(default_bitrate(6, 64_000), 192_000);
        assert_eq!(default_bitrate(8, 32_000), 256_000);
    }
}
