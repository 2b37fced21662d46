"""One markdown table from several `scd eval` folders: the window means of each model beside the trivial baselines.

    python scripts/ablation_table.py out/eval/scd-v out/eval/scd-x out/eval/scd-change ...

Rows: every model of every folder (label, training step), then the copy-last-frame and context-mean baselines once
(they must be the same clips in every folder: same data, videos, context and horizon, checked). Columns: PSNR, SSIM
and LPIPS over generated frames 1-16, colour-histogram distance and sharpness ratio over frames 1-16 and the last 16,
the motion gap and the FVD of the last 16 ("-" where the evaluation ran without FVD).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAME_CLIPS = ("context", "horizon", "start")  # settings that must agree for the baselines to be shared


def load(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{folder}: no metrics.json (run scd eval --out {folder} first)")
    return json.loads(path.read_text())


def row(model: dict, first: str, last: str) -> str:
    w, z = model["windows"][first], model["windows"][last]
    step = model["checkpoint"].get("step")
    name = model["label"] if step is None else f"{model['label']} ({step} steps)"
    cells = [f"{w['psnr']:.2f}", f"{w['ssim']:.3f}", f"{w['lpips']:.3f}", f"{w['color_hist']:.3f}",
             f"{z['color_hist']:.3f}", f"{w['sharpness']:.2f}", f"{z['sharpness']:.2f}", f"{z['motion']:+.4f}",
             "-" if z.get("fvd") is None else f"{z['fvd']:.0f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(folders: list[str]) -> None:
    if not folders:
        raise SystemExit(__doc__)
    reports = [load(Path(f)) for f in folders]
    reference = reports[0]
    for folder, report in zip(folders, reports):
        if report["data"]["meta_sha256"] != reference["data"]["meta_sha256"] or report["episodes"] != reference[
                "episodes"] or any(report["settings"][k] != reference["settings"][k] for k in SAME_CLIPS):
            raise SystemExit(f"{folder}: other clips than {folders[0]} (data, videos, context, horizon or start)")
    windows = list(reference["models"][0]["windows"])
    first, last = windows[0], windows[-1]
    print(f"| model | PSNR {first} | SSIM {first} | LPIPS {first} | colour-hist {first} | colour-hist {last} "
          f"| sharpness {first} | sharpness {last} | motion {last} | FVD {last} |")
    print("| --- | " + " | ".join(["---"] * 9) + " |")
    for report in reports:
        for model in report["models"]:
            if model["arch"] != "baseline":
                print(row(model, first, last))
    for model in reference["models"]:
        if model["arch"] == "baseline":
            print(row(model, first, last))


if __name__ == "__main__":
    main(sys.argv[1:])
