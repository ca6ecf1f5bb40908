//! Sample format conversion between PulseAudio's sample formats and interleaved `f32`.
//!
//! Integer formats map full scale to [-1.0, 1.0): a sample `v` of `n` bits becomes
//! `v / 2^(n-1)` (u8 is offset by 128 first). The way back scales by `2^(n-1)`, rounds to the
//! nearest integer and clamps, so s16 → f32 → s16 is bit-exact. NaN becomes 0.

use crate::params::ParamError;
use std::fmt;

/// A PulseAudio sample format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum SampleFormat {
    /// Unsigned 8 bit, offset 128 (`u8`).
    U8,
    /// Signed 16 bit little endian (`s16le`).
    S16Le,
    /// Signed 16 bit big endian (`s16be`).
    S16Be,
    /// Signed 24 bit packed in 3 bytes, little endian (`s24le`).
    S24Le,
    /// Signed 24 bit packed in 3 bytes, big endian (`s24be`).
    S24Be,
    /// Signed 24 bit in the low bits of a 32-bit little-endian word (`s24-32le`).
    S24_32Le,
    /// Signed 24 bit in the low bits of a 32-bit big-endian word (`s24-32be`).
    S24_32Be,
    /// Signed 32 bit little endian (`s32le`).
    S32Le,
    /// Signed 32 bit big endian (`s32be`).
    S32Be,
    /// IEEE float 32 bit little endian (`float32le`).
    F32Le,
    /// IEEE float 32 bit big endian (`float32be`).
    F32Be,
}

impl SampleFormat {
    /// Parses PulseAudio's names: `u8`, `s16le`, `s16be`, `s24le`, `s24be`, `s24-32le`,
    /// `s24-32be`, `s32le`, `s32be`, `float32le`, `float32be`; the native-endian aliases
    /// `s16ne`, `s24ne`, `s24-32ne`, `s32ne`, `float32ne` (and the `re` reverse-endian
    /// ones) resolve for this platform's byte order; `s16`, `float32` and `float` also
    /// mean native endian. Case-insensitive. The error names the key `format`.
    pub fn parse(s: &str) -> Result<Self, ParamError> {
        let t = s.trim().to_ascii_lowercase();
        let le = cfg!(target_endian = "little");
        let (ne, re) = if le { ("le", "be") } else { ("be", "le") };
        let t = if let Some(base) = t.strip_suffix("ne") {
            format!("{base}{ne}")
        } else if let Some(base) = t.strip_suffix("re") {
            format!("{base}{re}")
        } else {
            match t.as_str() {
                "s16" | "s24" | "s24-32" | "s32" | "float32" => format!("{t}{ne}"),
                "float" => format!("float32{ne}"),
                _ => t,
            }
        };
        Ok(match t.as_str() {
            "u8" => SampleFormat::U8,
            "s16le" => SampleFormat::S16Le,
            "s16be" => SampleFormat::S16Be,
            "s24le" => SampleFormat::S24Le,
            "s24be" => SampleFormat::S24Be,
            "s24-32le" => SampleFormat::S24_32Le,
            "s24-32be" => SampleFormat::S24_32Be,
            "s32le" => SampleFormat::S32Le,
            "s32be" => SampleFormat::S32Be,
            "float32le" => SampleFormat::F32Le,
            "float32be" => SampleFormat::F32Be,
            _ => {
                return Err(ParamError::new(
                    "format",
                    s,
                    "one of u8, s16le, s16be, s24le, s24be, s24-32le, s24-32be, s32le, s32be, \
                     float32le, float32be, or an ne/re alias such as s16ne",
                ))
            }
        })
    }

