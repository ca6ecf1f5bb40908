//! CPU cost of the receive path with drift correction, against raw libopus decoding.
//!
//! `cargo run --release -p opus-tunnel-core --example bench_playout [seconds]`
//!
//! Encodes a stereo 48 kHz test signal (tones and noise, 64 kbit/s, 20 ms) once, then times
//! (a) decoding all packets with `codec::Decoder` (raw libopus), and (b) decoding plus the
//! playout engine (`playout::Playout`: FIFO, control, rubato sinc resampler at a ratio
//! 500 ppm off unity, device reports every 10 ms). Prints CPU per stream-second and the
//! ratio (b)/(a); the target is under 1.5×. Then the same for other rubato settings, for
//! comparison (resampler only).

use opus_tunnel_core::codec::{Decoder, Encoder, StreamFormat};
use opus_tunnel_core::params::{Compression, OpusKnobs};
use opus_tunnel_core::playout::{sinc_parameters, Playout, PlayoutConfig};
use opus_tunnel_core::quality::thd_n_db;
use rubato::{
    FastFixedIn, PolynomialDegree, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    VecResampler, WindowFunction,
};
use std::time::Instant;

const RATE: u32 = 48_000;

fn signal(frames: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(frames * 2);
    let mut seed = 12345u32;
    for i in 0..frames {
        let t = i as f64 / RATE as f64;
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (seed >> 8) as f64 / (1u32 << 24) as f64 - 0.5;
        let l = 0.3 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
            + 0.1 * (2.0 * std::f64::consts::PI * 3150.0 * t).sin()
            + 0.05 * noise;
        let r = 0.3 * (2.0 * std::f64::consts::PI * 660.0 * t).sin()
            + 0.1 * (2.0 * std::f64::consts::PI * 7000.0 * t).sin()
            + 0.05 * noise;
        x.push(l as f32);
        x.push(r as f32);
    }
    x
}

fn best_of<F: FnMut() -> f64>(n: usize, mut f: F) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    let secs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let fmt = StreamFormat {
        rate: RATE,
        channels: 2,
    };
    let knobs = OpusKnobs::default();
    let mut enc = Encoder::new(Compression::Opus, fmt, &knobs).expect("encoder");
    let fs = enc.frame_samples();
    let pcm = signal(secs * RATE as usize);
    let mut packets = Vec::new();
    for frame in pcm.chunks_exact(fs * 2) {
        let mut out = Vec::new();
        enc.encode(frame, &mut out).expect("encode");
        packets.push(out);
    }
    let stream_secs = (packets.len() * fs) as f64 / RATE as f64;
    println!(
        "{} packets of {} ms, {:.0} s of stereo 48 kHz at {} bit/s",
        packets.len(),
        fs * 1000 / RATE as usize,
        stream_secs,
        knobs.bitrate
    );

    // (a) raw libopus decoding.
    let raw = best_of(3, || {
        let mut dec = Decoder::new(Compression::Opus, fmt).expect("decoder");
        let mut out = Vec::with_capacity(fs * 2);
        let t0 = Instant::now();
        for p in &packets {
            out.clear();
            dec.decode(p, &mut out).expect("decode");
            std::hint::black_box(&out);
        }
        t0.elapsed().as_secs_f64()
    });

    // (b) decode + playout engine.
    let with = best_of(3, || {
        let mut dec = Decoder::new(Compression::Opus, fmt).expect("decoder");
        let mut play = Playout::new(PlayoutConfig {
            rate: RATE,
            channels: 2,
            target: opus_tunnel_core::playout::Target::Auto,
            min_usec: 0,
            max_usec: 1_000_000,
        })
        .expect("playout");
        let mut pcm = Vec::with_capacity(fs * 2);
        let mut out = Vec::with_capacity(8192);
        let mut consumed = 0u64;
        let mut missing = 0u64;
        let mut produced = 0u64;
        let mut t_dev = 0u64;
        let dev_period = 480u64; // 10 ms
        let t0 = Instant::now();
        for (k, p) in packets.iter().enumerate() {
            let now = 1_000_000 + (k * fs) as u64 * 1_000_000 / RATE as u64;
            pcm.clear();
            dec.decode(p, &mut pcm).expect("decode");
            play.on_packet(now, (k * fs) as u32, &pcm);
            // The device consumes 500 ppm faster than the sender produces.
            while 1_000_000 + t_dev * dev_period * 1_000_000 / RATE as u64 * 10_000 / 10_005 <= now
            {
                let t = t_dev * dev_period * 1_000_000 / RATE as u64 * 10_000 / 10_005;
                let avail = produced - consumed;
                let take = avail.min(dev_period);
                consumed += take;
                missing += dev_period - take;
                play.on_device(t + 1_000_000, consumed, missing);
                t_dev += 1;
            }
            while let Some(n) = play.conceal_needed(now) {
                play.on_conceal(&vec![0.0; n * 2]);
            }
            out.clear();
            play.produce(&mut out);
            produced += (out.len() / 2) as u64;
            std::hint::black_box(&out);
            if std::env::var("BENCH_DEBUG").is_ok() && k < 200 && k % 5 == 0 {
                eprintln!(
                    "k={k} now={now} prod={produced} cons={consumed} miss={missing} fifo={} {:?}",
                    play.controller().fifo_frames(),
                    play.stats()
                );
            }
        }
        let el = t0.elapsed().as_secs_f64();
        let st = play.stats();
        assert!(st.drift_ppm.abs() < 5000.0);
        eprintln!("  engine: {st:?}, produced {produced} frames");
        el
    });
    println!(
        "raw libopus decode:          {:7.3} ms CPU per stream-second",
        raw / stream_secs * 1e3
    );
    println!(
        "decode + playout (resample): {:7.3} ms CPU per stream-second",
        with / stream_secs * 1e3
    );
    let p = sinc_parameters();
    println!(
        "ratio (decode + playout) / raw decode: {:.3}x (target < 1.5x)  [rubato SincFixedIn: sinc_len {}, f_cutoff {:.4}, oversampling {}, {:?}, {:?}]",
        with / raw,
        p.sinc_len,
        p.f_cutoff,
        p.oversampling_factor,
        p.interpolation,
        p.window
    );

    // Other rubato settings, resampler alone, for comparison: CPU, and THD+N of a 1 kHz and
    // a 10 kHz sine at ratio 1.001.
    println!(
        "resampler alone, other settings (ms CPU per stereo stream-second; THD+N at 1 kHz / 10 kHz):"
    );
    use WindowFunction::{Blackman2, BlackmanHarris2};
    const LIN: u8 = 0;
    const NEAR: u8 = 1;
    const CUBIC: u8 = 2;
    let options: Vec<(String, Maker)> = vec![
        sinc_option(128, 256, LIN, BlackmanHarris2),
        sinc_option(128, 256, LIN, Blackman2),
        sinc_option(64, 256, LIN, Blackman2),
        sinc_option(32, 256, LIN, Blackman2),
        sinc_option(64, 2048, NEAR, Blackman2),
        sinc_option(128, 128, CUBIC, Blackman2),
        poly_option("cubic", || PolynomialDegree::Cubic),
        poly_option("septic", || PolynomialDegree::Septic),
    ];
    for (name, make) in options {
        let mut rs = make(1.0005, 2);
        let input = vec![vec![0.1f32; 240]; 2];
        let mut outb = rs.output_buffer_allocate(true);
        let chunks = (stream_secs * RATE as f64 / 240.0) as usize;
        let t0 = Instant::now();
        for _ in 0..chunks {
            rs.process_into_buffer(&input, &mut outb, None)
                .expect("process");
        }
        let el = t0.elapsed().as_secs_f64();
        let thd1 = thd_at(&make, 1000.0);
        let thd10 = thd_at(&make, 10_000.0);
        println!(
            "  {name:62} {:6.3} ms   {thd1:7.1} dB / {thd10:6.1} dB",
            el / stream_secs * 1e3
        );
    }
}

