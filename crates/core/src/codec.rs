//! Audio codec: Opus (through `audiopus`, linked to the system libopus) or L16 PCM.
//!
//! Both directions work on interleaved `f32` PCM at the stream's own rate and channel
//! count ([`StreamFormat`]). One call to [`Encoder::encode`] takes exactly one frame
//! ([`Encoder::frame_samples`] samples per channel) and yields one RTP payload.
//!
//! RTP mapping: Opus uses payload type 96 and a 48 kHz RTP clock whatever the stream rate
//! (RFC 7587); L16 (big-endian signed 16 bit, RFC 3551) uses payload type 97 and the
//! stream rate as RTP clock.

use crate::params::{Application, Compression, MaxBandwidth, OpusKnobs, ParamError, Signal};
use crate::surround::{self, Layout};
use audiopus::coder::Encoder as OpusEncoder;
use audiopus::ffi;
use opus_tunnel_opus_ms::{MsDecoder, MsEncoder};

/// RTP payload type used for Opus.
pub const PT_OPUS: u8 = 96;
/// RTP payload type used for L16.
pub const PT_L16: u8 = 97;
/// RTP clock rate of Opus (RFC 7587), whatever the sample rate.
pub const OPUS_RTP_CLOCK: u32 = 48_000;
/// Largest RTP payload that fits an RFC 4571 frame (65535 − 12-byte RTP header).
pub const MAX_PAYLOAD: usize = 65_535 - 12;
/// Sample rates Opus accepts.
pub const OPUS_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];

/// Largest Opus packet the encoder is allowed to produce, bytes (mono and stereo; a
/// multistream packet may take [`MAX_OPUS_PACKET_PER_CHANNEL`] a channel).
const MAX_OPUS_PACKET: usize = 4_000;
/// Largest multistream Opus packet per channel, bytes.
const MAX_OPUS_PACKET_PER_CHANNEL: usize = 2_000;

/// Sample rate and channel count of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamFormat {
    /// Sample rate in Hz.
    pub rate: u32,
    /// Number of interleaved channels.
    pub channels: u8,
}

/// Checks that `fmt` can be carried with `compression`.
///
/// Opus: rate one of 8000, 12000, 16000, 24000, 48000 and 1–8 channels (3–8: multistream,
/// see [`crate::surround`]).
/// None (L16): rate 1000–384000 and 1–8 channels. The error names the key `rate` or
/// `channels`.
pub fn validate(compression: Compression, fmt: &StreamFormat) -> Result<(), ParamError> {
    match compression {
        Compression::Opus => {
            if !OPUS_RATES.contains(&fmt.rate) {
                return Err(ParamError::new(
                    "rate",
                    fmt.rate.to_string(),
                    "with compression=opus one of 8000, 12000, 16000, 24000, 48000 Hz; \
                     use compression=none for other rates",
                ));
            }
            if !(1..=8).contains(&fmt.channels) {
                return Err(ParamError::new(
                    "channels",
                    fmt.channels.to_string(),
                    "with compression=opus 1 to 8 channels",
                ));
            }
        }
        Compression::None => {
            if !(1_000..=384_000).contains(&fmt.rate) {
                return Err(ParamError::new(
                    "rate",
                    fmt.rate.to_string(),
                    "with compression=none an integer from 1000 to 384000 Hz",
                ));
            }
            if !(1..=8).contains(&fmt.channels) {
                return Err(ParamError::new(
                    "channels",
                    fmt.channels.to_string(),
                    "with compression=none 1 to 8 channels",
                ));
            }
        }
    }
    Ok(())
}

