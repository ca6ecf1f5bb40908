#!/usr/bin/env python3
"""What libopus alone does to a tone under random packet loss, by coding mode (issue 18's
record direction): a 1 kHz tone at -12 dBFS, mono, 120 s, through `opusenc --framesize 10`
(speech mode at 32 kbit/s, as the tunnel source's voice default coded it until 2026-12-07;
music mode at 32 kbit/s; libopus's own choice at 32 kbit/s, the tunnel source's default since;
64 kbit/s as the tunnel sink's default) and `opusdec --packet-loss N` (random loss,
the decoder's concealment), counting 10 ms blocks more than 10 and 20 dB below the median (the
first second left out). Needs sox and opus-tools (scripts/quality.sh --setup installs them).

    target/bench-venv/bin/python scripts/opus_loss_tone.py [LOSS_PCT ...]   (default: 2 5)
"""
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np

MODES = [
    ("speech, 32 kbit/s", ["--speech", "--bitrate", "32"]),
    ("music, 32 kbit/s", ["--music", "--bitrate", "32"]),
    ("auto, 32 kbit/s", ["--bitrate", "32"]),
    ("auto, 64 kbit/s", ["--bitrate", "64"]),
]


def blocks_db(path):
    with wave.open(path) as w:
        ch = w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    x = x.astype(float).reshape(-1, ch)[:, 0] / 32768.0
    b = 480
    m = len(x) // b
    db = 10 * np.log10(np.mean(x[: m * b].reshape(m, b) ** 2, axis=1) + 1e-12)
    return db[100:]


def main():
    losses = [int(a) for a in sys.argv[1:]] or [2, 5]
    with tempfile.TemporaryDirectory() as d:
        tone = os.path.join(d, "tone.wav")
        coded = os.path.join(d, "tone.opus")
        out = os.path.join(d, "out.wav")
        subprocess.run(
            ["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", tone,
             "synth", "120", "sine", "1000", "vol", "0.2512"],
            check=True,
        )
        print("| mode | loss % | median dBFS | quietest dBFS | blocks > 10 dB below | > 20 dB below |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, args in MODES:
            subprocess.run(
                ["opusenc", "--quiet", "--framesize", "10", *args, tone, coded], check=True
            )
            for loss in losses:
                subprocess.run(
                    ["opusdec", "--quiet", "--packet-loss", str(loss), coded, out],
                    check=True,
                    stderr=subprocess.DEVNULL,
                )
                db = blocks_db(out)
                med = float(np.median(db))
                print(
                    f"| {name} | {loss} | {med:.1f} | {db.min():.1f} | "
                    f"{int((db < med - 10).sum())} | {int((db < med - 20).sum())} |"
                )


if __name__ == "__main__":
    main()