type Maker = Box<dyn Fn(f64, usize) -> Box<dyn VecResampler<f32>>>;

/// A rubato sinc resampler: `interp` 0 linear, 1 nearest, 2 cubic.
fn sinc_option(len: usize, os: usize, interp: u8, window: WindowFunction) -> (String, Maker) {
    let params = move || SincInterpolationParameters {
        sinc_len: len,
        f_cutoff: rubato::calculate_cutoff(len, window),
        oversampling_factor: os,
        interpolation: match interp {
            0 => SincInterpolationType::Linear,
            1 => SincInterpolationType::Nearest,
            _ => SincInterpolationType::Cubic,
        },
        window,
    };
    let p = params();
    let name = format!(
        "sinc {:3} taps, oversampling {:4}, {:?}, {:?} ({:.1} kHz)",
        len,
        os,
        p.interpolation,
        window,
        p.f_cutoff * RATE as f32 / 2000.0
    );
    let make: Maker = Box::new(move |ratio, ch| {
        Box::new(SincFixedIn::<f32>::new(ratio, 1.02, params(), 240, ch).expect("rubato"))
    });
    (name, make)
}

fn poly_option(name: &str, degree: fn() -> PolynomialDegree) -> (String, Maker) {
    let make: Maker = Box::new(move |ratio, ch| {
        Box::new(FastFixedIn::<f32>::new(ratio, 1.02, degree(), 240, ch).expect("rubato"))
    });
    (format!("polynomial (FastFixedIn), {name}"), make)
}

/// THD+N of a sine at `f0` through a mono resampler at ratio 1.001, 2 s after start-up.
fn thd_at(make: &Maker, f0: f64) -> f64 {
    let ratio = 1.001;
    let mut rs = make(ratio, 1);
    let n = RATE as usize * 3;
    let input: Vec<f32> = (0..n)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * f0 * i as f64 / RATE as f64).sin()) as f32)
        .collect();
    let mut out = Vec::new();
    let mut outb = rs.output_buffer_allocate(true);
    for c in input.chunks_exact(240) {
        let (_, nout) = rs
            .process_into_buffer(&[c.to_vec()], &mut outb, None)
            .expect("process");
        out.extend_from_slice(&outb[0][..nout]);
    }
    let w = 2.0 * std::f64::consts::PI * f0 / ratio / RATE as f64;
    let x: Vec<f64> = out
        .iter()
        .skip(4800)
        .take(96_000)
        .map(|&v| f64::from(v))
        .collect();
    thd_n_db(&x, w)
}
