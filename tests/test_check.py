"""The regression gate: `salbench check` (aggregation, statuses, baseline files, exit codes) and
the pytest plugin's `salbench_gate` fixture; a degraded explainer makes both fail."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from salbench.harness import check
from salbench.methods import METHODS
from salbench.methods.gradcam import GradCAM

SALBENCH = str(Path(sys.executable).with_name("salbench"))


def tidy(rows):
    """A scores frame from (method, score, scope, image_id, value, higher_is_better) tuples."""
    return pd.DataFrame(
        [{"model": "m", "dataset": "d", "method": method, "metric": "loc", "score": score, "scope": scope,
          "image_id": image, "value": value, "higher_is_better": hib}
         for method, score, scope, image, value, hib in rows])


# --------------------------------------------------------------------------- pure parts
def test_aggregate_means_images_skipping_nan_and_keeps_dataset_values():
    scores = tidy([
        ("gradcam", "acc", "image", "a", 1.0, True),
        ("gradcam", "acc", "image", "b", 0.0, True),
        ("gradcam", "acc", "image", "c", 0.5, True),
        ("gradcam", "acc", "image", "d", float("nan"), True),
        ("gradcam", "auc", "dataset", None, 0.25, False),
    ])
    table = check.aggregate(scores).set_index("score")
    assert table.loc["acc", "value"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    assert table.loc["acc", "images"] == 4 and table.loc["acc", "nan"] == 1
    assert table.loc["auc", "value"] == 0.25 and table.loc["auc", "scope"] == "dataset"
    assert bool(table.loc["auc", "higher_is_better"]) is False


def test_aggregate_refuses_the_same_image_scored_twice():
    scores = tidy([("gradcam", "acc", "image", "a", 1.0, True), ("gradcam", "acc", "image", "a", 0.0, True)])
    with pytest.raises(ValueError, match="scored more than once"):
        check.aggregate(scores)


def test_aggregate_takes_one_row_per_image_and_class_for_every_class_scores():
    """Pointing game rows of every class present: one image, two classes, no ambiguity."""
    scores = tidy([("gradcam", "hit", "image", "a", 1.0, True), ("gradcam", "hit", "image", "a", 0.0, True),
                   ("gradcam", "hit", "image", "b", 1.0, True)])
    scores["target"] = [3, 7, 3]
    row = check.aggregate(scores).set_index("score").loc["hit"]
    assert row["value"] == pytest.approx(2 / 3) and row["images"] == 3
    scores["target"] = [3, 3, 3]
    with pytest.raises(ValueError, match="scored more than once"):
        check.aggregate(scores)


def entry(score, value, tolerance, direction=None, method="gradcam"):
    return {"model": "m", "dataset": "d", "method": method, "metric": "loc", "score": score,
            "value": value, "tolerance": tolerance, "direction": direction}


@pytest.mark.parametrize(
    "current, baseline, tolerance, direction, status",
    [
        pytest.param(0.50, 0.50, 0.0, "higher", "OK", id="equal"),
        pytest.param(0.48, 0.50, 0.02, "higher", "OK", id="within-tolerance"),
        pytest.param(0.47, 0.50, 0.02, "higher", "REGRESSED", id="higher-drops"),
        pytest.param(0.60, 0.50, 0.02, "higher", "IMPROVED", id="higher-rises"),
        pytest.param(0.60, 0.50, 0.02, "lower", "REGRESSED", id="lower-rises"),
        pytest.param(0.40, 0.50, 0.02, "lower", "IMPROVED", id="lower-drops"),
        pytest.param(float("nan"), 0.50, 1.0, "higher", "REGRESSED", id="nan-current"),
    ],
)
def test_compare_status(current, baseline, tolerance, direction, status):
    scores = tidy([("gradcam", "acc", "image", "a", current, True)])
    diff = check.compare(check.aggregate(scores), [entry("acc", baseline, tolerance, direction)])
    assert diff["status"].tolist() == [status]
    assert check.failed(diff) == (status == "REGRESSED")
    if not math.isnan(current):
        assert diff["delta"].iloc[0] == pytest.approx(current - baseline)


def test_direction_defaults_from_higher_is_better_and_missing_entries_fail():
    scores = tidy([("gradcam", "deletion_auc", "image", "a", 0.30, False)])
    diff = check.compare(check.aggregate(scores), [entry("deletion_auc", 0.20, 0.05),  # lower is better: worse
                                                   entry("acc", 0.5, 0.1, method="cam")])
    assert diff["direction"].tolist() == ["lower", "higher"]
    assert diff["status"].tolist() == ["REGRESSED", "MISSING"]
    text = check.format_diff(diff)
    assert "REGRESSED" in text and "MISSING" in text and "1 regressed, 1 missing, 0 changed, 0 improved, 0 ok" in text


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_baseline_round_trip_and_update_keeps_tolerance(tmp_path, suffix):
    path = tmp_path / f"baseline{suffix}"
    check.write_baseline(path, [entry("acc", 0.5, 0.07, "higher")])
    if suffix == ".json":
        assert json.loads(path.read_text())["entries"][0]["tolerance"] == 0.07
    entries = check.read_baseline(path)
    assert entries == [{**entry("acc", 0.5, 0.07, "higher"), "images": None, "protocol": None, "method_options": None}]
    current = check.aggregate(tidy([("gradcam", "acc", "image", "a", 0.9, True),
                                    ("random", "acc", "image", "a", 0.1, True)]))
    fresh = check.updated_entries(current, entries, tolerance=0.01)
    assert [(e["method"], e["value"], e["tolerance"]) for e in fresh] == [("gradcam", 0.9, 0.07), ("random", 0.1, 0.01)]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_run_passes_its_own_baseline_at_tolerance_zero(tmp_path, suffix):
    """Values are stored at full precision: 1/3 is not read back as 0.333333 and then 'improved'."""
    current = check.aggregate(tidy([("gradcam", "acc", "image", "a", 1 / 3, True),
                                    ("gradcam", "acc", "image", "b", 0.1 + 0.2, True)]))
    path = tmp_path / f"baseline{suffix}"
    check.write_baseline(path, check.updated_entries(current, [], tolerance=0.0))
    diff = check.compare(current, check.read_baseline(path))
    assert diff["status"].tolist() == ["OK"], diff
    assert check.read_baseline(path)[0]["value"] == float(current["value"].iloc[0])


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("entries: [{model: m, dataset: d, method: x, metric: loc, value: 1}]", "lacks score", id="no-score"),
        pytest.param("entries: [{model: m, dataset: d, method: x, metric: loc, score: s, value: 1, tol: 1}]",
                     "unknown keys", id="unknown-key"),
        pytest.param("entries: [{model: m, dataset: d, method: x, metric: loc, score: s, value: 1, direction: up}]",
                     "direction must be one of", id="bad-direction"),
        pytest.param("entries: [{model: m, dataset: d, method: x, metric: loc, score: s, value: high}]",
                     "must be numbers", id="bad-value"),
        pytest.param("entries: {a: 1}", "expected a list of entries", id="not-a-list"),
        pytest.param("entries: [a: b: c", "not valid", id="bad-yaml"),
    ],
)
def test_malformed_baseline_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "baseline.yaml"
    path.write_text(text)
    with pytest.raises(check.BaselineError, match=message):
        check.read_baseline(path)


# --------------------------------------------------------------------------- against real runs
class ShiftedGradCAM(GradCAM):
    """A broken Grad-CAM: the right map, moved by half the image (what a regression looks like:
    the same method under the same name and options, computing something else)."""

    name = "gradcam"

    def attribute(self, x, target):
        maps = super().attribute(x, target)
        return torch.roll(maps, shifts=(maps.shape[-2] // 2, maps.shape[-1] // 2), dims=(-2, -1))


@pytest.fixture
def shifted_gradcam(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "shifted_gradcam", ShiftedGradCAM)
    return "shifted_gradcam"


def degraded_config(compose_config, overrides):
    """The config of ``overrides`` with the method key ``gradcam`` built by the broken class."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.method = OmegaConf.create({"gradcam": {"name": "shifted_gradcam"}})
    return cfg


