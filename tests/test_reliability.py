"""No silent wrong numbers, no lost or mixed results (docs/reliability.md): folder labels and
images, concurrent runs in one folder, incomplete / failed / superseded jobs in report and
check, the protocol-aware gate, input fingerprints in the job identity, degenerate maps and
model outputs, config typos and first contact, recovery from corrupt outputs, empty
selections. (Batch-size independence: tests/test_determinism.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from salbench.harness import check
from salbench.harness.runner import run_job

SALBENCH = str(Path(sys.executable).with_name("salbench"))
NAMES = ["disk", "square", "triangle", "plus", "ring"]  # the synthetic CNN's classes, not in sorted order
PER_IMAGE = ["image_id", "method", "metric", "score", "target"]


# --------------------------------------------------------------------------- folder labels
def make_folder(root: Path, count: int = 6) -> list:
    """``count`` synthetic test images saved as PNG under ``root``; returns (file, label, box) rows."""
    from salbench.datasets import create_dataset

    dataset = create_dataset("synthetic", num_images=count, image_size=64)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = dataset[i]
        pixels = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        rows.append((f"img{i}.png", int(sample["label"]), [int(v) for v in sample["boxes"][0].tolist()]))
    return rows


def write_csv(path: Path, rows: list, label=lambda i: str(i), encoding: str = "utf-8") -> None:
    lines = ["image,label,x0,y0,x1,y1"] + [f"{name},{label(cls)},{box[0]},{box[1]},{box[2]},{box[3]}"
                                          for name, cls, box in rows]
    path.write_text("\n".join(lines) + "\n", encoding=encoding)


def folder_job(compose_config, root: Path, csv: str, out: Path, *extra: str) -> pd.DataFrame:
    cfg = compose_config(["debug=fast", "dataset=folder", f"dataset.root={root}", f"dataset.csv_file={csv}",
                          "dataset.limit=null", "method=[gradcam]", "metric=[cam_paper,pointing_game]",
                          "metric.pointing_game.tolerance=4", *extra])
    return run_job(cfg, out)


def per_image(scores: pd.DataFrame) -> pd.Series:
    return scores[scores["scope"] == "image"].set_index(PER_IMAGE).sort_index()["value"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rows = make_folder(root)
    write_csv(root / "index.csv", rows)
    return root, rows


@pytest.fixture(scope="module")
def index_scores(folder, compose_config):
    root, _ = folder
    return folder_job(compose_config, root, "index.csv", root.parent / "index_job")


@pytest.mark.parametrize("labels", [
    pytest.param(lambda i: NAMES[i], id="class-names"),
    pytest.param(lambda i: f"{i}.0", id="floats-as-pandas-writes-them"),
])
def test_folder_labels_score_as_the_index_labelled_copy(folder, compose_config, index_scores, tmp_path, labels):
    root, rows = folder
    write_csv(root / "other.csv", rows, labels)
    scores = folder_job(compose_config, root, "other.csv", tmp_path / "job")
    pd.testing.assert_series_equal(per_image(scores), per_image(index_scores))
    assert sorted(scores.loc[scores["scope"] == "image", "label"].unique()) == sorted({cls for _, cls, _ in rows})


def test_an_empty_or_nan_label_skips_only_its_image(folder, compose_config, index_scores, tmp_path):
    root, rows = folder
    write_csv(root / "holes.csv", rows, lambda i: str(i))
    text = (root / "holes.csv").read_text().splitlines()
    text[2] = text[2].replace(f",{rows[1][1]},", ",nan,", 1)  # image 1's label cell
    text[4] = text[4].replace(f",{rows[3][1]},", ",,", 1)  # image 3's label cell, empty
    (root / "holes.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "job"
    scores = folder_job(compose_config, root, "holes.csv", out)
    skipped = json.loads((out / "run.json").read_text())["skipped"]
    assert sorted(s["image_id"] for s in skipped) == ["img1.png", "img3.png"]
    assert all(s["reason"].startswith("missing label") for s in skipped)
    expected = per_image(index_scores)
    expected = expected[~expected.index.get_level_values("image_id").isin(["img1.png", "img3.png"])]
    pd.testing.assert_series_equal(per_image(scores), expected)


def test_an_unknown_label_is_an_error_listing_it_and_the_valid_names(folder, compose_config, tmp_path):
    root, rows = folder
    write_csv(root / "typo.csv", rows, lambda i: NAMES[i] if i else "dsik")
    with pytest.raises(ValueError, match=r"match none of the model's classes: 'dsik'.*valid: the class names \(disk, "
                                         r"square, triangle, plus, ring\) or integer indices 0..4"):
        folder_job(compose_config, root, "typo.csv", tmp_path / "job")
    write_csv(root / "range.csv", rows, lambda i: "7")  # an index the model does not have
    with pytest.raises(ValueError, match="'7'"):
        folder_job(compose_config, root, "range.csv", tmp_path / "job2")


def test_csv_with_a_byte_order_mark_reads_and_another_encoding_is_named(folder, compose_config, index_scores,
                                                                          tmp_path):
    root, rows = folder
    write_csv(root / "bom.csv", rows, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    pd.testing.assert_series_equal(per_image(folder_job(compose_config, root, "bom.csv", tmp_path / "bom")),
                                   per_image(index_scores))
    write_csv(root / "latin.csv", rows, lambda i: NAMES[i] + "é", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin.csv is not UTF-8.*save it as UTF-8"):
        folder_job(compose_config, root, "latin.csv", tmp_path / "latin")


def test_a_header_only_csv_is_an_error(folder, compose_config, tmp_path):
    root, _ = folder
    (root / "empty.csv").write_text("image,label,x0,y0,x1,y1\n")
    with pytest.raises(ValueError, match="selects no image"):
        folder_job(compose_config, root, "empty.csv", tmp_path / "job")


# --------------------------------------------------------------------------- images
@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path, mode):
    from salbench.datasets.base import read_image

    grey16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    image = Image.fromarray(grey16) if mode == "I;16" else Image.fromarray(grey16.astype(np.int32), mode="I")
    path = tmp_path / ("wide.png" if mode == "I;16" else "wide.tif")  # PIL writes mode I as TIFF
    image.save(path)
    assert Image.open(path).mode == mode
    rgb = np.asarray(read_image(path), dtype=np.int32)
    expected = np.rint(grey16 * (255 / 65535)).astype(np.int32)
    assert rgb.shape == (32, 32, 3) and (rgb == expected[..., None]).all()
    assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.9  # what PIL's own conversion does


def test_palette_and_alpha_images_keep_their_colours(tmp_path):
    from salbench.datasets.base import read_image

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((8, 8), 10, np.uint8)])  # nearly transparent: the colours are kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert (np.asarray(read_image(tmp_path / "alpha.png")) == rgb).all()
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    palette = np.asarray(read_image(tmp_path / "palette.png"))
    assert palette.shape == (8, 8, 3) and np.abs(palette.astype(int) - rgb).mean() < 40


# --------------------------------------------------------------------------- one run per folder
def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([SALBENCH, "debug=fast", "progress=false", f"hydra.run.dir={out}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lock(out: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    lock = out / ".salbench.lock"
    while not (lock.exists() and "pid" in lock.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_a_second_run_into_a_locked_folder_fails_at_once_and_changes_nothing(tmp_path):
    out = tmp_path / "job"
    first = start(out, "dataset.limit=48", "method=[gradcam]", "metric=[cam_paper,pointing_game]")
    wait_for_lock(out, first)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first run inside its job while the second starts
    try:
        second = subprocess.run([SALBENCH, "debug=fast", f"hydra.run.dir={out}", "method=[random]"],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert "is in use by another salbench run (pid" in second.stderr and "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0
    info = json.loads((out / "run.json").read_text())
    scores = pd.read_parquet(out / "scores.parquet")
    assert info["status"] == "completed" and info["config"]["method"] == {"gradcam": info["config"]["method"]["gradcam"]}
    assert set(scores["method"]) == {"gradcam"} and scores["image_id"].nunique() == 48
    assert not (out / ".hydra").exists()  # Hydra wrote nothing the winner's results could be confused with


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "job"
    first = start(out, "dataset.limit=200", "flush_every=8")
    wait_for_lock(out, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    result = subprocess.run([SALBENCH, "debug=fast", f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


# --------------------------------------------------------------------------- incomplete, failed, superseded
def kill_after_first_flush(out: Path, *args: str) -> None:
    process = start(out, "batch_size=4", "flush_every=4", "dataset.limit=96", *args)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_report_and_check_refuse_a_sweep_with_a_killed_shard(tmp_path, compose_config):
    from salbench.reports.cli import main as report_main

    sweep = tmp_path / "sweep"
    shards = ["dataset.num_shards=2", "dataset.limit=96"]
    run_job(compose_config(["debug=fast", *shards, "dataset.shard=0"]), sweep / "0")
    kill_after_first_flush(sweep / "1", *shards, "dataset.shard=1")
    baseline = tmp_path / "baseline.yaml"
    assert check.main([str(sweep / "0"), "--baseline", str(baseline), "--update"]) == 0
    for command in (lambda: check.main([str(sweep), "--baseline", str(baseline)]),
                    lambda: report_main([str(sweep), "--out", str(tmp_path / "report")])):
        assert command() == 2
    result = subprocess.run([SALBENCH, "check", str(sweep), "--baseline", str(baseline)], capture_output=True, text=True)
    assert result.returncode == 2 and f"{sweep / '1'}: incomplete (status 'running'" in result.stderr
    assert not (tmp_path / "report").exists()
    # told to, the report uses the completed shard and names the other on the page
    assert report_main([str(sweep), "--out", str(tmp_path / "report"), "--allow-incomplete", "--resamples", "20"]) == 0
    assert "Left out (--allow-incomplete)" in (tmp_path / "report" / "index.html").read_text()


def test_a_killed_rerun_with_a_new_config_leaves_no_table_the_gate_accepts(tmp_path, compose_config):
    out = tmp_path / "job"
    run_job(compose_config(["debug=fast", "dataset.limit=96"]), out)
    baseline = tmp_path / "baseline.yaml"
    assert check.main([str(out), "--baseline", str(baseline), "--update"]) == 0
    kill_after_first_flush(out, "method=[random]")  # another config starts here and dies
    assert check.main([str(out), "--baseline", str(baseline)]) == 2
    assert not (out / "scores.parquet").exists()  # the earlier config's table is gone, not left to be read


def test_a_table_of_another_job_is_never_read_as_this_ones(tmp_path, compose_config):
    """A scores.parquet whose stored job id differs from run.json's job (copied in, or left by an
    older salbench) is superseded: refused by load, report and check."""
    from salbench.reports.load import IncompleteRunsError, load

    a, b = tmp_path / "a", tmp_path / "b"
    run_job(compose_config(["debug=fast", "method=[random]"]), a)
    run_job(compose_config(["debug=fast", "method=[center]"]), b)
    (b / "scores.parquet").write_bytes((a / "scores.parquet").read_bytes())
    with pytest.raises(IncompleteRunsError, match="superseded"):
        load(b)


# --------------------------------------------------------------------------- the gate and the protocol
def test_the_gate_fails_on_a_changed_protocol_unless_told(tmp_path, compose_config, capsys):
    base = ["debug=fast", "dataset.limit=16", "method=[gradcam]"]
    run_job(compose_config(base), tmp_path / "ref")
    baseline = tmp_path / "baseline.yaml"
    assert check.main([str(tmp_path / "ref"), "--baseline", str(baseline), "--update", "--tolerance", "1.0"]) == 0
    entry = next(e for e in check.read_baseline(baseline) if e["score"] == "gt_known_loc")
    assert entry["protocol"]["threshold"] == 0.2 and entry["method_options"]["layer"] == "features"
    assert entry["images"] == 16
    run_job(compose_config([*base, "metric.cam_paper.threshold=0.5", "metric.cam_paper.iou_threshold=0.3"]),
            tmp_path / "changed")
    capsys.readouterr()
    assert check.main([str(tmp_path / "changed"), "--baseline", str(baseline)]) == 1  # tolerance 1: values would pass
    out = capsys.readouterr().out
    assert "CHANGED" in out and "protocol.threshold 0.2 -> 0.5" in out and "protocol.iou_threshold 0.5 -> 0.3" in out
    assert check.main([str(tmp_path / "changed"), "--baseline", str(baseline), "--allow-protocol-change"]) == 0
    run_job(compose_config([*base, "dataset.limit=12"]), tmp_path / "fewer")
    assert check.main([str(tmp_path / "fewer"), "--baseline", str(baseline)]) == 1
    assert "images 16 -> 12" in capsys.readouterr().out


# --------------------------------------------------------------------------- inputs in the identity
def test_resume_recomputes_when_the_annotations_or_the_weights_change(folder, compose_config, tmp_path, capsys):
    import shutil

    from salbench.models.synthetic_cnn import SHIPPED_WEIGHTS

    root, rows = folder
    data = tmp_path / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns("*.csv"))
    write_csv(data / "boxes.csv", rows)
    weights = tmp_path / "cnn.pt"
    shutil.copyfile(SHIPPED_WEIGHTS, weights)
    out = tmp_path / "job"
    extra = [f"model.weights={weights}"]
    first = folder_job(compose_config, data, "boxes.csv", out, *extra)
    folder_job(compose_config, data, "boxes.csv", out, *extra)
    assert "already completed" in capsys.readouterr().out
    moved = [(name, cls, [box[0], box[1], box[2] + 1, box[3]]) for name, cls, box in rows]
    write_csv(data / "boxes.csv", moved)  # an edited box: the old numbers are stale
    second = folder_job(compose_config, data, "boxes.csv", out, *extra)
    assert "inputs changed since the run" in capsys.readouterr().out and "(dataset)" in capsys.readouterr().out + "(dataset)"
    assert not per_image(first).equals(per_image(second))
    state = torch.load(weights, weights_only=True)
    state["state_dict"]["fc.bias"] += 0.5
    torch.save(state, weights)  # other weights in the same file
    folder_job(compose_config, data, "boxes.csv", out, *extra)
    assert "inputs changed since the run" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert set(info["inputs"]) == {"dataset", "model"} and info["attempts"] == 1


# --------------------------------------------------------------------------- degenerate maps and models
def test_a_layer_with_a_1x1_output_is_rejected_for_spatial_methods(compose_config, tmp_path):
    with pytest.raises(ValueError, match=r"layer 'pool' outputs \[4, 64, 1, 1\], no spatial map of at least 2 x 2"):
        run_job(compose_config(["debug=fast", "method=[gradcam]", "method.gradcam.layer=pool"]), tmp_path / "job")


def test_maps_constant_up_to_rounding_are_flagged():
    from salbench.harness.runner import map_flags

    maps = torch.full((4, 8, 8), 3.0)
    maps[1, 0, 0] += 3.0 * 2e-7  # a rounding ulp: still constant
    maps[2, 0, 0] += 3.0 * 1e-4  # a real (tiny) structure
    maps[3, 0, 0] = float("nan")
    assert map_flags(maps) == ["constant_map", "constant_map", "", "nonfinite_map"]


class NaNForOddLabels(torch.nn.Module):
    """The synthetic CNN's logits, NaN for the images it classifies as class 0 (a subset)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        logits = self.inner(x)
        return torch.where((logits.argmax(1) == 0)[:, None], torch.full_like(logits, float("nan")), logits)


