"""Merge the records of benchmarks/gpu.sh into OUT/gpu.json and print the table with the targets."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TARGETS = {"clip": ("images_per_second", 2000.0), "vlm": ("questions_per_second", 150.0)}
MIN_SPEEDUP = 8.0


def main(out: str) -> None:
    folder = Path(out)
    records = {
        p.stem[len("gpu-") :]: json.loads(p.read_text()) for p in sorted(folder.glob("gpu-*.json"))
    }
    rows = []
    for name, rec in records.items():
        best = max(rec["sweep"], key=lambda r: r["images_per_second"])
        kind = "clip" if name.startswith("clip") else "vlm"
        metric, target = TARGETS[kind]
        base = rec.get("baseline", {})
        rows.append(
            {
                "run": name,
                "model": rec["model"],
                "device": rec["device"],
                "batch": best["batch_size"],
                "images/s": best["images_per_second"],
                "questions/s": best["questions_per_second"],
                "after 1st batch img/s": best.get("steady_images_per_second"),
                "after 1st batch q/s": best.get("steady_questions_per_second"),
                "1st batch s": best.get("first_batch_seconds"),
                "forward share": best.get("forward_share"),
                "forward-only q/s": best.get("forward_questions_per_second"),
                "waiting for input": best.get("input_wait_share"),
                "in processor": best.get("preprocess_share"),
                "decode s": best.get("decode_seconds"),
                "peak GiB": best.get("peak_gpu_memory_gib", best.get("peak_rss_gib")),
                "TFLOP/s": rec.get("achieved_tflops"),
                "kernels/batch": rec.get("profile", {}).get("device_kernels"),
                "loop q/s": base.get("questions_per_second"),
                "speedup": base.get("speedup"),
                "agreement": base.get("agreement"),
                "target": f"{metric.split('_')[0]}/s >= {target:g}, >= {MIN_SPEEDUP:g}x",
                # the targets are for real sizes on an H200; a toy-size dry run meets nothing
                "met": (
                    bool(best[metric] >= target and (base.get("speedup") or 0) >= MIN_SPEEDUP)
                    if rec.get("size", "real") == "real"
                    else None
                ),
            }
        )
    cols = list(rows[0]) if rows else []
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)))
    merged = {"date": time.strftime("%Y-%m-%d"), "summary": rows, "records": records}
    va = folder / "gpu_vision_attention.json"
    if va.exists():  # written by this run of gpu.sh (it is removed before the run)
        merged["vision_attention"] = json.loads(va.read_text())
    (folder / "gpu.json").write_text(json.dumps(merged, indent=2))
    print(f"wrote {folder / 'gpu.json'}")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
