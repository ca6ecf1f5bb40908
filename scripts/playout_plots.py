"""Draws the playout simulation's traces (CSV: t_s, latency_ms, target_ms, correction_ppm)
as one PNG per trace: latency and target above, the correction beyond the exact skew below."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "lan": "Start on a LAN (0–2 ms jitter, 10 ms packets, 300 ppm skew)",
    "wan_tcp": "WAN over TCP: 20 ms one-way, 0–5 ms jitter, 1 % loss (retransmissions)",
    "blocks_500ms": "A sender that posts 500 ms blocks",
    "calming_pauses": "0–60 ms jitter that calms at 60 s; audio with pauses (trims)",
    "wifi_bursts": "Wi-Fi-like bursts: 0–40 ms more for 2 s every 20 s",
}


def main(src: str, dst: str) -> None:
    for path in sorted(Path(src).glob("*.csv")):
        rows = list(csv.DictReader(path.open()))
        if not rows:
            continue
        t = [float(r["t_s"]) for r in rows]
        lat = [float(r["latency_ms"]) for r in rows]
        tgt = [float(r["target_ms"]) for r in rows]
        cor = [float(r["correction_ppm"]) for r in rows]
        fig, (a, b) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
        a.plot(t, lat, label="latency", lw=1)
        a.plot(t, tgt, label="target", lw=1)
        a.set_ylabel("ms")
        a.legend(loc="upper right")
        a.set_title(TITLES.get(path.stem, path.stem))
        a.grid(alpha=0.3)
        b.plot(t, cor, color="tab:red", lw=1)
        b.set_ylabel("ratio − exact, ppm")
        b.set_xlabel("s")
        b.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(dst) / f"{path.stem}.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
