"""The paired regression gate (``salbench check --paired``) and its JUnit XML: a Grad-CAM shifted
by two pixels passes the absolute tolerance 0.03 but fails the paired test on 64 images; an
unchanged method and scores perturbed by 1e-6 (a GPU rerun) pass."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from salbench.harness import check
from salbench.methods import METHODS
from salbench.methods.gradcam import GradCAM

GATE = ["debug=fast", "dataset.limit=64", "batch_size=32", "forward_chunk=32", "method=[gradcam,random]",
        "metric=[cam_paper,energy_pointing_game]", "gallery_images=0"]
SHIFT = 2  # pixels, down and right


class _Rolled:
    """A post-processing step that rolls the finished heatmap by ``shift`` pixels (same options)."""

    def __init__(self, inner, shift):
        self.inner, self.shift = inner, shift

    def __call__(self, attribution, size):
        return torch.roll(self.inner(attribution, size), shifts=(self.shift, self.shift), dims=(-2, -1))

    def __getattr__(self, name):
        return getattr(self.inner, name)


class SlightlyShiftedGradCAM(GradCAM):
    """Grad-CAM whose maps land two pixels off: the same name and options, a subtle regression."""

    name = "gradcam"

    @property
    def postprocess(self):
        return _Rolled(self._postprocess, SHIFT)

    @postprocess.setter
    def postprocess(self, value):
        self._postprocess = value


# --------------------------------------------------------------------------- pure parts
def per_image_frame(values, method="gradcam", score="energy", higher=True):
    return pd.DataFrame({"model": "m", "dataset": "d", "method": method, "metric": "epg", "score": score,
                         "scope": "image", "image_id": [f"i{i}" for i in range(len(values))], "target": 0,
                         "value": np.asarray(values, dtype=float), "higher_is_better": higher})


def gate(baseline_values, current_values, tolerance=0.03, **options):
    base, now = per_image_frame(baseline_values), per_image_frame(current_values)
    entries = check.updated_entries(check.aggregate(base), [], tolerance)
    diff = check.compare(check.aggregate(now), entries)
    return check.paired_tests(check.per_image(now), check.per_image(base), diff, **options)


def test_a_small_consistent_drop_fails_paired_but_not_absolute():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.8, 64)
    now = base - rng.uniform(0.0, 0.03, 64)  # every image a little worse, the mean by ~0.015
    absolute = check.compare(check.aggregate(per_image_frame(now)),
                             check.updated_entries(check.aggregate(per_image_frame(base)), [], 0.03))
    assert absolute["status"].tolist() == ["OK"]
    paired = gate(base, now)
    assert paired["status"].tolist() == ["REGRESSED"] and paired["paired"].iloc[0] == "significant drop"
    assert paired["effect"].iloc[0] == -1.0 and paired["paired_n"].iloc[0] == 64
    # against scipy directly: one-sided Wilcoxon of the 64 differences
    from scipy.stats import wilcoxon

    assert paired["p_worse"].iloc[0] == pytest.approx(wilcoxon(now - base, alternative="less").pvalue, rel=1e-12)
    # the mirrored change is an improvement
    assert gate(now, base)["status"].tolist() == ["IMPROVED"]
    # a lower-is-better score: the same numbers are a gain
    base_frame, now_frame = per_image_frame(base, higher=False), per_image_frame(now, higher=False)
    diff = check.compare(check.aggregate(now_frame), check.updated_entries(check.aggregate(base_frame), [], 0.03))
    assert check.paired_tests(check.per_image(now_frame), check.per_image(base_frame), diff)["status"].tolist() == [
        "IMPROVED"]


@pytest.mark.parametrize("perturbation", [
    pytest.param("random", id="random-sign-1e-6"),
    pytest.param("up", id="all-up-1e-6"),
    pytest.param("down", id="all-down-1e-6"),
])
def test_scores_perturbed_by_1e_6_pass(perturbation):
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.8, 64)
    sign = {"random": rng.choice([-1.0, 1.0], 64), "up": np.ones(64), "down": -np.ones(64)}[perturbation]
    result = gate(base, base + 1e-6 * sign)
    assert result["status"].tolist() == ["OK"] and result["paired"].iloc[0] == "no significant change"
    # without the tolerance for rounding, a one-sided 1e-6 shift of every image would be "significant"
    if perturbation == "down":
        assert gate(base, base + 1e-6 * sign, atol=0.0)["status"].tolist() == ["REGRESSED"]


def test_the_effect_size_floor_keeps_a_negligible_but_significant_drop_ok():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.3, 0.8, 400)
    # 60 % of the images a little worse, 40 % a little better: significant at n = 400, effect ~ -0.2
    now = base + np.where(rng.random(400) < 0.6, -1, 1) * rng.uniform(0.001, 0.01, 400)
    result = gate(base, now, alpha=0.05)
    assert -0.3 < result["effect"].iloc[0] < 0 and result["p_worse"].iloc[0] < 0.05
    assert result["status"].tolist() == ["OK"]
    assert gate(base, now, alpha=0.05, min_effect=0.05)["status"].tolist() == ["REGRESSED"]


def test_junit_xml_has_one_testcase_per_entry_and_failures(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.8, 64)
    diff = pd.concat([gate(base, base - 0.02), gate(base, base)], ignore_index=True)
    diff.loc[1, "method"] = "cam"
    root = ElementTree.fromstring(check.junit_xml(diff))
    suite = root.find("testsuite")
    assert root.tag == "testsuites" and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["salbench.m.d.gradcam", "salbench.m.d.cam"]
    assert [c.get("name") for c in cases] == ["epg/energy", "epg/energy"]
    failure = cases[0].find("failure")
    assert failure.get("type") == "REGRESSED" and "significant drop" in failure.text
    assert cases[1].find("failure") is None and cases[1].find("system-out").text.startswith("OK")


# --------------------------------------------------------------------------- against real runs
@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory, compose_config, synthetic_bundle):
    """64 images of the synthetic set: the good run, and Grad-CAM shifted by two pixels."""
    from salbench.harness.runner import run_job

    root = tmp_path_factory.mktemp("paired")
    run_job(compose_config(GATE), root / "good")
    METHODS._entries["slightly_shifted_gradcam"] = SlightlyShiftedGradCAM
    try:
        cfg = compose_config(GATE)
        with open_dict(cfg):
            cfg.method = OmegaConf.create({"gradcam": {"name": "slightly_shifted_gradcam"}, "random": {"name": "random"}})
        run_job(cfg, root / "shifted")
    finally:
        METHODS._entries.pop("slightly_shifted_gradcam")
    return root


def test_check_paired_catches_a_grad_cam_shifted_by_two_pixels(tmp_path, gate_runs, capsys):
    good, shifted = gate_runs / "good", gate_runs / "shifted"
    baseline = tmp_path / "gate.yaml"
    assert check.main([str(good), "--baseline", str(baseline), "--update", "--method", "gradcam", "--tolerance",
                       "0.03", "--score", "energy", "--score", "iou", "--score", "gt_known_loc"]) == 0
    assert check.companion_path(baseline).is_file() and "per-image scores for --paired" in capsys.readouterr().out
    stored = pd.read_parquet(check.companion_path(baseline))
    assert len(stored) == 3 * 64 and set(stored["score"]) == {"energy", "iou", "gt_known_loc"}

    # the absolute tolerance lets the shifted maps through: every mean moved by less than 0.03 or rose
    assert check.main([str(shifted), "--baseline", str(baseline)]) == 0
    absolute = capsys.readouterr().out
    assert "0 regressed" in absolute
    means = {r["score"]: r for _, r in check.compare(check.aggregate(pd.read_parquet(shifted / "scores.parquet")),
                                                     check.read_baseline(baseline)).iterrows()}
    assert -0.03 < means["energy"]["delta"] < -0.005  # a real but small drop of the mean

    # the paired test does not: the energy drops on (nearly) every image
    junit = tmp_path / "gate.xml"
    assert check.main([str(shifted), "--baseline", str(baseline), "--paired", "--junit", str(junit)]) == 1
    captured = capsys.readouterr()
    assert "FAILED: 1 of 3" in captured.err
    line = next(line for line in captured.out.splitlines() if "energy_pointing_game/energy" in line and "gradcam" in line)
    assert line.rstrip().endswith("REGRESSED") and "significant drop" in captured.out
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["energy_pointing_game/energy"]

    # the unchanged method passes the paired gate, and so does a rerun whose scores moved by 1e-6
    assert check.main([str(good), "--baseline", str(baseline), "--paired"]) == 0
    assert "3 ok" in capsys.readouterr().out
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    scores = pd.read_parquet(good / "scores.parquet")
    rng = np.random.default_rng(0)
    scores["value"] = scores["value"] + 1e-6 * rng.choice([-1.0, 1.0], len(scores))
    from salbench.harness.store import write_json, write_parquet

    write_parquet(rerun / "scores.parquet", scores)
    write_json(rerun / "run.json", {"status": "completed", "config": {"method": {"gradcam": {}}}})
    assert check.main([str(rerun), "--baseline", str(baseline), "--paired"]) == 0
    assert "3 ok" in capsys.readouterr().out


def test_check_paired_without_per_image_scores_is_a_clear_error(tmp_path, gate_runs, capsys):
    baseline = tmp_path / "gate.yaml"
    assert check.main([str(gate_runs / "good"), "--baseline", str(baseline), "--update", "--score", "iou"]) == 0
    check.companion_path(baseline).unlink()
    assert check.main([str(gate_runs / "good"), "--baseline", str(baseline)]) == 0  # the absolute gate needs none
    assert check.main([str(gate_runs / "good"), "--baseline", str(baseline), "--paired"]) == 2
    assert "--paired needs the baseline's per-image scores" in capsys.readouterr().err


def test_check_paired_keeps_the_changed_status(tmp_path, gate_runs, compose_config, capsys):
    """A run with another protocol is CHANGED under --paired too (the numbers are not comparable)."""
    from salbench.harness.runner import run_job

    baseline = tmp_path / "gate.yaml"
    assert check.main([str(gate_runs / "good"), "--baseline", str(baseline), "--update", "--method", "gradcam",
                       "--score", "iou"]) == 0
    other = tmp_path / "other"
    run_job(compose_config([*GATE, "metric=[cam_paper]", "metric.cam_paper.threshold=0.5"]), other)
    assert check.main([str(other), "--baseline", str(baseline), "--paired"]) == 1
    assert "CHANGED" in capsys.readouterr().out