FAST = ["debug=fast", "dataset.limit=16", "method=[gradcam,random]", "gallery_images=0"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, compose_config, synthetic_bundle):
    from salbench.harness.runner import run_job

    out = tmp_path_factory.mktemp("good") / "run"
    run_job(compose_config(FAST), out)
    return out


def test_check_passes_on_the_same_run_and_fails_on_a_degraded_explainer(
        tmp_path, good_run, compose_config, shifted_gradcam, capsys):
    from salbench.harness.runner import run_job

    baseline = tmp_path / "baseline.yaml"
    assert check.main([str(good_run), "--baseline", str(baseline), "--update", "--method", "gradcam",
                       "--score", "gt_known_loc", "--score", "iou", "--tolerance", "0.05"]) == 0
    entries = check.read_baseline(baseline)
    assert {(e["method"], e["score"]) for e in entries} == {("gradcam", "gt_known_loc"), ("gradcam", "iou")}
    assert check.main([str(good_run), "--baseline", str(baseline)]) == 0
    assert "0 regressed, 0 missing, 0 changed, 0 improved, 2 ok" in capsys.readouterr().out

    bad_run = tmp_path / "degraded"
    run_job(degraded_config(compose_config, FAST), bad_run)
    assert check.main([str(bad_run), "--baseline", str(baseline)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("REGRESSED") == 2 and "FAILED: 2 of 2" in captured.err
    good, bad = (check.aggregate(pd.read_parquet(p / "scores.parquet")).set_index(["method", "score"])
                 for p in (good_run, bad_run))
    assert bad.loc[("gradcam", "iou"), "value"] < good.loc[("gradcam", "iou"), "value"] - 0.05


def test_check_command_exit_codes_through_the_console_script(tmp_path, good_run):
    baseline = tmp_path / "b.json"
    run = lambda *a: subprocess.run([SALBENCH, "check", *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    written = run(str(good_run), "--baseline", str(baseline), "--update")
    assert written.returncode == 0 and "baseline written" in written.stdout
    payload = json.loads(baseline.read_text())
    for item in payload["entries"]:
        if item["method"] == "gradcam" and item["score"] == "iou":
            item["value"] += 0.2  # the accepted value is now far above what the run achieves
    baseline.write_text(json.dumps(payload))
    regressed = run(str(good_run), "--baseline", str(baseline))
    assert regressed.returncode == 1 and "REGRESSED" in regressed.stdout
    assert "gradcam" in regressed.stdout and "cam_paper/iou" in regressed.stdout
    assert check.main([str(good_run), "--baseline", str(tmp_path / "nope.yaml")]) == 2


# --------------------------------------------------------------------------- the pytest plugin
USER_TESTS = '''
import torch
from omegaconf import OmegaConf, open_dict
from salbench.methods import METHODS
from salbench.methods.gradcam import GradCAM

FAST = ["debug=fast", "dataset.limit=16", "method=[gradcam,random]", "gallery_images=0"]


class ShiftedGradCAM(GradCAM):
    name = "gradcam"

    def attribute(self, x, target):
        maps = super().attribute(x, target)
        return torch.roll(maps, shifts=(maps.shape[-2] // 2, maps.shape[-1] // 2), dims=(-2, -1))


def test_gradcam_keeps_localizing(salbench_gate):
    scores = salbench_gate.run(FAST)
    salbench_gate.expect(scores, method="gradcam", score="iou", at_least={floor})
    salbench_gate.check(scores, "{baseline}", methods=["gradcam"], tolerance=0.05)


def test_degraded_gradcam_is_caught(salbench_gate, monkeypatch):
    monkeypatch.setitem(METHODS._entries, "shifted_gradcam", ShiftedGradCAM)
    cfg = salbench_gate.compose(FAST)
    with open_dict(cfg):
        cfg.method = OmegaConf.create({{"gradcam": {{"name": "shifted_gradcam"}}}})
    scores = salbench_gate.run(config=cfg)
    salbench_gate.expect(scores, method="gradcam", score="iou", at_least={floor})
'''


def test_plugin_is_registered_as_a_pytest11_entry_point():
    from importlib.metadata import entry_points

    found = {e.name: e.value for e in entry_points(group="pytest11")}
    assert found.get("salbench") == "salbench.harness.pytest_plugin"


def test_gate_expect_passes_and_fails_with_a_readable_message(tmp_path, good_run):
    from salbench.harness.pytest_plugin import SalbenchGate

    gate = SalbenchGate(tmp_path)
    scores = pd.read_parquet(good_run / "scores.parquet")
    scores.attrs["run_dir"] = str(good_run)
    iou = gate.value(scores, method="gradcam", score="iou")
    assert gate.expect(scores, method="gradcam", score="iou", at_least=iou - 0.01) == iou
    assert gate.expect(str(good_run), method="random", score="iou", at_most=iou) < iou  # a directory works too
    with pytest.raises(pytest.fail.Exception) as failure:
        gate.expect(scores, method="random", score="iou", at_least=iou)
    message = str(failure.value)
    assert message.startswith("salbench gate: random cam_paper/iou on synthetic_cnn/synthetic = ")
    assert f"expected >= {iou:.4f} (short by" in message and "(mean over 16 images)" in message
    assert f"gradcam {iou:.4f}" in message and str(good_run) in message
    with pytest.raises(pytest.fail.Exception, match="(?s)no scores for method='gradcma'.*did you mean 'gradcam'.*methods: gradcam, random"):
        gate.expect(scores, method="gradcma", score="iou", at_least=0.1)


def test_gate_check_writes_then_compares_a_baseline(tmp_path, good_run):
    from salbench.harness.pytest_plugin import SalbenchGate

    gate = SalbenchGate(tmp_path)
    scores = pd.read_parquet(good_run / "scores.parquet")
    baseline = tmp_path / "gate.yaml"
    gate.check(scores, baseline, methods=["gradcam"], score_names=["iou"])  # no file yet: written
    assert [(e["method"], e["score"]) for e in check.read_baseline(baseline)] == [("gradcam", "iou")]
    assert gate.check(scores, baseline)["status"].tolist() == ["OK"]
    worse = scores.assign(value=scores["value"].where(scores["method"] != "gradcam", 0.0))
    with pytest.raises(pytest.fail.Exception, match="(?s)regressed against .*REGRESSED"):
        gate.check(worse, baseline)
    SalbenchGate(tmp_path, update=True).check(worse, baseline)  # pytest --salbench-update refreshes it
    assert check.read_baseline(baseline)[0]["value"] == 0.0


@pytest.mark.slow
def test_pytest_plugin_in_a_user_test_suite_fails_on_a_degraded_explainer(tmp_path, good_run):
    good_iou = check.aggregate(pd.read_parquet(good_run / "scores.parquet")).set_index(["method", "score"])
    floor = round(float(good_iou.loc[("gradcam", "iou"), "value"]) - 0.05, 3)
    baseline = tmp_path / "gate.yaml"
    test_file = tmp_path / "test_user_gate.py"
    test_file.write_text(USER_TESTS.format(floor=floor, baseline=baseline))
    # the plugin is found through its pytest11 entry point: no conftest, no import in the file
    result = subprocess.run([sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
                             "-o", "addopts=", "--rootdir", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "salbench gate: gradcam cam_paper/iou on synthetic_cnn/synthetic" in out
    assert f"expected >= {floor:.4f} (short by" in out and "iou of every method: gradcam" in out
    assert "mean over 16 images" in out
    assert baseline.exists() and {e["method"] for e in check.read_baseline(baseline)} == {"gradcam"}
