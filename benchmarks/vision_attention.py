"""Qwen2.5-VL vision tower: transformers' per-window attention loop against hierzoo's
window-batched attention (hierzoo.models._vision_attention), in one process.

The geometry is the real one: 16 images of 500x375 px through the Qwen2-VL image processor
(patch 14, merge 2: 504x364 px, 26x36 patches, 20 windows of 4x4 merged tokens or smaller at
the edges), the 7B vision config's 32 blocks, window size 112 and full attention in blocks
7, 15, 23 and 31. Only the width is small (default 2 heads of the real head size 80, MLP 320)
so a forward runs in seconds on a CPU; the number of attention calls per forward is that of the
real tower. Random weights, ``sdpa``, float32 on the CPU by default.

    python benchmarks/vision_attention.py [--images 16] [--heads 2] [--repeats 3] [--threads N]
    python benchmarks/vision_attention.py --device cuda --dtype bfloat16 --heads 16 --mlp 3420

(the second: the 7B tower's full size on a GPU; there the time inside the attention modules is
not measured, as timing them would need a synchronization per module).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import print_table, write_json
from PIL import Image
from transformers import Qwen2VLImageProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLVisionConfig,
)

from hierzoo.models import _vision_attention
from hierzoo.models.random_weights import _QWEN2_5_VISION

HEAD_DIM = 80  # 1280 / 16 in the 7B vision tower


def count_sdpa_calls(fn) -> int:
    """How many times ``fn()`` calls ``scaled_dot_product_attention``."""
    calls = 0
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return sdpa(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        fn()
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--heads", type=int, default=2, help="attention heads of size 80")
    ap.add_argument("--mlp", type=int, default=320, help="MLP intermediate size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    ap.add_argument(
        "--json", default=str(Path(__file__).parent / "results" / "vision_attention.json")
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    hidden = args.heads * HEAD_DIM
    config = Qwen2_5_VLVisionConfig(
        **dict(
            _QWEN2_5_VISION, hidden_size=hidden, num_heads=args.heads, intermediate_size=args.mlp
        ),
        out_hidden_size=hidden,
    )
    config._attn_implementation = "sdpa"
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tower = Qwen2_5_VisionTransformerPretrainedModel(config).eval().to(device, dtype)
    processor = Qwen2VLImageProcessor(
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    enc = processor(images=images, return_tensors="pt")
    pixels, grid = enc["pixel_values"].to(device, dtype), enc["image_grid_thw"].to(device)

    attention_modules = [b.attn for b in tower.blocks]
    spent = [0.0]

    def start(module, args, kwargs):
        module._t0 = time.perf_counter()

    def stop(module, args, kwargs, output):
        spent[0] += time.perf_counter() - module._t0

    on_cpu = device.type == "cpu"
    for m in attention_modules if on_cpu else []:
        m.register_forward_pre_hook(start, with_kwargs=True)
        m.register_forward_hook(stop, with_kwargs=True)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            out = tower(pixels, grid_thw=grid).last_hidden_state
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    def use(batched: bool) -> None:
        if batched:
            _vision_attention.patch_vision_attention(tower)
        else:
            _vision_attention.unpatch_vision_attention(tower)

    variants = {"transformers per-window loop": False, "hierzoo window-batched": True}
    outputs, calls = {}, {}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for name, batched in variants.items():  # warm-up: the output and the SDPA calls
        use(batched)
        calls[name] = count_sdpa_calls(lambda name=name: outputs.__setitem__(name, forward()))
    for _ in range(args.repeats):  # interleaved
        for name, batched in variants.items():
            use(batched)
            spent[0] = 0.0
            t0 = time.perf_counter()
            forward()
            times[name].append((time.perf_counter() - t0, spent[0] if on_cpu else float("nan")))
    base, batched = variants
    err = (outputs[batched] - outputs[base]).float().abs().max().item()
    scale = outputs[base].float().abs().max().item()
    if err > (1e-4 if dtype == torch.float32 else 5e-2 * scale):
        raise RuntimeError(f"window-batched attention changed the output (max abs diff {err:.3g})")

    best = {name: min(times[name]) for name in variants}  # the fastest forward, its attention time
    rows = [
        {
            "variant": name,
            "s_per_forward": best[name][0],
            "attention_s": best[name][1] if on_cpu else None,
            "sdpa_calls": calls[name],
            "speedup": best[base][0] / best[name][0],
            "attention_speedup": best[base][1] / best[name][1] if on_cpu else None,
            "all_s": [round(t, 3) for t, _ in times[name]],
        }
        for name in variants
    ]
    tokens = int(grid.prod(-1).sum())
    print(
        f"{args.images} images of 500x375 px -> grid {grid[0].tolist()} each, {tokens} patches; "
        f"vision tower depth {config.depth}, {args.heads} heads x {HEAD_DIM}, MLP {args.mlp}, "
        f"window {config.window_size}, full attention in {config.fullatt_block_indexes}; "
        f"{args.dtype} "
        f"on {device}, {torch.get_num_threads()} torch thread(s), best of {args.repeats} "
        "interleaved runs; "
        f"max abs diff {err:.2g}"
    )
    print_table(
        rows,
        ["variant", "s_per_forward", "attention_s", "sdpa_calls", "speedup", "attention_speedup"],
    )
    write_json(
        args.json,
        {
            "benchmark": "vision_attention",
            "images": args.images,
            "image_size": [500, 375],
            "grid_thw": grid[0].tolist(),
            "patches": tokens,
            "vision_config": {
                "depth": config.depth,
                "hidden_size": hidden,
                "num_heads": args.heads,
                "intermediate_size": args.mlp,
                "window_size": config.window_size,
                "patch_size": config.patch_size,
                "spatial_merge_size": config.spatial_merge_size,
                "fullatt_block_indexes": list(config.fullatt_block_indexes),
            },
            "dtype": args.dtype,
            "device": str(device),
            "attn_implementation": "sdpa",
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "max_abs_diff": err,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