    /// PulseAudio's canonical name, e.g. `"s16le"`, `"float32le"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SampleFormat::U8 => "u8",
            SampleFormat::S16Le => "s16le",
            SampleFormat::S16Be => "s16be",
            SampleFormat::S24Le => "s24le",
            SampleFormat::S24Be => "s24be",
            SampleFormat::S24_32Le => "s24-32le",
            SampleFormat::S24_32Be => "s24-32be",
            SampleFormat::S32Le => "s32le",
            SampleFormat::S32Be => "s32be",
            SampleFormat::F32Le => "float32le",
            SampleFormat::F32Be => "float32be",
        }
    }

    /// Bytes per sample of one channel (1, 2, 3 or 4).
    pub fn bytes_per_sample(&self) -> usize {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::S16Le | SampleFormat::S16Be => 2,
            SampleFormat::S24Le | SampleFormat::S24Be => 3,
            _ => 4,
        }
    }

    /// Converts raw samples to `f32` and appends them to `out`. A trailing partial sample
    /// (fewer than [`bytes_per_sample`](Self::bytes_per_sample) bytes) is ignored.
    pub fn to_f32(&self, bytes: &[u8], out: &mut Vec<f32>) {
        let n = self.bytes_per_sample();
        out.reserve(bytes.len() / n);
        for c in bytes.chunks_exact(n) {
            let v = match self {
                SampleFormat::U8 => (f32::from(c[0]) - 128.0) / 128.0,
                SampleFormat::S16Le => f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0,
                SampleFormat::S16Be => f32::from(i16::from_be_bytes([c[0], c[1]])) / 32768.0,
                SampleFormat::S24Le => {
                    (i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8) as f32 / 8_388_608.0
                }
                SampleFormat::S24Be => {
                    (i32::from_be_bytes([c[0], c[1], c[2], 0]) >> 8) as f32 / 8_388_608.0
                }
                SampleFormat::S24_32Le => {
                    (i32::from_le_bytes([c[0], c[1], c[2], c[3]]) << 8 >> 8) as f32 / 8_388_608.0
                }
                SampleFormat::S24_32Be => {
                    (i32::from_be_bytes([c[0], c[1], c[2], c[3]]) << 8 >> 8) as f32 / 8_388_608.0
                }
                SampleFormat::S32Le => {
                    (f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])) / 2_147_483_648.0)
                        as f32
                }
                SampleFormat::S32Be => {
                    (f64::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]])) / 2_147_483_648.0)
                        as f32
                }
                SampleFormat::F32Le => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                SampleFormat::F32Be => f32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            };
            out.push(v);
        }
    }

    /// Converts `f32` samples to raw bytes and appends them to `out`, scaling, rounding to
    /// nearest and clamping to the format's range (floats are clamped to [-1, 1]).
    pub fn from_f32(&self, samples: &[f32], out: &mut Vec<u8>) {
        out.reserve(samples.len() * self.bytes_per_sample());
        for &x in samples {
            let x = if x.is_nan() { 0.0 } else { x };
            match self {
                SampleFormat::U8 => out.push((quant(x, 128.0, 127.0) + 128) as u8),
                SampleFormat::S16Le => {
                    out.extend_from_slice(&(quant(x, 32768.0, 32767.0) as i16).to_le_bytes())
                }
                SampleFormat::S16Be => {
                    out.extend_from_slice(&(quant(x, 32768.0, 32767.0) as i16).to_be_bytes())
                }
                SampleFormat::S24Le => {
                    let b = (quant(x, 8_388_608.0, 8_388_607.0) as i32).to_le_bytes();
                    out.extend_from_slice(&b[..3]);
                }
                SampleFormat::S24Be => {
                    let b = (quant(x, 8_388_608.0, 8_388_607.0) as i32).to_be_bytes();
                    out.extend_from_slice(&b[1..]);
                }
                SampleFormat::S24_32Le => out
                    .extend_from_slice(&(quant(x, 8_388_608.0, 8_388_607.0) as i32).to_le_bytes()),
                SampleFormat::S24_32Be => out
                    .extend_from_slice(&(quant(x, 8_388_608.0, 8_388_607.0) as i32).to_be_bytes()),
                SampleFormat::S32Le => out.extend_from_slice(
                    &(quant(x, 2_147_483_648.0, 2_147_483_647.0) as i32).to_le_bytes(),
                ),
                SampleFormat::S32Be => out.extend_from_slice(
                    &(quant(x, 2_147_483_648.0, 2_147_483_647.0) as i32).to_be_bytes(),
                ),
                SampleFormat::F32Le => out.extend_from_slice(&x.clamp(-1.0, 1.0).to_le_bytes()),
                SampleFormat::F32Be => out.extend_from_slice(&x.clamp(-1.0, 1.0).to_be_bytes()),
            }
        }
    }
}

