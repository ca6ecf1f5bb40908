#!/usr/bin/env python3
"""Quality scoring for the opus-tunnel benchmarks (run by tests/src/bin/bench).

    quality.py speech OUT.raw            espeak-ng speech -> 48 kHz stereo s16le, prints seconds
    quality.py score REF.raw DEG.raw     aligns DEG to REF (cross-correlation), prints JSON:
                                         lag (samples), pesq_wb (16 kHz), snr_db (48 kHz),
                                         bit_exact_fraction

Both files are raw s16le, 48 kHz, 2 channels. PESQ is ITU-T P.862.2 wideband through the
PyPI `pesq` package, on the mono downmix resampled to 16 kHz (scipy resample_poly).
"""
import json
import subprocess
import sys
import tempfile
import wave

import numpy as np
from scipy.signal import resample_poly, fftconvolve

RATE = 48000

SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
]


def read_raw(path):
    x = np.fromfile(path, dtype="<i2").astype(np.float64) / 32768.0
    return x[: len(x) // 2 * 2].reshape(-1, 2)


def write_raw(path, x):
    y = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    y.tofile(path)


def espeak(voice, text):
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-w", f.name, text],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with wave.open(f.name) as w:
            sr = w.getframerate()
            ch = w.getnchannels()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
            return sr, x.reshape(-1, ch).mean(axis=1) / 32768.0


def speech(out, count=None):
    # A male and a female voice, alternating sentences (Harvard sentences); the first `count`
    # of them (all by default).
    parts = []
    for i, s in enumerate(SENTENCES[:count]):
        sr, x = espeak("en-us" if i % 2 == 0 else "en-us+f3", s)
        parts += [x, np.zeros(sr * 3 // 10)]
    x = np.concatenate(parts)
    g = np.gcd(sr, RATE)
    y = resample_poly(x, RATE // g, sr // g)
    # Active speech level about -26 dBov (P.56-ish, RMS over the louder half of 10 ms blocks).
    blk = y[: len(y) // 480 * 480].reshape(-1, 480)
    e = np.sort((blk ** 2).mean(axis=1))
    active = np.sqrt(e[len(e) // 2 :].mean())
    y = y * (10 ** (-26 / 20) / active)
    pad = np.zeros(RATE // 2)
    y = np.concatenate([pad, y, pad])
    write_raw(out, np.stack([y, y], axis=1))
    print(f"{len(y) / RATE:.3f}")


def mono_and_lag(ref, deg):
    """The mono downmixes of REF and DEG, and the lag (samples) of REF inside DEG: the peak of
    their cross-correlation."""
    r = ref.mean(axis=1)
    d = deg.mean(axis=1)
    c = fftconvolve(d, r[::-1], mode="full")
    return r, d, int(np.argmax(c)) - (len(r) - 1)


def score(ref_path, deg_path):
    ref = read_raw(ref_path)
    deg = read_raw(deg_path)
    r, d, lag = mono_and_lag(ref, deg)
    out = {"lag": lag}
    if lag >= 0 and lag + len(r) > len(d) and lag + len(r) - len(d) < RATE // 10:
        # A codec's output can end a few ms short of the input (partial last frame).
        deg = np.concatenate([deg, np.zeros((lag + len(r) - len(d), 2))])
    if lag < 0 or lag + len(r) > len(deg):
        out["error"] = f"reference not inside the recording (lag {lag})"
        print(json.dumps(out))
        return
    seg = deg[lag : lag + len(ref)]
    ds = seg.mean(axis=1)
    err = ds - r
    out["snr_db"] = float(10 * np.log10((r ** 2).sum() / max((err ** 2).sum(), 1e-20)))
    # Dropouts: 10 ms blocks where the reference is active (> -45 dBFS) and the received
    # audio is 20 dB or more below it; neighbouring blocks count as one dropout.
    n = len(r) // 480 * 480
    er = (r[:n].reshape(-1, 480) ** 2).mean(axis=1)
    ed = (ds[:n].reshape(-1, 480) ** 2).mean(axis=1)
    bad = (er > 10 ** (-45 / 10) / 2) & (ed < er / 100)
    out["dropouts"] = int(np.sum(bad[1:] & ~bad[:-1]) + (1 if len(bad) and bad[0] else 0))
    out["dropout_ms"] = int(bad.sum() * 10)
    ri = np.round(ref * 32768).astype(np.int32)
    si = np.round(seg * 32768).astype(np.int32)
    out["bit_exact_fraction"] = float((ri == si).mean())
    try:
        from pesq import pesq

        r16 = resample_poly(r, 1, 3)
        d16 = resample_poly(ds, 1, 3)
        out["pesq_wb"] = float(pesq(16000, r16, d16, "wb"))
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        out["pesq_error"] = str(e)
    print(json.dumps(out))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "speech":
        speech(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
