#!/usr/bin/env python3
"""What libopus alone does when a packet that is only late is concealed first and then
decoded (the receive engine does this: it asks the decoder for concealment when the buffer is
about to run dry, and plays the late packet when it comes). A 1 kHz tone at -12 dBFS, mono,
20 ms frames, through libopus (ctypes); at 1.0 s the decoder conceals one frame (5 ms of it
kept, as the engine keeps what it asked for), then decodes the packet it concealed and goes
on. Prints, per mode, the 5 ms windows after that point whose 1 kHz level is more than 1 dB
off the tone's. Needs libopus0 and numpy (target/bench-venv).

    target/bench-venv/bin/python scripts/opus_late_packet.py
"""
import ctypes
import ctypes.util

import numpy as np

RATE, FRAME = 48000, 960
APPLICATION_AUDIO, SET_BITRATE, SET_SIGNAL = 2049, 4002, 4024
SIGNAL = {"speech": 3001, "music": 3002}
MODES = [("speech", 32000), ("music", 32000), ("speech", 64000)]


def run(lib, signal, bitrate, conceal):
    err = ctypes.c_int()
    enc = ctypes.c_void_p(lib.opus_encoder_create(RATE, 1, APPLICATION_AUDIO, ctypes.byref(err)))
    lib.opus_encoder_ctl(enc, SET_BITRATE, ctypes.c_int(bitrate))
    lib.opus_encoder_ctl(enc, SET_SIGNAL, ctypes.c_int(SIGNAL[signal]))
    dec = ctypes.c_void_p(lib.opus_decoder_create(RATE, 1, ctypes.byref(err)))
    amp = 10 ** (-12 / 20)
    pcm = (ctypes.c_float * FRAME)()
    out = (ctypes.c_float * FRAME)()
    pkt = (ctypes.c_ubyte * 1500)()
    played = []
    for k in range(100):
        t = (np.arange(FRAME) + k * FRAME) / RATE
        pcm[:] = (amp * np.sin(2 * np.pi * 1000 * t)).astype(np.float32).tolist()
        n = lib.opus_encode_float(enc, pcm, FRAME, pkt, 1500)
        if conceal and k == 50:
            got = lib.opus_decode_float(dec, None, 0, out, FRAME, 0)
            played.extend(out[: min(240, got)])
        got = lib.opus_decode_float(dec, pkt, n, out, FRAME, 0)
        played.extend(out[:got])
    lib.opus_encoder_destroy(enc)
    lib.opus_decoder_destroy(dec)
    x = np.array(played)
    i = np.arange(len(x))
    z = x * np.exp(-2j * np.pi * 1000 * i / RATE)
    env = np.array([2 * abs(z[j : j + 240].mean()) for j in range(0, len(x) - 240, 240)])
    start = 50 * FRAME // 240
    db = 20 * np.log10(env[start : start + 80] / amp + 1e-12)
    return [(w * 5, round(float(v), 1)) for w, v in enumerate(db) if abs(v) > 1.0]


def main():
    lib = ctypes.CDLL(ctypes.util.find_library("opus") or "libopus.so.0")
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.restype = ctypes.c_void_p
    for f in ("opus_encoder_ctl", "opus_encoder_destroy", "opus_decoder_destroy"):
        getattr(lib, f).argtypes = None
    lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_void_p, ctypes.c_int]
    lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.opus_encoder_ctl.argtypes = None
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encoder_ctl.restype = ctypes.c_int
    ver = ctypes.CDLL(ctypes.util.find_library("opus") or "libopus.so.0").opus_get_version_string
    ver.restype = ctypes.c_char_p
    print(ver().decode())
    for signal, bitrate in MODES:
        for conceal in (False, True):
            off = run(lib, signal, bitrate, conceal)
            what = "concealed, then decoded" if conceal else "decoded in time"
            print(f"{signal}, {bitrate // 1000} kbit/s, the packet at 1.0 s {what}: "
                  f"{len(off)} windows of 5 ms more than 1 dB off (ms after it: dB) {off[:12]}")


if __name__ == "__main__":
    main()
