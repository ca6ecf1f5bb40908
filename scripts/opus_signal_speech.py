#!/usr/bin/env python3
"""Speech through libopus alone by the encoder's signal hint (the tunnel source's default
changed from `voice` to `auto` on 2026-12-07): the bench's speech (bench/quality.py: five
Harvard sentences by espeak-ng, 48 kHz), its left channel as a mono file, through
`opusenc --bitrate 32` with `--speech`, with no hint (libopus's own choice) and with `--music`,
at 20 and 10 ms frames, then `opusdec` with 0 % and 2 % random packet loss; PESQ-WB against
the original. Needs espeak-ng, opus-tools and the bench venv (numpy, scipy, pesq).

    target/bench-venv/bin/python scripts/opus_signal_speech.py
"""
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np
from pesq import pesq
from scipy.signal import resample_poly

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = [("voice", ["--speech"]), ("auto", []), ("music", ["--music"])]


def main():
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "speech.raw")
        subprocess.run(
            [sys.executable, os.path.join(HERE, "..", "bench", "quality.py"), "speech", raw],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        x = np.fromfile(raw, dtype="<i2").reshape(-1, 2)[:, 0]
        src = os.path.join(d, "in.wav")
        with wave.open(src, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(48000)
            w.writeframes(x.tobytes())
        ref = x.astype(float) / 32768
        coded, out = os.path.join(d, "c.opus"), os.path.join(d, "o.wav")
        print("| signal | frame ms | loss % | PESQ-WB |")
        print("|---|---:|---:|---:|")
        for name, args in MODES:
            for frame in ["20", "10"]:
                subprocess.run(
                    ["opusenc", "--quiet", "--bitrate", "32", "--framesize", frame, *args, src,
                     coded],
                    check=True,
                )
                for loss in [0, 2]:
                    subprocess.run(
                        ["opusdec", "--quiet", "--packet-loss", str(loss), coded, out],
                        check=True,
                        stderr=subprocess.DEVNULL,
                    )
                    with wave.open(out) as w:
                        y = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
                    y = y.astype(float) / 32768
                    n = min(len(ref), len(y))
                    score = pesq(
                        16000, resample_poly(ref[:n], 1, 3), resample_poly(y[:n], 1, 3), "wb"
                    )
                    print(f"| {name} | {frame} | {loss} | {score:.3f} |")


if __name__ == "__main__":
    main()