/// Scales `x` by `scale`, rounds to nearest and clamps to [-scale, max].
fn quant(x: f32, scale: f64, max: f64) -> i64 {
    (f64::from(x) * scale).round().clamp(-scale, max) as i64
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SampleFormat {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<Self, ParamError> {
        SampleFormat::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SampleFormat::*;

    const ALL: [SampleFormat; 11] = [
        U8, S16Le, S16Be, S24Le, S24Be, S24_32Le, S24_32Be, S32Le, S32Be, F32Le, F32Be,
    ];

    #[test]
    fn parse_names() {
        for f in ALL {
            assert_eq!(SampleFormat::parse(f.as_str()).unwrap(), f);
        }
        assert_eq!(SampleFormat::parse("s16ne").unwrap(), S16Le);
        assert_eq!(SampleFormat::parse("s16re").unwrap(), S16Be);
        assert_eq!(SampleFormat::parse("float32ne").unwrap(), F32Le);
        assert_eq!(SampleFormat::parse("S24-32NE").unwrap(), S24_32Le);
        assert_eq!(SampleFormat::parse("s32ne").unwrap(), S32Le);
        assert_eq!(SampleFormat::parse("s24ne").unwrap(), S24Le);
        assert_eq!(SampleFormat::parse("float").unwrap(), F32Le);
        let e = SampleFormat::parse("s12le").unwrap_err();
        assert_eq!(e.key, "format");
        assert!(e.to_string().contains("\"s12le\""));
        assert!(SampleFormat::parse("ne").is_err());
        assert_eq!(S24Le.bytes_per_sample(), 3);
        assert_eq!(S24_32Be.bytes_per_sample(), 4);
        assert_eq!(U8.bytes_per_sample(), 1);
    }

    #[test]
    fn s16_bit_exact() {
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        for fmt in [S16Le, S16Be] {
            let mut bytes = Vec::new();
            for v in &all {
                bytes.extend_from_slice(&if fmt == S16Le {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                });
            }
            let mut f = Vec::new();
            fmt.to_f32(&bytes, &mut f);
            assert_eq!(f.len(), 65536);
            assert_eq!(f[0], -1.0);
            let mut back = Vec::new();
            fmt.from_f32(&f, &mut back);
            assert_eq!(back, bytes);
        }
    }

    #[test]
    fn exact_bytes_and_values() {
        let mut out = Vec::new();
        S16Le.from_f32(&[0.5, -1.0, 2.0, f32::NAN], &mut out);
        assert_eq!(out, [0x00, 0x40, 0x00, 0x80, 0xff, 0x7f, 0, 0]);
        out.clear();
        S24Be.from_f32(&[0.5, -0.5], &mut out);
        assert_eq!(out, [0x40, 0, 0, 0xc0, 0, 0]);
        out.clear();
        S24Le.from_f32(&[-1.0], &mut out);
        assert_eq!(out, [0, 0, 0x80]);
        out.clear();
        S24_32Le.from_f32(&[-1.0], &mut out);
        assert_eq!(out, [0, 0, 0x80, 0xff]);
        out.clear();
        U8.from_f32(&[0.0, -1.0, 1.0], &mut out);
        assert_eq!(out, [128, 0, 255]);
        out.clear();
        S32Be.from_f32(&[1.0, -1.0], &mut out);
        assert_eq!(out, [0x7f, 0xff, 0xff, 0xff, 0x80, 0, 0, 0]);
        out.clear();
        F32Be.from_f32(&[3.0], &mut out);
        assert_eq!(out, 1.0f32.to_be_bytes());

        let mut f = Vec::new();
        S24Le.to_f32(&[0, 0, 0x80, 0, 0, 0x40], &mut f);
        assert_eq!(f, [-1.0, 0.5]);
        f.clear();
        // s24-32 ignores the top byte.
        S24_32Be.to_f32(&[0x12, 0xc0, 0, 0], &mut f);
        assert_eq!(f, [-0.5]);
        f.clear();
        U8.to_f32(&[0, 128, 192], &mut f);
        assert_eq!(f, [-1.0, 0.0, 0.5]);
        f.clear();
        // Trailing partial sample ignored, appends.
        f.push(9.0);
        S16Be.to_f32(&[0x40, 0x00, 0x12], &mut f);
        assert_eq!(f, [9.0, 0.5]);
    }

    #[test]
    fn round_trip_all_formats() {
        let src: Vec<f32> = (0..200).map(|i| ((i as f32) * 0.37).sin() * 0.9).collect();
        for fmt in ALL {
            let mut bytes = Vec::new();
            fmt.from_f32(&src, &mut bytes);
            assert_eq!(bytes.len(), src.len() * fmt.bytes_per_sample());
            let mut back = Vec::new();
            fmt.to_f32(&bytes, &mut back);
            let tol = match fmt {
                U8 => 1.0 / 128.0,
                S16Le | S16Be => 1.0 / 32768.0,
                _ => 1e-6,
            };
            for (a, b) in src.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{fmt}: {a} vs {b}");
            }
        }
    }
}
