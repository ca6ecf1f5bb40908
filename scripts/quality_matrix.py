#!/usr/bin/env python3
"""Codec quality matrix (issue 17) and the scoring helper of tests/tests/quality.rs.

    quality_matrix.py speech OUT.raw [N]    espeak-ng speech (bench/quality.py's: its first N
                                            sentences, all five by default), 48 kHz stereo
    quality_matrix.py music OUT.raw         the music-like test signal, 48 kHz stereo
    quality_matrix.py opusenc IN.raw OUT.raw BITRATE FRAME_MS COMPLEXITY vbr|cvbr
                                            opusenc/opusdec (opus-tools) round trip; prints
                                            file_kbps (whole Ogg file, headers included)
    quality_matrix.py score REF.raw DEG.raw [visqol]
                                            JSON: lag, pesq_wb, dropouts, dropout_ms,
                                            dropout_at_s, warp_ms, stretch_ppm, snr_db,
                                            pesq_wb_destretched (the fitted stretch undone)
                                            (visqol_audio instead of pesq_wb with `visqol`)
    quality_matrix.py matrix OUT.md [quick] the matrix, as a Markdown section
    quality_matrix.py mono OUT.md           mono speech in a stereo vs a mono tunnel

All raw files are s16le, 48 kHz, 2 channels. The in-process codec cells run
target/release/examples/quality_matrix (the project's codec::Encoder/Decoder with the cell's
knobs). scripts/quality.sh installs what this needs and runs it.

Measures
  PESQ-WB  ITU-T P.862.2 through PyPI `pesq`, on the mono downmix resampled to 16 kHz, after
           aligning the degraded file to the reference by cross-correlation.
  ViSQOL   audio mode (v3, 48 kHz, full band; PyPI `visqol-python`, a Python port of Google's
           ViSQOL that reproduces the C++ audio-mode MOS on its conformance set), on the mono
           downmix of the aligned 48 kHz signals. PESQ is defined for speech up to 8 kHz only;
           ViSQOL's audio mode was built and validated for music and general audio coded
           with lossy codecs (Opus among them) and scores the band up to 24 kHz.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np
from scipy.signal import fftconvolve, resample_poly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import quality  # noqa: E402  (bench/quality.py: the benchmarks' espeak-ng speech)

RATE = 48000
EXAMPLE = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
    "release/examples/quality_matrix",
)

BITRATES = [16, 24, 32, 48, 64, 96]
FRAMES = [5, 10, 20]
COMPLEXITIES = [0, 5, 10]
MODES = ["vbr", "cvbr"]


read_raw = quality.read_raw
write_raw = quality.write_raw


def music(out, seconds=8.0):
    """A deterministic music-like stereo signal: plucked-string melody (Karplus-Strong) left
    of centre, a bass line in the centre, a sustained chord pad right of centre, kick drum and
    hi-hat noise bursts; tempo 120 bpm, peak -3 dBFS."""
    rng = np.random.default_rng(17)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    left = np.zeros(n)
    right = np.zeros(n)

    def pluck(freq, dur):
        period = int(round(RATE / freq))
        buf = rng.uniform(-1, 1, period)
        m = int(dur * RATE)
        y = np.empty(m)
        for i in range(m):
            y[i] = buf[i % period]
            buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        return y

    scale = [220.0, 261.63, 293.66, 329.63, 392.0, 440.0, 523.25, 587.33]
    melody = [0, 2, 4, 5, 4, 2, 3, 1, 0, 4, 6, 7, 6, 4, 2, 0]
    step = 0.25
    for k in range(int(seconds / step)):
        s = int(k * step * RATE)
        y = pluck(scale[melody[k % len(melody)]], 0.5)[: n - s]
        left[s : s + len(y)] += 0.30 * y
        right[s : s + len(y)] += 0.12 * y
    bass = [110.0, 110.0, 87.31, 98.0]
    for k in range(int(seconds / 0.5)):
        s = int(k * 0.5 * RATE)
        m = min(int(0.5 * RATE), n - s)
        tt = np.arange(m) / RATE
        f = bass[(k // 2) % len(bass)]
        y = sum(np.sin(2 * np.pi * f * h * tt) / h**1.5 for h in range(1, 6))
        y *= np.exp(-tt * 4) * np.minimum(1, tt * 200)
        left[s : s + m] += 0.25 * y
        right[s : s + m] += 0.25 * y
        # kick: falling pitch, fast decay
        kf = 50 + 100 * np.exp(-tt * 30)
        kick = np.sin(2 * np.pi * np.cumsum(kf) / RATE) * np.exp(-tt * 12)
        left[s : s + m] += 0.35 * kick
        right[s : s + m] += 0.35 * kick
    for k in range(int(seconds / 0.125)):
        s = int(k * 0.125 * RATE)
        m = min(int(0.06 * RATE), n - s)
        tt = np.arange(m) / RATE
        h = rng.standard_normal(m)
        h = np.diff(np.concatenate([[0], h]))  # tilt towards the top of the band
        h *= np.exp(-tt * 60)
        left[s : s + m] += 0.04 * h * (1.2 if k % 2 else 0.6)
        right[s : s + m] += 0.04 * h * (0.6 if k % 2 else 1.2)
    chord = [(220.0, 261.63, 329.63), (174.61, 220.0, 261.63)]
    for k in range(int(seconds / 2)):
        s = int(k * 2 * RATE)
        m = min(2 * RATE, n - s)
        tt = np.arange(m) / RATE
        env = np.minimum(1, tt * 8) * np.minimum(1, (2 - tt) * 8)
        pad = np.zeros(m)
        for f in chord[k % 2]:
            for h in range(1, 8):
                pad += np.sin(2 * np.pi * f * h * tt * (1.002 if h % 2 else 1)) / h
        right[s : s + m] += 0.05 * pad * env
        left[s : s + m] += 0.02 * pad * env
    x = np.stack([left, right], axis=1)
    x *= 10 ** (-3 / 20) / np.abs(x).max()
    del t
    write_raw(out, x)
    print(f"{seconds:.3f}")


def wav_from_raw(raw, wav_path):
    x = np.fromfile(raw, dtype="<i2")
    with wave.open(wav_path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.tobytes())


def opus_tools(inp, out, bitrate_k, frame_ms, comp, mode):
    """opusenc at its defaults except bitrate, frame size, complexity and VBR mode, then
    opusdec at its defaults (48 kHz, 16-bit, dithered). Returns the Ogg file's kbit/s."""
    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "in.wav")
        ogg = os.path.join(d, "x.opus")
        dec = os.path.join(d, "out.wav")
        wav_from_raw(inp, wav)
        args = ["opusenc", "--quiet", "--bitrate", str(bitrate_k), "--framesize",
                str(frame_ms), "--comp", str(comp)]
        args += {"vbr": [], "cvbr": ["--cvbr"], "cbr": ["--hard-cbr"]}[mode]
        subprocess.run(args + [wav, ogg], check=True)
        subprocess.run(["opusdec", "--quiet", "--rate", str(RATE), ogg, dec], check=True,
                       stderr=subprocess.DEVNULL)
        with wave.open(dec) as w:
            ch = w.getnchannels()
            y = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            if ch == 1:
                y = np.repeat(y, 2)
            y.astype("<i2").tofile(out)
        secs = os.path.getsize(inp) / 4 / RATE
        return os.path.getsize(ogg) * 8 / secs / 1000


