#!/usr/bin/env python3
"""What a trim in a pause costs speech (issue 16's transparency): PESQ-WB of the bench speech
(bench/quality.py, 16 s, five sentences) with N frames of silence inserted once, at the first
chance in each pause, for several lengths of silence that make a pause (the engine's
PAUSE_SEC). A pause is counted as the engine counts it: 2.5 ms blocks whose peak is under
-60 dBFS.

    target/bench-venv/bin/python scripts/pause_trims.py [N=100]
"""
import os
import sys
import tempfile

import numpy as np
from pesq import pesq
from scipy.signal import resample_poly

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import quality  # noqa: E402

BLOCK = 120  # 2.5 ms at 48 kHz
SILENCE = 0.001  # -60 dBFS


def mono16(x):
    return resample_poly(x.mean(axis=1), 1, 3)


def main():
    n_insert = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "speech.raw")
        quality.speech(path)
        x = quality.read_raw(path)
    n = len(x) // BLOCK
    silent = np.abs(x[: n * BLOCK]).reshape(n, BLOCK * 2).max(axis=1) < SILENCE
    ref = mono16(x)
    print(f"untouched: PESQ-WB {pesq(16000, ref, ref, 'wb'):.3f}")
    for pause_ms in [20, 50, 100, 200]:
        need = round(pause_ms * 48 / BLOCK)
        places, run = [], 0
        for i in range(n):
            run = run + 1 if silent[i] else 0
            if run == need + 1:
                places.append(i * BLOCK)
        scores = []
        for at in places:
            y = np.concatenate([x[:at], np.zeros((n_insert, 2)), x[at:]])
            scores.append(pesq(16000, ref, mono16(y)[: len(ref)], "wb"))
        s = np.array(scores)
        print(
            f"{n_insert} frames after {pause_ms} ms of silence: {len(places)} places, "
            f"PESQ-WB {s.min():.3f}-{s.max():.3f} (mean {s.mean():.3f})"
        )


if __name__ == "__main__":
    main()