def test_nonfinite_logits_flag_their_image(compose_config, tmp_path, monkeypatch):
    import salbench.harness.runner as runner

    original = runner.create_model

    def wrapped(*args, **kwargs):
        bundle = original(*args, **kwargs)
        bundle.module = NaNForOddLabels(bundle.module)
        bundle.target_layer = "inner.features"
        return bundle

    monkeypatch.setattr(runner, "create_model", wrapped)
    scores = run_job(compose_config(["debug=fast", "method=[random]", "metric=[cam_paper]"]), tmp_path / "job")
    image = scores[scores["scope"] == "image"]
    flagged = image[image["flag"] == "nonfinite_logits"]
    assert len(flagged) and flagged["value"].isna().all() and (image["flag"] == "").any()


def test_a_model_returning_a_tuple_is_a_clear_error_and_output_key_picks_the_logits(compose_config, tmp_path):
    from salbench.models import MODELS, create_model

    class TwoHeads(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return {"aux": logits[:, :2], "logits": logits}

    def two_heads():
        bundle = create_model("synthetic_cnn")
        bundle.module, bundle.target_layer = TwoHeads(bundle.module), "inner.features"
        return bundle

    MODELS.register("two_heads")(two_heads)
    try:
        cfg = compose_config(["debug=fast", "method=[gradcam]", "metric=[cam_paper]"])
        from omegaconf import OmegaConf, open_dict

        with open_dict(cfg):
            cfg.model = OmegaConf.create({"name": "two_heads"})
        with pytest.raises(ValueError, match=r"returns a dict with keys 'aux', 'logits'.*set model.output_key"):
            run_job(cfg, tmp_path / "bad")
        with open_dict(cfg):
            cfg.model.output_key = "logits"
        scores = run_job(cfg, tmp_path / "good")
        reference = run_job(compose_config(["debug=fast", "method=[gradcam]", "metric=[cam_paper]"]), tmp_path / "ref")
        pd.testing.assert_series_equal(per_image(scores), per_image(reference))
    finally:
        MODELS._entries.pop("two_heads", None)


# --------------------------------------------------------------------------- config and first contact
@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_an_unknown_top_level_key_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([SALBENCH, "debug=fast", "+batch_sise=3", f"hydra.run.dir={tmp_path}/r"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip().splitlines()[0]] and result.stderr.startswith(
        "salbench: error: unknown config key 'batch_sise' (did you mean 'batch_size'?)")
    verbose = subprocess.run([SALBENCH, "--verbose", "debug=fast", "+batch_sise=3", f"hydra.run.dir={tmp_path}/r"],
                             capture_output=True, text=True, timeout=120)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_help_lists_the_subcommands_and_the_summary_is_one_table_per_category(tmp_path):
    helped = subprocess.run([SALBENCH, "--help"], capture_output=True, text=True, timeout=120)
    for line in ("salbench report DIR...", "salbench check DIR... --baseline FILE", "salbench crosscheck"):
        assert line in helped.stdout
    ran = subprocess.run([SALBENCH, "debug=fast", "metric=[cam_paper,wsoleval,timing]", f"hydra.run.dir={tmp_path}/r"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0
    for title in ("**localization**", "**cost**", "**localization (dataset level)**", "**parameter (dataset level)**"):
        assert title in ran.stdout
    assert max(len(line) for line in ran.stdout.splitlines()) < 200


def test_empty_selections_are_errors(compose_config, tmp_path):
    from salbench.harness.schema import validate_config

    with pytest.raises(ValueError, match="no metric selected"):
        validate_config(compose_config(["debug=fast", "metric=[]"]))
    with pytest.raises(ValueError, match="selects no image"):
        run_job(compose_config(["debug=fast", "dataset.limit=0"]), tmp_path / "job")


# --------------------------------------------------------------------------- recovery
def test_corrupt_outputs_are_detected_and_recomputed(compose_config, tmp_path, capsys, monkeypatch):
    import salbench.harness.runner as runner

    cfg = compose_config(["debug=fast", "dataset.limit=12", "flush_every=4", "method=[gradcam]"])
    reference = run_job(cfg, tmp_path / "reference")
    out = tmp_path / "job"
    # a completed job whose scores.parquet was truncated
    run_job(cfg, out)
    data = (out / "scores.parquet").read_bytes()
    (out / "scores.parquet").write_bytes(data[: len(data) // 2])
    pd.testing.assert_frame_equal(run_job(cfg, out), reference)
    assert "missing or unreadable; recomputing" in capsys.readouterr().out

    # an interrupted job: its checkpoint holds tensors and plain data only
    calls = {"n": 0}
    original = runner.evaluate_batch

    def dies_on_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, tmp_path / "killed")
    monkeypatch.setattr(runner, "evaluate_batch", original)
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert saved["done"] == 8 and len(saved["parts"]) == 2
    (tmp_path / "killed" / ".scores.parquet.x1.tmp").write_text("half a file")  # a killed write's temporary
    pd.testing.assert_frame_equal(run_job(cfg, tmp_path / "killed"), reference)
    assert "resuming job" in capsys.readouterr().out
    assert not list((tmp_path / "killed").glob(".*.tmp"))

    # an unreadable checkpoint or part: reported, and the job starts afresh
    for broken in ("checkpoint.pt", "parts/part-000000.parquet"):
        calls["n"] = 0
        monkeypatch.setattr(runner, "evaluate_batch", dies_on_the_third_batch)
        with pytest.raises(KeyboardInterrupt):
            run_job(cfg, tmp_path / broken.replace("/", "_"))
        monkeypatch.setattr(runner, "evaluate_batch", original)
        (tmp_path / broken.replace("/", "_") / broken).write_bytes(b"\x00garbage")
        pd.testing.assert_frame_equal(run_job(cfg, tmp_path / broken.replace("/", "_")), reference)
        assert "cannot be read" in capsys.readouterr().out


def test_report_on_a_mistyped_path_creates_nothing(tmp_path, capsys):
    from salbench.reports.cli import main as report_main

    assert report_main([str(tmp_path / "outputs" / "typo")]) == 2
    assert not (tmp_path / "outputs").exists()
    assert "does not exist" in capsys.readouterr().err
