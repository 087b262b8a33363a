"""Sliding-window inference of one 1x1x64x512x512 volume with the built-in 3D UNet (width 8, depth 2,
eval, no_grad): (a) the whole volume in one forward pass, (b) segtrack.sliding_window and (c) MONAI's
sliding_window_inference, both with roi 32x128x128, overlap 0.5, gaussian blending and 4 windows per
forward pass. Target: segtrack/MONAI time <= 1.1x.

Each run is its own subprocess, so its peak RSS (ru_maxrss) is its own; the time is of the inference
call alone, after a one-window warm-up. (b) and (c) alternate within each round; medians are reported.
``python bench/bench_sliding_window.py [rounds] [whole_rounds]`` (defaults 3 and 1; 0 whole rounds
skips (a), which takes about 30 s and 4 GB)
"""

from __future__ import annotations

import importlib.util
import json
import resource
import subprocess
import sys
import time

from benchlib import interleaved, median, report

VOLUME, ROI, OVERLAP, BATCH = (1, 1, 64, 512, 512), (32, 128, 128), 0.5, 4


def run_case(case: str) -> dict[str, float]:
    """In a child process: build the model and volume, warm up on one window, time one inference."""
    import torch

    from segtrack.inference.windowed import sliding_window
    from segtrack.models.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(1, 2, dims=3, width=8, depth=2).eval()
    volume = torch.randn(VOLUME, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(volume[:, :, : ROI[0], : ROI[1], : ROI[2]])
        setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        if case == "whole":
            logits = model(volume)
        elif case == "segtrack":
            logits = sliding_window(model, volume, ROI, overlap=OVERLAP, mode="gaussian", batch_size=BATCH)
        else:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(volume, ROI, BATCH, model, overlap=OVERLAP, mode="gaussian")
        seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    margin = float((logits[:, 1] - logits[:, 0]).mean())  # the same figure from (b) and (c) shows they agree
    return {"seconds": seconds, "peak_mb": peak_kb / 1024, "setup_mb": setup_kb / 1024, "margin": margin}


def in_child(case: str, results: dict[str, list[dict[str, float]]]) -> None:
    done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True, check=True)
    results[case].append(json.loads(done.stdout.strip().splitlines()[-1]))


def rows_for(label: str, runs: list[dict[str, float]]) -> list[tuple[str, str, str]]:
    count = f"median of {len(runs)}"
    return [
        (f"{label}: time", f"{median([r['seconds'] for r in runs]):.2f} s", count),
        (
            f"{label}: peak RSS",
            f"{median([r['peak_mb'] for r in runs]):.0f} MB",
            f"{median([r['setup_mb'] for r in runs]):.0f} MB before the call; mean logit margin "
            f"{median([r['margin'] for r in runs]):.5f}",
        ),
    ]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    whole_rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    has_monai = importlib.util.find_spec("monai") is not None
    results: dict[str, list[dict[str, float]]] = {"whole": [], "segtrack": [], "monai": []}
    for _ in range(whole_rounds):
        in_child("whole", results)
    cases = ["segtrack", "monai"] if has_monai else ["segtrack"]
    interleaved({case: lambda case=case: in_child(case, results) for case in cases}, rounds)

    rows = rows_for("(a) whole volume, one pass", results["whole"]) if whole_rounds else []
    rows += rows_for("(b) segtrack sliding_window", results["segtrack"])
    if has_monai:
        rows += rows_for("(c) MONAI sliding_window_inference", results["monai"])
        ratio = median([r["seconds"] for r in results["segtrack"]]) / median([r["seconds"] for r in results["monai"]])
        rows.append(("ratio segtrack/MONAI time", f"{ratio:.3f}x", f"target <= 1.1x ({rounds} interleaved rounds)"))
    else:
        rows.append(("(c) MONAI", "not measured", "monai is not importable: pip install --no-deps monai"))
    report(
        f"sliding-window inference, volume {'x'.join(map(str, VOLUME))}, 3D UNet width 8 depth 2, roi "
        f"{'x'.join(map(str, ROI))}, overlap {OVERLAP}, gaussian, {BATCH} windows per pass "
        f"(python bench/bench_sliding_window.py {rounds} {whole_rounds})",
        rows,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        print(json.dumps(run_case(sys.argv[2])))
    else:
        main()
