"""hierzoo bench on toy-size twins of the zoo's architectures, and real sizes on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hierzoo.cli import main
from hierzoo.models.random_weights import build_random, supported


@pytest.mark.parametrize(
    ("name", "params"),
    [("qwen2.5-vl-3b", 3.75e9), ("qwen2.5-vl-7b", 8.29e9), ("qwen2.5-vl-72b", 73.4e9)],
)
def test_real_size_qwen_architectures(name, params):
    clf = build_random(name, device="meta", dtype=torch.bfloat16)
    assert sum(p.numel() for p in clf.model.parameters()) == pytest.approx(params, rel=0.01)


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ValueError, match="covers .*bioclip2"):
        build_random("internvl3-8b")
    assert "siglip-so400m" in supported()


@pytest.mark.parametrize("model", ["bioclip2", "siglip-so400m", "qwen2.5-vl-7b"])
def test_bench_runs_end_to_end_with_baseline(model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            model,
            "--random-weights",
            "--size",
            "tiny",
            "--n-images",
            "6",
            "--batch-size",
            "2,3",
            "--baseline",
            "--baseline-images",
            "2",
            "--device",
            "cpu",
            "--record",
            str(out),
        ]
    )
    assert code == 0
    rec = json.loads(out.read_text())
    assert [r["batch_size"] for r in rec["sweep"]] == [2, 3]
    for r in rec["sweep"]:
        assert r["images_per_second"] > 0 and r["questions_per_second"] == pytest.approx(
            4 * r["images_per_second"]
        )
        assert (
            0 < r["forward_share"] <= 1.0
            and r["batch_latency_median_s"] > 0
            and r["peak_rss_gib"] > 0
        )
        assert 0 < r["first_batch_seconds"] < r["seconds"]
        assert r["forward_questions_per_second"] == pytest.approx(
            24 / r["forward_seconds"]
        )  # 6 images x 4 levels
        assert r["forward_questions_per_second"] > r["questions_per_second"]
        if model != "qwen2.5-vl-7b":
            assert 0 < r["input_wait_seconds"] < r["seconds"] and r[
                "input_wait_share"
            ] == pytest.approx(r["input_wait_seconds"] / r["seconds"])
        assert r["steady_questions_per_second"] == pytest.approx(4 * r["steady_images_per_second"])
        # the rate after the first batch is the rest of the images over the rest of the time
        rest = 6 - r["batch_size"]
        assert r["steady_images_per_second"] == pytest.approx(
            rest / (r["seconds"] - r["first_batch_seconds"]), rel=1e-6
        )
    assert rec["best_batch_size"] in (2, 3)
    assert rec["baseline"]["agreement"] == 1.0 and rec["baseline"]["speedup"] > 0
    assert "best batch size" in capsys.readouterr().out


def test_bench_with_decoding_on_the_device_reports_where_time_went(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                "bioclip2",
                "--random-weights",
                "--size",
                "tiny",
                "--n-images",
                "8",
                "--batch-size",
                "4",
                "--decode-on-device",
                "--num-workers",
                "2",
                "--device",
                "cpu",
                "--record",
                str(out),
            ]
        )
        == 0
    )
    rec = json.loads(out.read_text())
    row = rec["sweep"][0]
    assert rec["decode_on_device"] is True
    assert (
        0 < row["decode_seconds"] < row["seconds"]
        and 0 <= row["read_wait_seconds"] < row["seconds"]
    )
    assert 0 < row["input_wait_seconds"] < row["seconds"]


def test_vlm_bench_reports_the_processor_time(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                "qwen2.5-vl-7b",
                "--random-weights",
                "--size",
                "tiny",
                "--n-images",
                "4",
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--record",
                str(out),
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())["sweep"][0]
    assert 0 < row["preprocess_seconds"] < row["seconds"]
    assert row["preprocess_share"] == pytest.approx(row["preprocess_seconds"] / row["seconds"])
    assert 0 <= row["input_wait_seconds"] < row["seconds"]


def _gpu_script(out, **env):
    """Run benchmarks/gpu.sh into ``out``; the returned message holds the tails of the output
    and of every step's log, for an assertion that fails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh"), str(out)],
        cwd=root,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard only: the dry run has no time limits of its own
    )
    logs = "".join(f"\n--- {p.name}:\n{p.read_text()[-1500:]}" for p in sorted(out.glob("*.log")))
    return done, f"{done.stdout[-2000:]}{done.stderr[-2000:]}{logs}"


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu.sh end to end at toy sizes (what it does without CUDA): every pass
    writes its record, the summary merges them, and a dry run claims no target."""
    done, message = _gpu_script(tmp_path)
    assert done.returncode == 0, message
    assert "FAILED" not in done.stdout, message
    merged = json.loads((tmp_path / "gpu.json").read_text())
    assert {r["run"] for r in merged["summary"]} == {
        "clip-pil-workers",
        "clip-tensor-workers",
        "clip-nvjpeg",
        "vlm",
    }
    assert merged["records"]["clip-tensor-workers"]["worker_decode"] == "tensor"
    assert all(r["met"] is None and r["speedup"] > 0 for r in merged["summary"])
    assert merged["records"]["clip-nvjpeg"]["decode_on_device"] is True
    assert merged["records"]["vlm"]["profile"]["top"] and (tmp_path / "profile-vlm.txt").exists()
    va = merged["vision_attention"]
    assert va["max_abs_diff"] < 1e-5


def test_gpu_script_step_that_fails_keeps_its_error_in_its_log(tmp_path):
    """A step that fails (here: open_clip cannot be imported) says so, and its log holds the
    error the step printed on stderr, not an empty file."""
    broken = tmp_path / "site" / "open_clip"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('open_clip is broken on purpose')\n")
    import os

    path = os.pathsep.join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH")]))
    done, message = _gpu_script(tmp_path / "out", QUICK="1", CLIP_ONLY="1", PYTHONPATH=path)
    log = (tmp_path / "out" / "gpu-clip-nvjpeg.log").read_text()
    assert "FAILED: clip-nvjpeg (exit status 2; see" in done.stdout, message
    assert "hierzoo bench: error:" in log and "open_clip" in log, message
    assert log.rstrip().splitlines()[-1].startswith("FAILED: clip-nvjpeg"), message


def test_profile_writes_the_op_table_and_top_ops(tmp_path):
    out, table = tmp_path / "bench.json", tmp_path / "prof" / "clip.txt"
    assert (
        main(
            [
                "bench",
                "--model",
                "bioclip2",
                "--random-weights",
                "--size",
                "tiny",
                "--n-images",
                "4",
                "--batch-size",
                "2",
                "--device",
                "cpu",
                "--profile",
                str(table),
                "--trace",
                "--record",
                str(out),
            ]
        )
        == 0
    )
    prof = json.loads(out.read_text())["profile"]
    text = table.read_text()
    assert prof["images"] == 2 and prof["sorted_by"] == "self_cpu_time_total"
    assert len(prof["top"]) > 5 and all(
        r["calls"] >= 1 and r["self_cpu_ms"] >= 0 for r in prof["top"]
    )
    assert prof["top"][0]["self_cpu_ms"] >= prof["top"][-1]["self_cpu_ms"]
    assert prof["top"][0]["name"][:90] in text and "aten::" in text
    assert json.loads((tmp_path / "prof" / "clip.txt.trace.json").read_text())["traceEvents"]


def test_bench_can_time_the_vision_tower_without_batched_attention(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--model",
                "qwen2.5-vl-7b",
                "--random-weights",
                "--size",
                "tiny",
                "--n-images",
                "2",
                "--batch-size",
                "2",
                "--no-batched-vision-attention",
                "--device",
                "cpu",
                "--record",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["batched_vision_attention"] is False
    code = main(
        [
            "bench",
            "--model",
            "bioclip2",
            "--random-weights",
            "--size",
            "tiny",
            "--n-images",
            "2",
            "--no-batched-vision-attention",
            "--device",
            "cpu",
        ]
    )
    assert code != 0 and "is for vision LLMs" in capsys.readouterr().err


def test_bench_times_a_folder_of_images_and_prints_json(tmp_path, capsys):
    """``--images DIR`` times the folder's photos (repeated to fill --n-images and the warm-up);
    ``--json`` prints the record on stdout instead of the table."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    for i, sub in enumerate(["a", "b", "b"]):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / sub / f"{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    argv = ["bench", "--model", "bioclip2", "--random-weights", "--size", "tiny", "--device"]
    argv += ["cpu", "--images", str(folder), "--n-images", "4", "--batch-size", "2", "--json"]
    assert main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["image_folder"] == str(folder) and rec["image_size"] is None
    assert rec["images"] == 4 and rec["sweep"][0]["images_per_second"] > 0
    assert main([*argv[:-7], "--images", str(tmp_path / "none")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_bench_on_a_cpu_shows_only_what_applies(tmp_path, capfd):
    """One batch size: no "best batch size: None"; a CPU: no TFLOP/s line; --profile on a CPU:
    none of the profiler's log lines about CUDA devices on stderr."""
    code = main(
        ["bench", "--model", "bioclip2", "--random-weights", "--size", "tiny", "--n-images", "2"]
        + ["--device", "cpu", "--profile", str(tmp_path / "prof.txt")]
    )
    out, err = capfd.readouterr()
    assert code == 0 and "images/s" in out
    assert "best batch size" not in out and "TFLOP/s" not in out and "None" not in out
    assert "gpuGetDeviceCount" not in err and "profiler_start" not in err, err
    assert (tmp_path / "prof.txt").read_text().count("aten::") > 3


def test_bench_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import hierzoo.bench

    def no_run(*a, **k):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(hierzoo.bench, "run_bench", no_run)
    (tmp_path / "a-file").write_text("x")
    base = ["bench", "--model", "qwen2.5-vl-7b", "--random-weights", "--size", "tiny"]
    for flag, path, says in [
        ("--record", tmp_path, "is a folder"),
        ("--record", tmp_path / "a-file" / "rec.json", "lies under"),
        ("--profile", tmp_path / "a-file" / "ops.txt", "lies under"),
    ]:
        assert main([*base, flag, str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{flag} '{path}'" in err and says in err
    with pytest.raises(SystemExit):
        main([*base, "--trace"])
    assert "--trace writes the trace of --profile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--model", "qwen2.5-vl-7b", "--size", "tiny"])
    assert "add --random-weights" in capsys.readouterr().err


def test_synthetic_images_are_written_whole_and_torn_ones_are_made_again(tmp_path):
    from PIL import Image

    from hierzoo.bench import make_images

    folder = tmp_path / "jpeg"
    paths = make_images(folder, 3, size=(32, 24))
    first = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(first[: len(first) // 2])  # torn by a killed writer
    Path(paths[2]).write_bytes(b"")
    stamp = Path(paths[0]).stat().st_mtime_ns
    assert make_images(folder, 3, size=(32, 24)) == paths
    assert Path(paths[1]).read_bytes() == first and Path(paths[0]).stat().st_mtime_ns == stamp
    for p in paths:
        Image.open(p).load()
    assert sorted(f.name for f in folder.iterdir()) == ["00000.jpg", "00001.jpg", "00002.jpg"]