def codec(inp, out, bitrate_k, frame_ms, comp, mode, channels=2):
    """The project's codec in-process (examples/quality_matrix). Returns its key=value line."""
    args = [EXAMPLE, inp, out, f"bitrate={bitrate_k * 1000}", f"frame_ms={frame_ms}",
            f"complexity={comp}", f"channels={channels}"]
    args += {"vbr": ["vbr=true", "vbr_constraint=false"],
             "cvbr": ["vbr=true", "vbr_constraint=true"],
             "cbr": ["vbr=false", "vbr_constraint=false"]}[mode]
    line = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split())}


_VISQOL = None


def visqol_audio(ref, deg):
    global _VISQOL
    if _VISQOL is None:
        from visqol.api import VisqolApi

        _VISQOL = VisqolApi()
        _VISQOL.create(mode="audio")
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name, x in (("ref.wav", ref), ("deg.wav", deg)):
            p = os.path.join(d, name)
            with wave.open(p, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes())
            paths.append(p)
        return float(_VISQOL.measure(paths[0], paths[1]).moslqo)


def measure(ref_path, deg_path, with_visqol=False, with_pesq=True):
    """Aligns DEG to REF and scores it (same alignment and dropout rule as bench/quality.py)."""
    r, d, lag = quality.mono_and_lag(read_raw(ref_path), read_raw(deg_path))
    out = {"lag": lag}
    if -480 < lag < 0:
        # opusdec's output is already aligned; at low bitrates the correlation peak can sit a
        # few samples early.
        d = np.concatenate([np.zeros(-lag), d])
        lag = 0
    if lag >= 0 and lag + len(r) > len(d) and lag + len(r) - len(d) < RATE // 10:
        d = np.concatenate([d, np.zeros(lag + len(r) - len(d))])
    if lag < 0 or lag + len(r) > len(d):
        out["error"] = f"reference not inside the recording (lag {lag})"
        return out
    ds = d[lag : lag + len(r)]
    err = ds - r
    out["snr_db"] = float(10 * np.log10((r**2).sum() / max((err**2).sum(), 1e-20)))
    # Dropouts: 10 ms blocks where the reference is active (> -45 dBFS) and the received audio
    # is 20 dB or more below it; neighbouring blocks count as one dropout. A receiver that
    # resamples to follow the sender's clock stretches time a little, so the rule is applied
    # per 0.5 s segment at that segment's own lag (cross-correlation within +-50 ms of the
    # global lag, median of three neighbouring segments against outliers), taking the loudest
    # of the received block shifted by up to +-2.5 ms; `warp_ms` is the spread of the local
    # lags.
    seg, reach, tol = RATE // 2, RATE // 20, 120
    starts, local = [], []
    for s0 in range(0, len(r) // seg * seg, seg):
        rs = r[s0 : s0 + seg]
        if (rs**2).mean() < 10 ** (-45 / 10) / 2 / 10:
            continue
        a, b = lag + s0 - reach, lag + s0 + seg + reach
        sl = 0
        if a >= 0 and b <= len(d):
            sl = int(np.argmax(fftconvolve(d[a:b], rs[::-1], mode="valid"))) - reach
        starts.append(s0)
        local.append(sl)
    smooth = [int(np.median(local[max(0, i - 1) : i + 2])) for i in range(len(local))]
    bad = np.zeros(len(r) // 480, dtype=bool)
    dp = np.concatenate([np.zeros(reach + tol), d, np.zeros(reach + tol + seg)])
    for s0, sl in zip(starts, smooth):
        er = (r[s0 : s0 + seg].reshape(-1, 480) ** 2).mean(axis=1)
        ed = np.max(
            [
                (dp[o : o + seg].reshape(-1, 480) ** 2).mean(axis=1)
                for o in range(reach + tol + lag + s0 + sl - tol, reach + tol + lag + s0 + sl + tol + 1, 60)
            ],
            axis=0,
        )
        bad[s0 // 480 : s0 // 480 + seg // 480] = (er > 10 ** (-45 / 10) / 2) & (ed < er / 100)
    out["dropouts"] = int(np.sum(bad[1:] & ~bad[:-1]) + (1 if len(bad) and bad[0] else 0))
    out["dropout_ms"] = int(bad.sum() * 10)
    out["dropout_at_s"] = [round(float(i) * 0.01, 2) for i in np.nonzero(bad)[0]]
    out["warp_ms"] = (max(smooth) - min(smooth)) / RATE * 1000 if smooth else 0.0
    # A uniform time stretch: what a receiver that plays slightly off the sender's rate does
    # to the signal (ppm; negative: the received audio is shorter). It is the median of the
    # lag's slopes from one active segment to the next, so that a step of the lag (a receive
    # buffer that grew or shrank by silence inserted or dropped in a pause, as receivers do
    # and PESQ forgives) is one slope among many and is not read as a stretch of the whole:
    # a least-squares line through the lags read a 4.6 ms step in a pause of the 7 s speech
    # as 1278 ppm.
    if len(starts) >= 2:
        xs, ys = np.array(starts, dtype=float), np.array(smooth, dtype=float)
        slope = float(np.median(np.diff(ys) / np.diff(xs)))
        icept = float(np.median(ys - slope * xs))
    else:
        slope, icept = 0.0, 0.0
    out["stretch_ppm"] = float(slope * 1e6)
    if with_pesq:
        from pesq import pesq

        def wb(x):
            return float(pesq(16000, resample_poly(r, 1, 3), resample_poly(x, 1, 3), "wb"))

        out["pesq_wb"] = wb(ds)
        # The same with that stretch undone (linear interpolation at the fitted positions):
        # the codec's share of the score, apart from the playout's rate.
        t = np.arange(len(r), dtype=float)
        out["pesq_wb_destretched"] = wb(np.interp(lag + icept + t * (1 + slope), np.arange(len(d)), d))
    if with_visqol:
        out["visqol_audio"] = visqol_audio(r, ds)
    return out


def versions():
    def ver(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0].split("  Data at")[0]
        except (OSError, IndexError):
            return "?"

    from importlib.metadata import version

    return (f"{ver(['opusenc', '--version'])}; {ver(['espeak-ng', '--version'])}; "
            f"pesq {version('pesq')}; visqol-python {version('visqol-python')}")


def matrix(out_md, quick=False):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        sp, mu = os.path.join(d, "speech.raw"), os.path.join(d, "music.raw")
        with open(os.devnull, "w") as null:
            so, sys.stdout = sys.stdout, null
            quality.speech(sp)
            music(mu)
            sys.stdout = so
        deg = os.path.join(d, "deg.raw")
        rows = []
        cells = [(b, f, c, m) for b in BITRATES for f in FRAMES for c in COMPLEXITIES for m in MODES]
        if quick:
            cells = [(64, 20, 10, "vbr"), (64, 20, 10, "cvbr"), (64, 20, 5, "vbr")]
        for i, (b, f, c, m) in enumerate(cells):
            row = {"bitrate": b, "frame": f, "comp": c, "mode": m}
            r = codec(sp, deg, b, f, c, m)
            row["speech_wire"] = r["wire_kbps"]
            row["speech_codec"] = measure(sp, deg)["pesq_wb"]
            opus_tools(sp, deg, b, f, c, m)
            row["speech_opusenc"] = measure(sp, deg)["pesq_wb"]
            r = codec(mu, deg, b, f, c, m)
            row["music_wire"] = r["wire_kbps"]
            row["music_codec"] = measure(mu, deg, True, False)["visqol_audio"]
            opus_tools(mu, deg, b, f, c, m)
            row["music_opusenc"] = measure(mu, deg, True, False)["visqol_audio"]
            rows.append(row)
            print(f"[{i + 1}/{len(cells)} {time.time() - t0:.0f}s] {json.dumps(row)}", file=sys.stderr)
    with open(out_md, "w") as o:
        o.write(f"Measured {time.strftime('%Y-%m')} by `scripts/quality.sh` in "
                f"{time.time() - t0:.0f} s ({versions()}).\n\n")
        o.write("| kbit/s | frame ms | complexity | VBR | speech PESQ-WB codec | speech PESQ-WB opusenc "
                "| music ViSQOL codec | music ViSQOL opusenc | wire kbit/s speech | wire kbit/s music |\n")
        o.write("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            o.write(f"| {r['bitrate']} | {r['frame']} | {r['comp']} | {r['mode']} "
                    f"| {r['speech_codec']:.2f} | {r['speech_opusenc']:.2f} "
                    f"| {r['music_codec']:.2f} | {r['music_opusenc']:.2f} "
                    f"| {r['speech_wire']:.1f} | {r['music_wire']:.1f} |\n")
    with open(out_md + ".json", "w") as o:
        json.dump(rows, o, indent=1)


def mono(out_md):
    """Mono speech (L = R), 20 ms, complexity 10, at 16-96 kbit/s with unconstrained and
    constrained VBR: through a stereo codec, through a mono codec (what channels=1, or a
    detector that told the encoder, would give), and opusenc with the same stereo file."""
    with tempfile.TemporaryDirectory() as d:
        sp = os.path.join(d, "speech.raw")
        with open(os.devnull, "w") as null:
            so, sys.stdout = sys.stdout, null
            quality.speech(sp)
            sys.stdout = so
        deg = os.path.join(d, "deg.raw")
        lines = []
        for m in ("vbr", "cvbr"):
            for b in (16, 24, 32, 48, 64, 96):
                st = codec(sp, deg, b, 20, 10, m, channels=2)
                p_st = measure(sp, deg)["pesq_wb"]
                mo = codec(sp, deg, b, 20, 10, m, channels=1)
                p_mo = measure(sp, deg)["pesq_wb"]
                opus_tools(sp, deg, b, 20, 10, m)
                p_oe = measure(sp, deg)["pesq_wb"]
                lines.append(f"| {b} | {m} | {p_st:.2f} | {st['wire_kbps']:.1f} | {p_mo:.2f} "
                             f"| {mo['wire_kbps']:.1f} | {p_mo - p_st:+.2f} | {p_oe:.2f} |")
                print(lines[-1], file=sys.stderr)
    with open(out_md, "w") as o:
        o.write("| kbit/s | VBR | stereo codec PESQ-WB | stereo wire kbit/s | mono codec "
                "(channels=1) PESQ-WB | mono wire kbit/s | mono − stereo | opusenc, same stereo "
                "file |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
        o.write("\n".join(lines) + "\n")


def main():
    a = sys.argv[1:]
    if len(a) in (2, 3) and a[0] == "speech":
        quality.speech(a[1], int(a[2]) if len(a) == 3 else None)
    elif len(a) == 2 and a[0] == "music":
        music(a[1])
    elif len(a) == 7 and a[0] == "opusenc":
        kbps = opus_tools(a[1], a[2], a[3], a[4], int(a[5]), a[6])
        print(f"file_kbps={kbps:.2f}")
    elif len(a) in (3, 4) and a[0] == "score":
        v = len(a) == 4
        print(json.dumps(measure(a[1], a[2], with_visqol=v, with_pesq=not v)))
    elif len(a) in (2, 3) and a[0] == "matrix":
        matrix(a[1], quick=len(a) == 3)
    elif len(a) == 2 and a[0] == "mono":
        mono(a[1])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
