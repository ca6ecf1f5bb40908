//! Sample specifications and channel maps, parsed the way PulseAudio's own modules do, but
//! with a message per bad argument.
use crate::sys;

/// A sample format, rate and channel count (`pa_sample_spec`).
#[derive(Clone, Copy, Debug)]
pub struct SampleSpec {
    pub(crate) raw: sys::pa_sample_spec,
}

impl SampleSpec {
    /// `format` by PulseAudio's name (`s16le`, `float32le`, …).
    pub fn new(format: &str, rate: u32, channels: u8) -> Result<SampleSpec, String> {
        let c = crate::cstring(format);
        // SAFETY: valid C string.
        let f = unsafe { sys::pa_parse_sample_format(c.as_ptr()) };
        if f == sys::PA_SAMPLE_INVALID {
            return Err(format!(
                "format: {format:?} is not a sample format; accepted: u8, s16le, s16be, s24le, s24be, \
                 s24-32le, s24-32be, s32le, s32be, float32le, float32be (and the ne/re forms)"
            ));
        }
        let raw = sys::pa_sample_spec {
            format: f,
            rate,
            channels,
        };
        // SAFETY: plain struct.
        if unsafe { sys::pa_sample_spec_valid(&raw) } == 0 {
            // The limits of the daemon built against: PA_RATE_MAX is 384000 in PulseAudio 16.1
            // and 768000 in 17.0.
            return Err(format!(
                "sample spec {format} {rate} Hz {channels} channels is not valid \
                 (rate 1..{} Hz, channels 1..{})",
                sys::PA_RATE_MAX,
                sys::PA_CHANNELS_MAX
            ));
        }
        Ok(SampleSpec { raw })
    }

    pub fn rate(&self) -> u32 {
        self.raw.rate
    }

    pub fn channels(&self) -> u8 {
        self.raw.channels
    }

    /// The format's PulseAudio name (`s16le`, …).
    pub fn format_name(&self) -> String {
        // SAFETY: returns a static string for a valid format.
        unsafe { crate::from_cstr(sys::pa_sample_format_to_string(self.raw.format)) }
            .unwrap_or_default()
    }

    /// Bytes per frame (all channels).
    pub fn frame_size(&self) -> usize {
        // SAFETY: plain struct.
        unsafe { sys::pa_frame_size(&self.raw) }
    }

    pub fn usec_to_bytes(&self, usec: u64) -> usize {
        // SAFETY: plain struct.
        unsafe { sys::pa_usec_to_bytes(usec, &self.raw) }
    }

    pub fn bytes_to_usec(&self, bytes: usize) -> u64 {
        // SAFETY: plain struct.
        unsafe { sys::pa_bytes_to_usec(bytes as u64, &self.raw) }
    }
}

/// A channel map (`pa_channel_map`).
#[derive(Clone, Copy)]
pub struct ChannelMap {
    pub(crate) raw: sys::pa_channel_map,
}

impl ChannelMap {
    /// PulseAudio's default map for `channels` (e.g. front-left,front-right for 2).
    pub fn default_for(channels: u8) -> Option<ChannelMap> {
        let mut raw = sys::pa_channel_map::default();
        // SAFETY: raw is writable.
        let p = unsafe {
            sys::pa_channel_map_init_extend(&mut raw, channels as u32, sys::PA_CHANNEL_MAP_DEFAULT)
        };
        (!p.is_null()).then_some(ChannelMap { raw })
    }

    /// Parses `front-left,front-right`, `stereo`, `mono`, … and checks it has `channels` entries.
    pub fn parse(s: &str, channels: u8) -> Result<ChannelMap, String> {
        let mut raw = sys::pa_channel_map::default();
        let c = crate::cstring(s);
        // SAFETY: raw writable, valid C string.
        let p = unsafe { sys::pa_channel_map_parse(&mut raw, c.as_ptr()) };
        if p.is_null() {
            return Err(format!(
                "channel_map: {s:?} is not a channel map (e.g. front-left,front-right or stereo)"
            ));
        }
        if raw.channels != channels {
            return Err(format!(
                "channel_map: {s:?} has {} channels but channels={channels}",
                raw.channels
            ));
        }
        Ok(ChannelMap { raw })
    }

    pub fn channels(&self) -> u8 {
        self.raw.channels
    }

    /// The textual form, e.g. `front-left,front-right`.
    pub fn to_text(&self) -> String {
        let mut buf = [0 as libc::c_char; sys::PA_CHANNEL_MAP_SNPRINT_MAX as usize];
        // SAFETY: buf is writable for its length.
        let p = unsafe { sys::pa_channel_map_snprint(buf.as_mut_ptr(), buf.len(), &self.raw) };
        // SAFETY: p is NULL or points into buf, NUL-terminated.
        unsafe { crate::from_cstr(p) }.unwrap_or_default()
    }
}