/// Errors of the encoder and decoder.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A format or knob value is out of range.
    #[error("{0}")]
    Param(#[from] ParamError),
    /// libopus refused a call.
    #[error("opus {what}: {detail}")]
    Opus {
        /// What was being done (e.g. "decode", "set bitrate").
        what: &'static str,
        /// libopus' error text.
        detail: String,
    },
    /// `encode` got the wrong number of samples.
    #[error("expected {expected} interleaved samples for one frame, got {got}")]
    FrameLength {
        /// Samples expected (frame_samples × channels).
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// An L16 payload whose length is not a whole number of frames of 16-bit samples.
    #[error("L16 payload of {len} bytes is not a multiple of {unit} bytes (2 × channels)")]
    L16Length {
        /// Payload length.
        len: usize,
        /// Bytes per sample frame.
        unit: usize,
    },
    /// An empty payload.
    #[error("empty payload")]
    EmptyPayload,
    /// One frame of L16 would not fit an RTP packet on the wire.
    #[error("an L16 frame of {bytes} bytes exceeds the {MAX_PAYLOAD}-byte payload limit; choose a shorter compression.frame_size")]
    FrameTooLarge {
        /// Bytes one frame would need.
        bytes: usize,
    },
    /// `conceal`/`decode_fec` was asked for an unusable number of samples.
    #[error("cannot conceal {samples} samples per channel: {reason}")]
    ConcealLength {
        /// Samples per channel asked for.
        samples: usize,
        /// Why not.
        reason: String,
    },
}

fn opus_err(what: &'static str) -> impl Fn(audiopus::Error) -> CodecError {
    move |e| CodecError::Opus {
        what,
        detail: e.to_string(),
    }
}

fn opus_rate(rate: u32) -> Result<audiopus::SampleRate, CodecError> {
    Ok(match rate {
        8_000 => audiopus::SampleRate::Hz8000,
        12_000 => audiopus::SampleRate::Hz12000,
        16_000 => audiopus::SampleRate::Hz16000,
        24_000 => audiopus::SampleRate::Hz24000,
        48_000 => audiopus::SampleRate::Hz48000,
        _ => validate(Compression::Opus, &StreamFormat { rate, channels: 1 })
            .map(|_| audiopus::SampleRate::Hz48000)?,
    })
}

fn ms_err(what: &'static str) -> impl Fn(opus_tunnel_opus_ms::Error) -> CodecError {
    move |e| CodecError::Opus {
        what,
        detail: e.text,
    }
}

fn ms_application(a: Application) -> i32 {
    match a {
        Application::Voip => opus_tunnel_opus_ms::OPUS_APPLICATION_VOIP,
        Application::Audio => opus_tunnel_opus_ms::OPUS_APPLICATION_AUDIO,
        Application::LowDelay => opus_tunnel_opus_ms::OPUS_APPLICATION_RESTRICTED_LOWDELAY,
    }
}

/// A libopus encoder: single-stream (mono, stereo) or multistream (3–8 channels).
enum OpusEnc {
    Single(OpusEncoder),
    Multi(MsEncoder),
}

impl OpusEnc {
    fn set(&mut self, req: i32, val: i32, what: &'static str) -> Result<(), CodecError> {
        match self {
            OpusEnc::Single(e) => e.set_encoder_ctl_request(req, val).map_err(opus_err(what)),
            OpusEnc::Multi(e) => e.set(req, val).map_err(ms_err(what)),
        }
    }
}

/// A libopus decoder: single-stream (mono, stereo) or multistream (surround). Both are
/// libopus's multistream decoder (one stream for mono and stereo: the same decoding), which
/// can be duplicated for concealment ([`Decoder::conceal`]).
enum OpusDec {
    Single(MsDecoder),
    Multi(MsDecoder),
}

impl OpusDec {
    fn duplicate(&self) -> Result<OpusDec, opus_tunnel_opus_ms::Error> {
        Ok(match self {
            OpusDec::Single(d) => OpusDec::Single(d.duplicate()?),
            OpusDec::Multi(d) => OpusDec::Multi(d.duplicate()?),
        })
    }
}

fn opus_channels(ch: u8) -> audiopus::Channels {
    if ch == 1 {
        audiopus::Channels::Mono
    } else {
        audiopus::Channels::Stereo
    }
}

fn opus_application(a: Application) -> audiopus::Application {
    match a {
        Application::Voip => audiopus::Application::Voip,
        Application::Audio => audiopus::Application::Audio,
        Application::LowDelay => audiopus::Application::LowDelay,
    }
}

/// Encodes interleaved `f32` frames into RTP payloads.
pub struct Encoder {
    compression: Compression,
    fmt: StreamFormat,
    knobs: OpusKnobs,
    layout: Layout,
    opus: Option<OpusEnc>,
    scratch: Vec<f32>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compression", &self.compression)
            .field("fmt", &self.fmt)
            .field("knobs", &self.knobs)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Encoder {
    /// Creates an encoder. Checks `fmt` with [`validate`] and the knobs with
    /// [`OpusKnobs::validate`]; for `Compression::None` only `frame_size` is used, and the
    /// frame must fit one RTP packet ([`MAX_PAYLOAD`] bytes). More than two channels are
    /// carried as if their positions were unknown (one stream a channel); a stream with a
    /// channel map uses [`with_map`](Self::with_map).
    pub fn new(
        compression: Compression,
        fmt: StreamFormat,
        knobs: &OpusKnobs,
    ) -> Result<Encoder, CodecError> {
        Self::with_map(compression, fmt, knobs, "")
    }

    /// As [`new`](Self::new), for a stream whose channel positions are `channel_map`
    /// (PulseAudio's text form): 3–8 channel Opus is coded in the layout
    /// [`surround::layout`] gives, the input reordered to it. The decoder must be made with
    /// the same map ([`Decoder::with_map`]).
    pub fn with_map(
        compression: Compression,
        fmt: StreamFormat,
        knobs: &OpusKnobs,
        channel_map: &str,
    ) -> Result<Encoder, CodecError> {
        validate(compression, &fmt)?;
        knobs.validate()?;
        let layout = match compression {
            Compression::Opus => surround::layout(fmt.channels, channel_map),
            Compression::None => surround::layout(0, ""),
        };
        let mut enc = Encoder {
            compression,
            fmt,
            knobs: *knobs,
            layout,
            opus: None,
            scratch: Vec::new(),
        };
        match compression {
            Compression::Opus => {
                let mut e = Self::make_opus(fmt, &enc.layout, knobs.application)?;
                Self::tune(&mut e, knobs)?;
                enc.opus = Some(e);
            }
            Compression::None => enc.check_l16_size(knobs)?,
        }
        Ok(enc)
    }

    fn check_l16_size(&self, knobs: &OpusKnobs) -> Result<(), CodecError> {
        let bytes = knobs.frame_size.samples(self.fmt.rate) * usize::from(self.fmt.channels) * 2;
        if bytes > MAX_PAYLOAD {
            return Err(CodecError::FrameTooLarge { bytes });
        }
        Ok(())
    }

    fn make_opus(
        fmt: StreamFormat,
        layout: &Layout,
        app: Application,
    ) -> Result<OpusEnc, CodecError> {
        if layout.family == 0 {
            return OpusEncoder::new(
                opus_rate(fmt.rate)?,
                opus_channels(fmt.channels),
                opus_application(app),
            )
            .map(OpusEnc::Single)
            .map_err(opus_err("create encoder"));
        }
        opus_rate(fmt.rate)?;
        MsEncoder::surround(fmt.rate, fmt.channels, layout.family, ms_application(app))
            .map(OpusEnc::Multi)
            .map_err(ms_err("create multistream encoder"))
    }

    /// The multistream layout in use (family 0 for mono, stereo and PCM).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Opus streams in each packet and how many of them are coupled (stereo): (1, 0) mono,
    /// (1, 1) stereo, e.g. (4, 2) for 5.1; (0, 0) for L16.
    pub fn streams(&self) -> (u8, u8) {
        match &self.opus {
            None => (0, 0),
            Some(OpusEnc::Single(_)) => (1, u8::from(self.fmt.channels == 2)),
            Some(OpusEnc::Multi(e)) => (e.layout().streams, e.layout().coupled),
        }
    }

    fn tune(e: &mut OpusEnc, k: &OpusKnobs) -> Result<(), CodecError> {
        let bw = match k.max_bandwidth {
            MaxBandwidth::Narrowband => ffi::OPUS_BANDWIDTH_NARROWBAND,
            MaxBandwidth::Mediumband => ffi::OPUS_BANDWIDTH_MEDIUMBAND,
            MaxBandwidth::Wideband => ffi::OPUS_BANDWIDTH_WIDEBAND,
            MaxBandwidth::Superwideband => ffi::OPUS_BANDWIDTH_SUPERWIDEBAND,
            MaxBandwidth::Fullband => ffi::OPUS_BANDWIDTH_FULLBAND,
        };
        let sig = match k.signal {
            Signal::Auto => ffi::OPUS_AUTO,
            Signal::Voice => ffi::OPUS_SIGNAL_VOICE,
            Signal::Music => ffi::OPUS_SIGNAL_MUSIC,
        };
        let reqs: [(i32, i32, &'static str); 10] = [
            (ffi::OPUS_SET_BITRATE_REQUEST, k.bitrate, "set bitrate"),
            (
                ffi::OPUS_SET_COMPLEXITY_REQUEST,
                i32::from(k.complexity),
                "set complexity",
            ),
            (ffi::OPUS_SET_MAX_BANDWIDTH_REQUEST, bw, "set max bandwidth"),
            (ffi::OPUS_SET_SIGNAL_REQUEST, sig, "set signal"),
            (ffi::OPUS_SET_VBR_REQUEST, i32::from(k.vbr), "set vbr"),
            (
                ffi::OPUS_SET_VBR_CONSTRAINT_REQUEST,
                i32::from(k.vbr_constraint),
                "set vbr constraint",
            ),
            (
                ffi::OPUS_SET_LSB_DEPTH_REQUEST,
                i32::from(k.lsb_depth),
                "set lsb depth",
            ),
            (ffi::OPUS_SET_DTX_REQUEST, i32::from(k.dtx), "set dtx"),
            (
                ffi::OPUS_SET_INBAND_FEC_REQUEST,
                i32::from(k.fec),
                "set fec",
            ),
            (
                ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST,
                i32::from(k.packet_loss),
                "set packet loss",
            ),
        ];
        for (req, val, what) in reqs {
            e.set(req, val, what)?;
        }
        Ok(())
    }

    /// Retunes a live encoder to `knobs`. A change of `application` recreates the Opus
    /// encoder (libopus cannot change it after the first frame); a change of `frame_size`
    /// changes [`frame_samples`](Self::frame_samples) from the next `encode` on. On error
    /// the encoder keeps its previous settings.
    pub fn apply(&mut self, knobs: &OpusKnobs) -> Result<(), CodecError> {
        knobs.validate()?;
        match self.compression {
            Compression::None => self.check_l16_size(knobs)?,
            Compression::Opus => {
                if knobs.application != self.knobs.application || self.opus.is_none() {
                    let mut e = Self::make_opus(self.fmt, &self.layout, knobs.application)?;
                    Self::tune(&mut e, knobs)?;
                    self.opus = Some(e);
                } else if let Some(e) = self.opus.as_mut() {
                    if let Err(err) = Self::tune(e, knobs) {
                        // Best effort back to the settings that worked.
                        let _ = Self::tune(e, &self.knobs);
                        return Err(err);
                    }
                }
            }
        }
        self.knobs = *knobs;
        Ok(())
    }

    /// The knobs in effect.
    pub fn knobs(&self) -> &OpusKnobs {
        &self.knobs
    }

    /// The stream format.
    pub fn format(&self) -> StreamFormat {
        self.fmt
    }

    /// The compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Samples per channel in one frame: `frame_size` at the stream rate (rounded down),
    /// e.g. 960 for 20 ms at 48 kHz. The same duration is used for L16.
    pub fn frame_samples(&self) -> usize {
        self.knobs.frame_size.samples(self.fmt.rate)
    }

    /// Encodes one frame. `pcm` must hold exactly `frame_samples() × channels` interleaved
    /// samples. `out` is cleared and receives the RTP payload (Opus packet, or L16:
    /// big-endian s16, clamped). Non-finite samples are encoded as 0.
    pub fn encode(&mut self, pcm: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let expected = self.frame_samples() * usize::from(self.fmt.channels);
        if pcm.len() != expected {
            return Err(CodecError::FrameLength {
                expected,
                got: pcm.len(),
            });
        }
        out.clear();
        match &mut self.opus {
            None => crate::samples::SampleFormat::S16Be.from_f32(pcm, out),
            Some(OpusEnc::Single(e)) => {
                let input: &[f32] = if pcm.iter().all(|x| x.is_finite()) {
                    pcm
                } else {
                    self.scratch.clear();
                    self.scratch
                        .extend(pcm.iter().map(|x| if x.is_finite() { *x } else { 0.0 }));
                    &self.scratch
                };
                out.resize(MAX_OPUS_PACKET, 0);
                let n = e
                    .encode_float(input, &mut out[..])
                    .map_err(opus_err("encode"))?;
                out.truncate(n);
            }
            Some(OpusEnc::Multi(e)) => {
                self.layout.to_codec(pcm, &mut self.scratch);
                for x in self.scratch.iter_mut().filter(|x| !x.is_finite()) {
                    *x = 0.0;
                }
                out.resize(
                    MAX_OPUS_PACKET_PER_CHANNEL * usize::from(self.fmt.channels),
                    0,
                );
                let n = e
                    .encode_float(&self.scratch, &mut out[..])
                    .map_err(ms_err("encode"))?;
                out.truncate(n);
            }
        }
        Ok(())
    }

    /// RTP payload type: [`PT_OPUS`] (96) or [`PT_L16`] (97).
    pub fn payload_type(&self) -> u8 {
        payload_type(self.compression)
    }

    /// RTP clock rate: 48000 for Opus (RFC 7587), the stream rate for L16.
    pub fn rtp_clock_rate(&self) -> u32 {
        rtp_clock_rate(self.compression, &self.fmt)
    }

    /// RTP timestamp ticks per frame (960 for 20 ms Opus at any rate; frame_samples for L16).
    pub fn rtp_ticks_per_frame(&self) -> u32 {
        match self.compression {
            Compression::Opus => self.knobs.frame_size.samples(OPUS_RTP_CLOCK) as u32,
            Compression::None => self.frame_samples() as u32,
        }
    }
}

/// RTP payload type of a compression: 96 for Opus, 97 for L16.
pub fn payload_type(c: Compression) -> u8 {
    match c {
        Compression::Opus => PT_OPUS,
        Compression::None => PT_L16,
    }
}

/// RTP clock rate: 48000 for Opus, `fmt.rate` for L16.
pub fn rtp_clock_rate(c: Compression, fmt: &StreamFormat) -> u32 {
    match c {
        Compression::Opus => OPUS_RTP_CLOCK,
        Compression::None => fmt.rate,
    }
}

/// Decodes RTP payloads into interleaved `f32`, and conceals lost ones.
pub struct Decoder {
    compression: Compression,
    fmt: StreamFormat,
    layout: Layout,
    opus: Option<OpusDec>,
    scratch: Vec<f32>,
    /// Multistream: what libopus decoded, in the codec's channel order.
    coded: Vec<f32>,
    /// Samples per channel of the latest packet decoded (0: none yet): concealment runs in
    /// units of it.
    frame: usize,
    /// Concealed samples (interleaved) made but not yet handed out.
    plc_tail: Vec<f32>,
    /// The twin of the decoder that conceals late audio ([`Decoder::conceal`]), made at a
    /// gap's first concealment and dropped when a packet is decoded.
    twin: Option<OpusDec>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("compression", &self.compression)
            .field("fmt", &self.fmt)
            .finish()
    }
}

impl Decoder {
    /// Creates a decoder for `fmt` (checked with [`validate`]). Opus decodes at `fmt.rate`.
    /// More than two channels: as [`Encoder::new`], positions unknown; see
    /// [`with_map`](Self::with_map).
    pub fn new(compression: Compression, fmt: StreamFormat) -> Result<Decoder, CodecError> {
        Self::with_map(compression, fmt, "")
    }

    /// As [`new`](Self::new), for a stream whose channel positions are `channel_map`: 3–8
    /// channel Opus is decoded in the layout [`surround::layout`] gives and put back in the
    /// map's order.
    pub fn with_map(
        compression: Compression,
        fmt: StreamFormat,
        channel_map: &str,
    ) -> Result<Decoder, CodecError> {
        validate(compression, &fmt)?;
        let layout = match compression {
            Compression::Opus => surround::layout(fmt.channels, channel_map),
            Compression::None => surround::layout(0, ""),
        };
        let opus = match compression {
            Compression::Opus if layout.family == 0 => {
                opus_rate(fmt.rate)?;
                // One stream, coupled for stereo: libopus's plain decoding.
                let one = opus_tunnel_opus_ms::StreamLayout {
                    streams: 1,
                    coupled: u8::from(fmt.channels == 2),
                    mapping: (0..fmt.channels).collect(),
                };
                Some(OpusDec::Single(
                    MsDecoder::new(fmt.rate, fmt.channels, &one)
                        .map_err(ms_err("create decoder"))?,
                ))
            }
            Compression::Opus => {
                opus_rate(fmt.rate)?;
                let streams = opus_tunnel_opus_ms::surround_layout(fmt.channels, layout.family)
                    .map_err(ms_err("multistream layout"))?;
                Some(OpusDec::Multi(
                    MsDecoder::new(fmt.rate, fmt.channels, &streams)
                        .map_err(ms_err("create multistream decoder"))?,
                ))
            }
            Compression::None => None,
        };
        Ok(Decoder {
            compression,
            fmt,
            layout,
            opus,
            scratch: Vec::new(),
            coded: Vec::new(),
            frame: 0,
            plc_tail: Vec::new(),
            twin: None,
        })
    }

    /// The multistream layout in use (family 0 for mono, stereo and PCM).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Runs libopus on `packet` (`None`: conceal) for at most `frames` samples per channel;
    /// the result, in stream channel order, is in `self.scratch`. Returns the samples per
    /// channel.
    fn run_opus(
        &mut self,
        packet: Option<&[u8]>,
        frames: usize,
        fec: bool,
        what: &'static str,
    ) -> Result<usize, CodecError> {
        let ch = usize::from(self.fmt.channels);
        self.scratch.clear();
        match self.opus.as_mut() {
            None => Err(CodecError::EmptyPayload),
            Some(OpusDec::Single(d)) => {
                self.scratch.resize(frames * ch, 0.0);
                let n = d
                    .decode_float(packet, &mut self.scratch[..], fec)
                    .map_err(ms_err(what))?
                    .min(frames);
                self.scratch.truncate(n * ch);
                Ok(n)
            }
            Some(OpusDec::Multi(d)) => {
                self.coded.clear();
                self.coded.resize(frames * ch, 0.0);
                let n = d
                    .decode_float(packet, &mut self.coded[..], fec)
                    .map_err(ms_err(what))?
                    .min(frames);
                self.layout
                    .from_codec(&self.coded[..n * ch], &mut self.scratch);
                Ok(n)
            }
        }
    }

    /// The stream format.
    pub fn format(&self) -> StreamFormat {
        self.fmt
    }

    /// RTP clock rate of this stream (48000 for Opus, the stream rate for L16).
    pub fn rtp_clock_rate(&self) -> u32 {
        rtp_clock_rate(self.compression, &self.fmt)
    }

    /// Converts a duration in RTP ticks to samples per channel at the stream rate
    /// (rounded to nearest; saturates).
    pub fn ticks_to_samples(&self, ticks: u32) -> usize {
        let clock = u64::from(self.rtp_clock_rate());
        let v = (u64::from(ticks) * u64::from(self.fmt.rate) + clock / 2) / clock;
        usize::try_from(v).unwrap_or(usize::MAX)
    }

    /// Largest number of samples per channel one Opus packet can hold (120 ms).
    fn max_frame(&self) -> usize {
        self.fmt.rate as usize * 120 / 1000
    }

    /// Decodes one payload and appends the interleaved samples to `out`. Returns the number
    /// of samples per channel appended. A corrupt or empty payload is an error (nothing is
    /// appended); for L16 the length must be a multiple of 2 × channels.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<usize, CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        let ch = usize::from(self.fmt.channels);
        match self.opus.as_mut() {
            None => {
                if payload.len() % (2 * ch) != 0 {
                    return Err(CodecError::L16Length {
                        len: payload.len(),
                        unit: 2 * ch,
                    });
                }
                crate::samples::SampleFormat::S16Be.to_f32(payload, out);
                Ok(payload.len() / (2 * ch))
            }
            Some(_) => {
                let max = self.max_frame();
                // Whatever was concealed was the twin's: the decoder goes on as if this
                // packet came in time, crossfaded from where the concealment was.
                let blend = self.fmt.rate as usize / 400;
                let from = if self.twin.is_some() {
                    self.twin_continuation(blend)
                } else {
                    Vec::new()
                };
                self.twin = None;
                let n = self.run_opus(Some(payload), max, false, "decode")?;
                let start = out.len();
                out.extend_from_slice(&self.scratch[..n * ch]);
                let frames = (from.len() / ch).min(n);
                for (i, frame) in out[start..start + frames * ch]
                    .chunks_exact_mut(ch)
                    .enumerate()
                {
                    let w = (i as f32 + 0.5) / frames as f32;
                    for (c, v) in frame.iter_mut().enumerate() {
                        *v = *v * w + from[i * ch + c] * (1.0 - w);
                    }
                }
                self.frame = n;
                self.plc_tail.clear();
                Ok(n)
            }
        }
    }

    fn check_conceal_len(&self, samples: usize) -> Result<(), CodecError> {
        let quantum = self.fmt.rate as usize / 400; // 2.5 ms
        let bad = |reason: String| CodecError::ConcealLength { samples, reason };
        if samples == 0 {
            return Err(bad("zero samples".into()));
        }
        if samples > self.fmt.rate as usize {
            return Err(bad("more than one second".into()));
        }
        if self.opus.is_some() && samples % quantum != 0 {
            return Err(bad(format!(
                "Opus conceals in multiples of 2.5 ms ({quantum} samples)"
            )));
        }
        Ok(())
    }

    /// Appends `samples_per_channel` samples that stand in for audio that is *late*: Opus
    /// packet loss concealment, silence for L16. Returns the samples per channel appended.
    /// For Opus the count must be a multiple of 2.5 ms at the stream rate; any count must be
    /// 1 … one second's worth.
    ///
    /// The concealment runs on a twin of the decoder, made at a gap's first call, so that the
    /// decoder itself is left as it was: when the late packet comes, [`decode`](Self::decode)
    /// decodes it as if it had come in time. (Told of a loss and then given the packet, libopus
    /// in speech mode played the next ~250 ms wrong: a dip of 10–18 dB, then a beat of ±5 dB
    /// dying away; `scripts/opus_late_packet.py`.) A packet that is *lost* is concealed with
    /// [`conceal_lost`](Self::conceal_lost), which tells the decoder.
    ///
    /// Opus conceals a packet's length at a time (the latest packet decoded), whatever the
    /// count asked, and hands the rest out at the next calls until a packet is decoded: libopus
    /// takes each call for one more lost packet and fades further with each (a lost 20 ms
    /// packet concealed in 2.5 ms calls fell 12 dB below the tone, in one call it kept it).
    pub fn conceal(
        &mut self,
        samples_per_channel: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, CodecError> {
        self.check_conceal_len(samples_per_channel)?;
        if self.twin.is_none() {
            self.twin = match &self.opus {
                Some(d) => Some(d.duplicate().map_err(ms_err("duplicate decoder"))?),
                None => None,
            };
        }
        std::mem::swap(&mut self.opus, &mut self.twin);
        let r = self.plc(samples_per_channel, out);
        std::mem::swap(&mut self.opus, &mut self.twin);
        r
    }

    /// Appends what stands in for a *lost* packet of `samples_per_channel` samples, of which
    /// [`conceal`](Self::conceal) has already given the first `covered` (the engine concealed
    /// them while the packet was only late): the decoder itself conceals the whole packet, so
    /// that it knows of the loss, and the samples after `covered` are appended (the twin's and
    /// the decoder's concealment are the same samples, from the same state). Returns the
    /// samples per channel appended.
    pub fn conceal_lost(
        &mut self,
        samples_per_channel: usize,
        covered: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, CodecError> {
        self.check_conceal_len(samples_per_channel)?;
        self.twin = None;
        self.plc_tail.clear();
        let ch = usize::from(self.fmt.channels);
        let mut all = Vec::with_capacity(samples_per_channel * ch);
        let n = self.plc(samples_per_channel, &mut all)?;
        let skip = covered.min(n);
        out.extend_from_slice(&all[skip * ch..n * ch]);
        Ok(n - skip)
    }

    /// The next `frames` samples per channel of the twin's concealment (what would have
    /// played had the gap gone on), to crossfade the late packet in from.
    fn twin_continuation(&mut self, frames: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(frames * usize::from(self.fmt.channels));
        std::mem::swap(&mut self.opus, &mut self.twin);
        let ok = self.plc(frames, &mut v).is_ok();
        std::mem::swap(&mut self.opus, &mut self.twin);
        if ok {
            v
        } else {
            Vec::new()
        }
    }

    /// The concealment of `samples_per_channel` samples by the decoder in `self.opus`.
    fn plc(&mut self, samples_per_channel: usize, out: &mut Vec<f32>) -> Result<usize, CodecError> {
        let ch = usize::from(self.fmt.channels);
        let max = self.max_frame();
        match self.opus.as_mut() {
            None => {
                out.resize(out.len() + samples_per_channel * ch, 0.0);
                Ok(samples_per_channel)
            }
            Some(_) => {
                let quantum = self.fmt.rate as usize / 400;
                let unit = if self.frame == 0 {
                    samples_per_channel
                } else {
                    self.frame.div_ceil(quantum) * quantum
                }
                .clamp(quantum, max);
                while self.plc_tail.len() < samples_per_channel * ch {
                    let got = self.run_opus(None, unit, false, "conceal")?;
                    if got == 0 {
                        break;
                    }
                    self.plc_tail.extend_from_slice(&self.scratch[..got * ch]);
                }
                let n = self.plc_tail.len().min(samples_per_channel * ch);
                out.extend(self.plc_tail.drain(..n));
                Ok(n / ch)
            }
        }
    }

    /// Recovers the packet *before* `payload` from its in-band FEC data (Opus with
    /// `compression.opus.fec` on at the sender); without FEC data libopus falls back to
    /// concealment. `samples_per_channel` is the lost packet's duration (a multiple of
    /// 2.5 ms). For L16 this is the same as [`conceal`](Self::conceal).
    pub fn decode_fec(
        &mut self,
        payload: &[u8],
        samples_per_channel: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, CodecError> {
        if self.opus.is_none() {
            return self.conceal(samples_per_channel, out);
        }
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        self.check_conceal_len(samples_per_channel)?;
        if samples_per_channel > self.max_frame() {
            return Err(CodecError::ConcealLength {
                samples: samples_per_channel,
                reason: "FEC recovers at most 120 ms".into(),
            });
        }
        let ch = usize::from(self.fmt.channels);
        self.twin = None;
        let n = self.run_opus(Some(payload), samples_per_channel, true, "decode fec")?;
        out.extend_from_slice(&self.scratch[..n * ch]);
        self.plc_tail.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::FrameSize;
    use std::f64::consts::PI;

    /// Amplitude of the component at `freq` (Goertzel), for a real signal.
    fn goertzel_amp(x: &[f32], rate: f64, freq: f64) -> f64 {
        let w = 2.0 * PI * freq / rate;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - c * s1 * s2;
        2.0 * power.max(0.0).sqrt() / x.len() as f64
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn stereo_sine(rate: u32, secs: f64, fl: f64, fr: f64, amp: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        let mut v = Vec::with_capacity(n * 2);
        for i in 0..n {
            let t = i as f64 / f64::from(rate);
            v.push((amp * (2.0 * PI * fl * t).sin()) as f32);
            v.push((amp * (2.0 * PI * fr * t).sin()) as f32);
        }
        v
    }

    /// A stereo encoder and decoder at `rate` with the default knobs.
    fn stereo_pair(c: Compression, rate: u32) -> (Encoder, Decoder) {
        let fmt = StreamFormat { rate, channels: 2 };
        let enc = Encoder::new(c, fmt, &OpusKnobs::default()).unwrap();
        (enc, Decoder::new(c, fmt).unwrap())
    }

    fn deinterleave(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        (
            x.iter().step_by(2).copied().collect(),
            x.iter().skip(1).step_by(2).copied().collect(),
        )
    }

    #[test]
    fn a_lost_packet_concealed_in_small_pieces_keeps_its_level() {
        // The engine asks for concealment 2.5 ms at a time; libopus must still see one lost
        // packet, not eight.
        let (mut enc, mut dec) = stereo_pair(Compression::Opus, 48000);
        let src = stereo_sine(48000, 1.0, 1000.0, 1000.0, 0.25);
        let (mut pkt, mut out) = (Vec::new(), Vec::new());
        for (k, frame) in src.chunks(1920).enumerate() {
            pkt.clear();
            enc.encode(frame, &mut pkt).unwrap();
            if k == 30 {
                for _ in 0..8 {
                    assert_eq!(dec.conceal(120, &mut out).unwrap(), 120);
                }
            } else {
                dec.decode(&pkt, &mut out).unwrap();
            }
        }
        assert_eq!(out.len(), src.len());
        let tone = 20.0 * (0.25f64 / 2f64.sqrt()).log10();
        // Every 10 ms block from 40 ms before the loss to 60 ms after it.
        for (i, b) in out.chunks(960).enumerate().skip(56).take(10) {
            let db = 20.0 * rms(b).log10();
            assert!(
                (db - tone).abs() < 1.0,
                "block {i}: {db:.1} dBFS, the tone {tone:.1}"
            );
        }
    }

    /// Mono speech at 32 kbit/s (the tunnel source's defaults) of a 1 kHz tone, 20 ms packets.
    fn speech_packets() -> Vec<Vec<u8>> {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 1,
        };
        let knobs = OpusKnobs {
            bitrate: 32000,
            signal: crate::params::Signal::Voice,
            ..Default::default()
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
        let src: Vec<f32> = (0..48000)
            .map(|i| (0.25 * (2.0 * PI * 1000.0 * f64::from(i) / 48000.0).sin()) as f32)
            .collect();
        src.chunks_exact(960)
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p).unwrap();
                p
            })
            .collect()
    }

    fn mono_decoder() -> Decoder {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 1,
        };
        Decoder::new(Compression::Opus, fmt).unwrap()
    }

    #[test]
    fn a_late_packet_decodes_as_if_it_came_in_time() {
        // The engine conceals 5 ms of a packet that is late, then decodes it: the packet and
        // everything after it must come out exactly as without the concealment. (Told of a
        // loss, libopus in speech mode played the next 250 ms 10-18 dB down, then beating.)
        let packets = speech_packets();
        let (mut in_time, mut late) = (mono_decoder(), mono_decoder());
        let (mut a, mut b, mut filler) = (Vec::new(), Vec::new(), Vec::new());
        for (k, p) in packets.iter().enumerate() {
            if k == 25 {
                assert_eq!(late.conceal(240, &mut filler).unwrap(), 240);
                assert_eq!(late.conceal(240, &mut filler).unwrap(), 240);
            }
            in_time.decode(p, &mut a).unwrap();
            late.decode(p, &mut b).unwrap();
        }
        // The late packet's first 2.5 ms are crossfaded from the concealment; the rest is
        // exact.
        let at = 25 * 960;
        assert_eq!(a[..at], b[..at]);
        assert_eq!(
            a[at + 120..],
            b[at + 120..],
            "the decoded audio differs after a concealment"
        );
        // The filler stands in well: the tone's level within 3 dB.
        let db = 20.0 * (goertzel_amp(&filler, 48000.0, 1000.0) / 0.25).log10();
        assert!(db.abs() < 3.0, "concealment at {db:.1} dB");
    }

    #[test]
    fn a_late_packet_comes_in_without_a_step() {
        // 700 Hz: 5 ms concealed is 3.5 periods, so the late packet starts half a period
        // away from where the concealment was; the crossfade leaves no step bigger than the
        // tone's own.
        let (mut enc, mut dec) = stereo_pair(Compression::Opus, 48000);
        let src = stereo_sine(48000, 1.0, 700.0, 700.0, 0.25);
        let (mut pkt, mut out) = (Vec::new(), Vec::new());
        let mut junction = 0;
        for (k, frame) in src.chunks(1920).enumerate() {
            pkt.clear();
            enc.encode(frame, &mut pkt).unwrap();
            if k == 30 {
                dec.conceal(240, &mut out).unwrap();
                junction = out.len() / 2;
            }
            dec.decode(&pkt, &mut out).unwrap();
        }
        let (l, _) = deinterleave(&out);
        let step = |x: &[f32]| {
            x.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0f32, f32::max)
        };
        let own = step(&l[junction - 2400..junction - 480]);
        let there = step(&l[junction - 240..junction + 480]);
        assert!(
            there <= own * 1.2,
            "a step of {there} at the junction, the tone's {own}"
        );
    }

    #[test]
    fn a_lost_packet_tells_the_decoder_and_goes_on_from_what_was_concealed() {
        // 5 ms concealed while the packet was late, then it is known lost: the decoder
        // conceals the whole packet, and the 15 ms after those 5 are exactly what one
        // concealment of the whole packet gives there.
        let packets = speech_packets();
        let (mut x, mut y) = (mono_decoder(), mono_decoder());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (k, p) in packets.iter().enumerate() {
            if k == 25 {
                let mut first = Vec::new();
                assert_eq!(x.conceal(240, &mut first).unwrap(), 240);
                a.extend_from_slice(&first);
                assert_eq!(x.conceal_lost(960, 240, &mut a).unwrap(), 720);
                assert_eq!(y.conceal_lost(960, 0, &mut b).unwrap(), 960);
                continue;
            }
            x.decode(p, &mut a).unwrap();
            y.decode(p, &mut b).unwrap();
        }
        assert_eq!(
            a, b,
            "a loss after a late concealment differs from the loss alone"
        );
    }

    #[test]
    fn validate_formats() {
        let f = |rate, channels| StreamFormat { rate, channels };
        assert!(validate(Compression::Opus, &f(48000, 2)).is_ok());
        assert!(validate(Compression::Opus, &f(8000, 1)).is_ok());
        let e = validate(Compression::Opus, &f(44100, 2)).unwrap_err();
        assert_eq!(e.key, "rate");
        assert!(e.to_string().starts_with("rate: \"44100\" is not accepted"));
        assert!(validate(Compression::Opus, &f(48000, 6)).is_ok());
        assert!(validate(Compression::Opus, &f(48000, 8)).is_ok());
        assert_eq!(
            validate(Compression::Opus, &f(48000, 9)).unwrap_err().key,
            "channels"
        );
        assert_eq!(
            validate(Compression::Opus, &f(48000, 0)).unwrap_err().key,
            "channels"
        );
        assert!(validate(Compression::None, &f(44100, 8)).is_ok());
        assert!(validate(Compression::None, &f(999, 2)).is_err());
        assert!(validate(Compression::None, &f(384_001, 2)).is_err());
        assert!(validate(Compression::None, &f(44100, 9)).is_err());
    }

    #[test]
    fn opus_sine_round_trip() {
        let (mut enc, mut dec) = stereo_pair(Compression::Opus, 48000);
        assert_eq!(enc.frame_samples(), 960);
        assert_eq!(enc.payload_type(), 96);
        assert_eq!(
            (enc.rtp_clock_rate(), enc.rtp_ticks_per_frame()),
            (48000, 960)
        );
        let amp = 0.5;
        let src = stereo_sine(48000, 1.0, 1000.0, 1500.0, amp);
        let mut pkt = Vec::new();
        let mut out = Vec::new();
        let mut bytes = 0;
        for frame in src.chunks_exact(960 * 2) {
            enc.encode(frame, &mut pkt).unwrap();
            assert!(!pkt.is_empty());
            bytes += pkt.len();
            assert_eq!(dec.decode(&pkt, &mut out).unwrap(), 960);
        }
        assert_eq!(out.len(), src.len());
        // Unconstrained VBR (the default) treats 64 kbit/s as a quality target, not a cap, and
        // spends about twice that on a pure tone: 1 s of this one took 16022 bytes (libopus
        // 1.3.1). Constrained VBR holds ~8000 bytes (`constrained_vbr_holds_the_bitrate`).
        assert!((5000..24000).contains(&bytes), "{bytes} bytes");
        // Skip the codec delay and start-up, analyse 0.5 s (an integer number of periods).
        let (l, r) = deinterleave(&out[2 * 4800..2 * (4800 + 24000)]);
        let db = |a: f64| 20.0 * (a / amp).log10();
        let l1000 = goertzel_amp(&l, 48000.0, 1000.0);
        let l1500 = goertzel_amp(&l, 48000.0, 1500.0);
        let r1500 = goertzel_amp(&r, 48000.0, 1500.0);
        let r1000 = goertzel_amp(&r, 48000.0, 1000.0);
        assert!(db(l1000).abs() < 1.0, "left 1 kHz at {} dB", db(l1000));
        assert!(db(r1500).abs() < 1.0, "right 1.5 kHz at {} dB", db(r1500));
        assert!(l1500 < l1000 / 100.0, "left leaks 1.5 kHz: {l1500}");
        assert!(r1000 < r1500 / 100.0, "right leaks 1 kHz: {r1000}");
        let expect_rms = amp / 2f64.sqrt();
        assert!((20.0 * (rms(&l) / expect_rms).log10()).abs() < 1.0);
        assert!((20.0 * (rms(&r) / expect_rms).log10()).abs() < 1.0);
    }

    /// `compression.opus.vbr_constraint=true` keeps the same tone near the bitrate: 64 kbit/s
    /// → about 8000 bytes in 1 s.
    #[test]
    fn constrained_vbr_holds_the_bitrate() {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let knobs = OpusKnobs {
            vbr_constraint: true,
            ..Default::default()
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
        let src = stereo_sine(48000, 1.0, 1000.0, 1500.0, 0.5);
        let mut pkt = Vec::new();
        let mut bytes = 0;
        for frame in src.chunks_exact(960 * 2) {
            enc.encode(frame, &mut pkt).unwrap();
            bytes += pkt.len();
        }
        assert!((7000..9200).contains(&bytes), "{bytes} bytes");
    }

    #[test]
    fn opus_plc_and_fec() {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let knobs = OpusKnobs {
            fec: true,
            packet_loss: 20,
            frame_size: FrameSize::Ms10,
            ..Default::default()
        };
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
        let mut dec = Decoder::new(Compression::Opus, fmt).unwrap();
        assert_eq!(enc.frame_samples(), 480);
        let src = stereo_sine(48000, 0.2, 440.0, 440.0, 0.3);
        let mut pkt = Vec::new();
        let mut out = Vec::new();
        let mut pkts = Vec::new();
        for frame in src.chunks_exact(480 * 2) {
            enc.encode(frame, &mut pkt).unwrap();
            pkts.push(pkt.clone());
        }
        for p in &pkts[..10] {
            dec.decode(p, &mut out).unwrap();
        }
        let before = out.len();
        assert_eq!(dec.conceal(480, &mut out).unwrap(), 480);
        assert_eq!(out.len(), before + 960);
        // Concealment continues the tone: not silence.
        assert!(rms(&out[before..]) > 0.01);
        // Longer than 120 ms is done in pieces.
        let before = out.len();
        assert_eq!(dec.conceal(9600, &mut out).unwrap(), 9600);
        assert_eq!(out.len(), before + 19200);
        assert!(dec.conceal(100, &mut out).is_err());
        assert!(dec.conceal(0, &mut out).is_err());
        assert!(dec.conceal(48000 + 120, &mut out).is_err());
        assert_eq!(dec.decode_fec(&pkts[12], 480, &mut out).unwrap(), 480);
        assert_eq!(dec.decode(&pkts[12], &mut out).unwrap(), 480);
        assert_eq!(dec.ticks_to_samples(960), 960);
    }

    #[test]
    fn opus_other_rates_and_mono() {
        for rate in OPUS_RATES {
            let fmt = StreamFormat { rate, channels: 1 };
            let knobs = OpusKnobs::default();
            let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
            let mut dec = Decoder::new(Compression::Opus, fmt).unwrap();
            let n = enc.frame_samples();
            assert_eq!(n, rate as usize / 50);
            assert_eq!(enc.rtp_ticks_per_frame(), 960);
            assert_eq!(dec.ticks_to_samples(960), n);
            let pcm: Vec<f32> = (0..n).map(|i| (i as f32 * 0.1).sin() * 0.2).collect();
            let mut pkt = Vec::new();
            enc.encode(&pcm, &mut pkt).unwrap();
            let mut out = Vec::new();
            assert_eq!(dec.decode(&pkt, &mut out).unwrap(), n);
            assert_eq!(out.len(), n);
        }
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let mut dec = Decoder::new(Compression::Opus, fmt).unwrap();
        let mut out = vec![1.0];
        assert!(matches!(
            dec.decode(&[], &mut out),
            Err(CodecError::EmptyPayload)
        ));
        // TOC code 3 (arbitrary frame count) with a zero frame count is invalid.
        assert!(dec.decode(&[0x03, 0x00], &mut out).is_err());
        // Code 3 claiming 48 frames of 20 ms (960 ms) is over 120 ms: invalid.
        assert!(dec.decode(&[0x0b, 0x30, 1, 2, 3], &mut out).is_err());
        assert_eq!(out, [1.0]);
        // Random garbage never panics.
        let mut x: u32 = 12345;
        for len in 1..200 {
            let p: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            let _ = dec.decode(&p, &mut out);
        }
    }

    #[test]
    fn encoder_checks_and_apply() {
        let fmt = StreamFormat {
            rate: 48000,
            channels: 2,
        };
        let mut knobs = OpusKnobs::default();
        let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).unwrap();
        let mut pkt = vec![9];
        let e = enc.encode(&[0.0; 100], &mut pkt).unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected 1920 interleaved samples for one frame, got 100"
        );
        // Non-finite input is tolerated.
        let mut pcm = vec![0.0f32; 1920];
        pcm[3] = f32::NAN;
        pcm[4] = f32::INFINITY;
        enc.encode(&pcm, &mut pkt).unwrap();
        knobs.application = Application::Voip;
        knobs.frame_size = FrameSize::Ms60;
        knobs.bitrate = 24000;
        knobs.dtx = true;
        knobs.max_bandwidth = MaxBandwidth::Wideband;
        enc.apply(&knobs).unwrap();
        assert_eq!(enc.frame_samples(), 2880);
        assert_eq!(enc.rtp_ticks_per_frame(), 2880);
        enc.encode(&vec![0.1; 2880 * 2], &mut pkt).unwrap();
        let mut bad = knobs;
        bad.complexity = 11;
        assert!(matches!(enc.apply(&bad), Err(CodecError::Param(_))));
        assert_eq!(enc.knobs(), &knobs);
        assert!(Encoder::new(
            Compression::Opus,
            StreamFormat {
                rate: 44100,
                channels: 2
            },
            &knobs
        )
        .is_err());
    }

    /// `secs` of a sine of `freqs[c]` Hz on each channel c, interleaved.
    fn multi_sine(rate: u32, secs: f64, freqs: &[f64], amp: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        let mut v = Vec::with_capacity(n * freqs.len());
        for i in 0..n {
            let t = i as f64 / f64::from(rate);
            v.extend(
                freqs
                    .iter()
                    .map(|f| (amp * (2.0 * PI * f * t).sin()) as f32),
            );
        }
        v
    }

    /// Encodes and decodes 1 s of a distinct tone per channel through `map`, and checks that
    /// each channel comes out with its own tone at its level (±1 dB) and the others at least
    /// 30 dB down. Returns the bytes the second took.
    fn surround_round_trip(map: &str, freqs: &[f64], knobs: &OpusKnobs) -> usize {
        let ch = freqs.len();
        let fmt = StreamFormat {
            rate: 48000,
            channels: ch as u8,
        };
        let mut enc = Encoder::with_map(Compression::Opus, fmt, knobs, map).unwrap();
        let mut dec = Decoder::with_map(Compression::Opus, fmt, map).unwrap();
        let amp = 0.3;
        let src = multi_sine(48000, 1.0, freqs, amp);
        let (mut pkt, mut out, mut bytes) = (Vec::new(), Vec::new(), 0);
        let n = enc.frame_samples();
        for frame in src.chunks_exact(n * ch) {
            enc.encode(frame, &mut pkt).unwrap();
            bytes += pkt.len();
            assert_eq!(dec.decode(&pkt, &mut out).unwrap(), n);
        }
        assert_eq!(out.len(), src.len());
        let db = |a: f64| 20.0 * (a / amp).log10();
        for (c, &f) in freqs.iter().enumerate() {
            let x: Vec<f32> = out[ch * 4800..ch * (4800 + 24000)]
                .iter()
                .skip(c)
                .step_by(ch)
                .copied()
                .collect();
            let own = db(goertzel_amp(&x, 48000.0, f));
            assert!(own.abs() < 1.0, "{map}: channel {c} {f} Hz at {own:.2} dB");
            for (o, &g) in freqs.iter().enumerate().filter(|(o, _)| *o != c) {
                let leak = db(goertzel_amp(&x, 48000.0, g));
                assert!(
                    leak < -30.0,
                    "{map}: channel {c} has {g} Hz of {o} at {leak:.1} dB"
                );
            }
        }
        bytes
    }

    #[test]
    fn surround_51_and_71_keep_each_channel() {
        // PulseAudio's surround-51 order; the LFE below 200 Hz (Opus's LFE mode codes only
        // the lowest band).
        let s51 = "front-left,front-right,rear-left,rear-right,front-center,lfe";
        let k = OpusKnobs {
            bitrate: crate::surround::default_bitrate(6, 64_000),
            ..Default::default()
        };
        let bytes = surround_round_trip(s51, &[500.0, 700.0, 900.0, 1100.0, 1300.0, 80.0], &k);
        assert!(bytes > 5000, "{bytes}");
        let s71 =
            "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right";
        let k = OpusKnobs {
            bitrate: crate::surround::default_bitrate(8, 64_000),
            ..Default::default()
        };
        surround_round_trip(
            s71,
            &[500.0, 700.0, 900.0, 1100.0, 1300.0, 60.0, 1500.0, 1700.0],
            &k,
        );
        // A map of no family-1 layout: one stream a channel, still each on its own.
        surround_round_trip(
            "front-left,front-right,lfe",
            &[600.0, 800.0, 1000.0],
            &OpusKnobs::default(),
        );
    }

    #[test]
    fn surround_knobs_plc_and_fec() {
        let s51 = "front-left,front-right,rear-left,rear-right,front-center,lfe";
        let fmt = StreamFormat {
            rate: 48000,
            channels: 6,
        };
        let mut knobs = OpusKnobs {
            bitrate: 192_000,
            vbr_constraint: true,
            fec: true,
            packet_loss: 20,
            ..Default::default()
        };
        let mut enc = Encoder::with_map(Compression::Opus, fmt, &knobs, s51).unwrap();
        assert_eq!(enc.layout().family, 1);
        assert_eq!(enc.streams(), (4, 2));
        let mut dec = Decoder::with_map(Compression::Opus, fmt, s51).unwrap();
        let src = multi_sine(
            48000,
            1.0,
            &[500.0, 700.0, 900.0, 1100.0, 1300.0, 80.0],
            0.3,
        );
        let mut pkt = Vec::new();
        let mut bytes = 0;
        let mut pkts = Vec::new();
        for frame in src.chunks_exact(960 * 6) {
            enc.encode(frame, &mut pkt).unwrap();
            bytes += pkt.len();
            pkts.push(pkt.clone());
        }
        // Constrained VBR holds the multistream total: 192 kbit/s → ~24000 bytes in 1 s.
        assert!((20_000..27_000).contains(&bytes), "{bytes} bytes");
        // Live retune: the bitrate knob is the total over all streams.
        knobs.bitrate = 96_000;
        enc.apply(&knobs).unwrap();
        let mut bytes = 0;
        for frame in src.chunks_exact(960 * 6) {
            enc.encode(frame, &mut pkt).unwrap();
            bytes += pkt.len();
        }
        assert!((10_000..14_000).contains(&bytes), "{bytes} bytes");
        // Application change recreates the multistream encoder.
        knobs.application = Application::LowDelay;
        enc.apply(&knobs).unwrap();
        enc.encode(&src[..960 * 6], &mut pkt).unwrap();
        let mut out = Vec::new();
        for p in &pkts[..10] {
            dec.decode(p, &mut out).unwrap();
        }
        let before = out.len();
        assert_eq!(dec.conceal(960, &mut out).unwrap(), 960);
        assert_eq!(out.len(), before + 960 * 6);
        assert!(rms(&out[before..]) > 0.01);
        assert_eq!(dec.decode_fec(&pkts[12], 960, &mut out).unwrap(), 960);
        assert_eq!(dec.decode(&pkts[12], &mut out).unwrap(), 960);
        // Garbage never panics.
        let mut x: u32 = 7;
        for len in 1..200 {
            let p: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            let _ = dec.decode(&p, &mut out);
        }
    }

    /// Every knob applies to a multistream encoder, at every Opus rate and frame size.
    #[test]
    fn surround_every_knob_and_rate() {
        let s71 =
            "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right";
        for rate in OPUS_RATES {
            let fmt = StreamFormat { rate, channels: 8 };
            let mut enc =
                Encoder::with_map(Compression::Opus, fmt, &OpusKnobs::default(), s71).unwrap();
            let mut dec = Decoder::with_map(Compression::Opus, fmt, s71).unwrap();
            assert_eq!(enc.streams(), (5, 3));
            for (frame, knobs) in [
                (
                    FrameSize::Ms2_5,
                    OpusKnobs {
                        frame_size: FrameSize::Ms2_5,
                        application: Application::LowDelay,
                        complexity: 0,
                        ..Default::default()
                    },
                ),
                (
                    FrameSize::Ms60,
                    OpusKnobs {
                        frame_size: FrameSize::Ms60,
                        bitrate: 48_000,
                        max_bandwidth: MaxBandwidth::Wideband,
                        signal: Signal::Music,
                        vbr: false,
                        lsb_depth: 24,
                        dtx: true,
                        fec: true,
                        packet_loss: 30,
                        application: Application::Voip,
                        ..Default::default()
                    },
                ),
            ] {
                enc.apply(&knobs).unwrap();
                let n = frame.samples(rate);
                assert_eq!(enc.frame_samples(), n);
                let pcm: Vec<f32> = (0..n * 8)
                    .map(|i| ((i % 97) as f32 - 48.0) / 200.0)
                    .collect();
                let mut pkt = Vec::new();
                enc.encode(&pcm, &mut pkt).unwrap();
                let mut out = Vec::new();
                assert_eq!(dec.decode(&pkt, &mut out).unwrap(), n);
                assert_eq!(out.len(), n * 8);
            }
        }
    }

    #[test]
    fn l16_bit_exact() {
        let (mut enc, mut dec) = stereo_pair(Compression::None, 44100);
        assert_eq!(enc.frame_samples(), 882);
        assert_eq!(enc.payload_type(), 97);
        assert_eq!(
            (enc.rtp_clock_rate(), enc.rtp_ticks_per_frame()),
            (44100, 882)
        );
        let pcm: Vec<f32> = (0..882 * 2)
            .map(|i| ((i * 37 % 65536) - 32768) as f32 / 32768.0)
            .collect();
        let mut pkt = Vec::new();
        enc.encode(&pcm, &mut pkt).unwrap();
        assert_eq!(pkt.len(), 882 * 4);
        assert_eq!(&pkt[..2], &[0x80, 0x00]); // -32768 big endian
        let mut out = Vec::new();
        assert_eq!(dec.decode(&pkt, &mut out).unwrap(), 882);
        assert_eq!(out, pcm);
        assert!(matches!(
            dec.decode(&pkt[..5], &mut out),
            Err(CodecError::L16Length { len: 5, unit: 4 })
        ));
        assert!(dec.decode(&pkt[..2], &mut out).is_err());
        let before = out.len();
        assert_eq!(dec.conceal(10, &mut out).unwrap(), 10);
        assert_eq!(&out[before..], &[0.0; 20]);
        // An L16 frame too big for one packet is refused.
        let big = StreamFormat {
            rate: 384_000,
            channels: 8,
        };
        let k = OpusKnobs {
            frame_size: FrameSize::Ms60,
            ..Default::default()
        };
        assert!(matches!(
            Encoder::new(Compression::None, big, &k),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }
}
