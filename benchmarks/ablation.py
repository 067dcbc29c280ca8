"""The training ablation: each recipe change against the default, same budget, several seeds.

    python benchmarks/ablation.py --minutes 10 --seeds 0 1 [--configs default boundary ...]
    python benchmarks/ablation.py --summary            # the markdown table of what has run

Every run is ``edgeseg train --data camvid:../shared/data/camvid --minutes M --seed S`` plus the
configuration's flags, written to ``runs/ablation/<config>-m<M>-s<S>`` (a finished run is not
repeated). Runs go one after another: on a 2-core CPU two at once would each get half the
machine and a time budget would mean something else. The summary gives, per configuration, the
mean val mIoU over seeds, its spread (half the range), the difference to ``default`` and the
thin classes' IoU (Pole, SignSymbol, Pedestrian, Bicyclist). ``--minutes`` takes fractions;
``--data SPEC`` trains on another dataset (give it its own ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DATA = "camvid:../shared/data/camvid"
DASHCAM = "../shared/data/video/dashcam_960x540.mp4"
CONFIGS: dict[str, list[str]] = {
    "default": ["--model", "mbv3_unet_small"],
    "boundary": ["--model", "mbv3_unet_small", "--loss", "ce+dice+boundary"],
    "classmix": ["--model", "mbv3_unet_small", "--mix", "classmix"],
    "cutmix": ["--model", "mbv3_unet_small", "--mix", "cutmix"],
    "mean-teacher": ["--model", "mbv3_unet_small", "--unlabeled", DASHCAM],
    "lraspp": ["--model", "mbv3_lraspp_small"],
    "lraspp-large": ["--model", "mbv3_lraspp_large"],
    "lraspp-low4": ["--model", "mbv3_lraspp_small", "--model-kwargs", '{"low_stride": 4}'],
    "lraspp-boundary": ["--model", "mbv3_lraspp_small", "--loss", "ce+dice+boundary"],
    "lraspp-mean-teacher": ["--model", "mbv3_lraspp_small", "--unlabeled", DASHCAM],
    "deeplabv3p": ["--model", "mbv3_deeplabv3p"],
    "minimal": ["--model", "mbv3_unet_small_minimal"],
}
THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")


def run(
    out: Path, config: str, minutes: float, seed: int, extra: list[str], data: str = DATA
) -> Path:
    folder = out / f"{config}-m{minutes:g}-s{seed}"
    if (folder / "metrics.json").is_file():
        return folder
    cmd = [sys.executable, "-m", "edgeseg", "train", "--data", data, "--minutes", str(minutes)]
    cmd += ["--seed", str(seed), "--out", str(folder), "--quiet", *CONFIGS[config], *extra]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return folder


def summary(out: Path) -> str:
    rows: dict[tuple[str, str], list[dict]] = {}
    for m in sorted(out.glob("*/metrics.json")):
        config, minutes, _ = m.parent.name.rsplit("-", 2)
        rows.setdefault((config, minutes), []).append(json.loads(m.read_text()))
    base = {
        mins: statistics.mean(r["val_miou"] for r in runs)
        for (c, mins), runs in rows.items()
        if c == "default"
    }
    lines = [
        "| configuration | budget | seeds | val mIoU (mean ± half range) | vs default (points) | "
        + " | ".join(THIN)
        + " | iterations |",
        "|---|---|---|---|---|" + "---|" * len(THIN) + "---|",
    ]
    for (config, minutes), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mious = [r["val_miou"] for r in runs]
        mean = statistics.mean(mious)
        spread = (max(mious) - min(mious)) / 2
        spread_text = f" ± {spread:.4f}" if len(runs) > 1 else ""
        delta = f"{100 * (mean - base[minutes]):+.1f}" if minutes in base else ""
        thin = [statistics.mean(r["per_class_iou"].get(c, 0.0) for r in runs) for c in THIN]
        its = statistics.mean(r["iterations"] for r in runs)
        lines.append(
            f"| {config} | {minutes[1:]} min | {len(runs)} | {mean:.4f}{spread_text} | {delta} | "
            + " | ".join(f"{t:.3f}" for t in thin)
            + f" | {its:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--data", default=DATA, help=f"dataset spec for every run (default: {DATA})")
    ap.add_argument("--summary", action="store_true", help="print the table and stop")
    ap.add_argument("extra", nargs="*", help="more edgeseg train flags for every run (after --)")
    a = ap.parse_args()
    out = Path(a.out)
    if not a.summary:
        for seed in a.seeds:
            for config in a.configs:
                run(out, config, a.minutes, seed, a.extra, a.data)
    print(summary(out))


if __name__ == "__main__":
    main()
