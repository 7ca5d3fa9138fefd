"""A tiny job through the console script writes well-formed results; Grad-CAM beats the baselines."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from salbench.harness.store import SCORE_COLUMNS

SALBENCH = str(Path(sys.executable).with_name("salbench"))


def run_cli(*args, cwd):
    result = subprocess.run([SALBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_fast_job_writes_scores_run_json_summary_and_gallery(tmp_path, synthetic_bundle):
    out = tmp_path / "run"
    result = run_cli("debug=fast", f"hydra.run.dir={out}", cwd=tmp_path)
    assert "mean per method" in result.stdout and "| gradcam" in result.stdout
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == SCORE_COLUMNS
    assert set(scores["method"]) == {"gradcam", "random", "center"}
    per_image = scores[scores["scope"] == "image"]
    # one row per (image, method, metric score): 8 images x 3 methods x 4 scores
    assert len(per_image) == 8 * 3 * 4 and per_image["image_id"].nunique() == 8
    assert not per_image.duplicated(["image_id", "method", "metric", "score"]).any()
    protocol = json.loads(per_image["protocol"].iloc[0])
    assert protocol["threshold"] == 0.2 and protocol["component"] == "largest"
    assert (per_image["preset"] == "cam_paper").all() and per_image["value"].between(0, 1).all()
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 0
    assert info["config"]["model"]["name"] == "synthetic_cnn"
    assert info["versions"]["torch"] and info["device"]["device"] == "cpu"
    assert info["counts"]["images"] == 8 and "started" in info and "ended" in info
    assert (out / "summary.md").read_text().count("|") > 10
    assert (out / "gallery.png").stat().st_size > 1000


def test_help_lists_the_config_groups(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    for group in ("method", "model", "dataset", "metric", "experiment", "debug"):
        assert f"{group}:" in result.stdout
    assert "schema" not in result.stdout  # the typed schemas are no option groups


def test_unknown_method_fails_with_close_matches(tmp_path):
    result = subprocess.run([SALBENCH, "debug=fast", "method=[gradcma]", f"hydra.run.dir={tmp_path}/r"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown method option 'gradcma'. Did you mean 'gradcam'" in result.stderr
    assert "Valid choices: " in result.stderr and "center" in result.stderr


def test_gradcam_localizes_far_better_than_random_and_center(tmp_path, compose_config, synthetic_bundle):
    from salbench.harness.runner import run_job

    cfg = compose_config(["dataset.limit=96", "progress=false", "gallery_images=0"])
    scores = run_job(cfg, tmp_path / "job")
    loc = scores[scores["score"] == "gt_known_loc"].groupby("method")["value"].mean()
    iou = scores[scores["score"] == "iou"].groupby("method")["value"].mean()
    assert loc["gradcam"] >= 0.35, loc
    assert loc["gradcam"] >= loc["random"] + 0.25 and loc["gradcam"] >= loc["center"] + 0.25, loc
    assert iou["gradcam"] >= 1.5 * max(iou["random"], iou["center"]), iou


@pytest.mark.slow  # 5-13 s on 2 cores; runs in `make test-slow`
def test_report_command_writes_tables_and_plot(tmp_path, synthetic_bundle):
    out = tmp_path / "sweep"
    run_cli("-m", "debug=fast", "method=[gradcam],[random]", f"hydra.sweep.dir={out}", cwd=tmp_path)
    result = run_cli("report", str(out), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert "gradcam" in result.stdout and "random" in result.stdout
    assert (tmp_path / "report" / "scores.png").stat().st_size > 1000
    assert (tmp_path / "report" / "summary.csv").exists()


def test_report_on_a_non_results_directory_is_a_clear_error(tmp_path):
    result = subprocess.run([SALBENCH, "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a salbench results directory" in result.stderr


def test_metric_map_target_explains_the_predicted_class_like_a_predicted_job(tmp_path, compose_config):
    """RISE scores maps of the predicted class; in a target=label job the runner explains the
    images whose prediction differs again, giving the rows of a target=predicted job."""
    import numpy as np

    from salbench.harness.runner import run_job

    common = ["debug=fast", "model.pretrained=false", "method=[gradcam,saliency]", "metric=[cam_paper,rise]",
              "metric.rise.n_steps=6", "dataset.limit=12"]
    by_label = run_job(compose_config(common + ["target=label"]), tmp_path / "label")
    by_prediction = run_job(compose_config(common + ["target=predicted"]), tmp_path / "predicted")
    key = ["method", "score", "image_index"]
    rise_label = by_label[by_label["metric"] == "rise"].sort_values(key).reset_index(drop=True)
    rise_pred = by_prediction[by_prediction["metric"] == "rise"].sort_values(key).reset_index(drop=True)
    assert (rise_label["label"] != rise_label["predicted"]).sum() > 0  # the re-explaining path ran
    assert (rise_label["target_rule"] == "predicted").all()
    assert (rise_label["target"] == rise_label["predicted"]).all()
    np.testing.assert_allclose(rise_label["value"], rise_pred["value"], rtol=0, atol=1e-6)
    loc = by_label[by_label["metric"] == "cam_paper"]
    assert (loc["target"] == loc["label"]).all() and (loc["target_rule"] == "label").all()


def test_a_job_writes_one_table_per_kind_with_method_and_metric_columns(tmp_path, compose_config):
    """Every side output of every method and metric lands in one table per kind (at most seven
    files with the scores), and run.json records the components' declarations reports read."""
    from salbench.harness.runner import run_job

    out = tmp_path / "job"
    run_job(compose_config(["debug=fast", "dataset.limit=4", "method=[gradcam,saliency,random]",
                            "metric=[cam_paper,wsoleval,rise,road,randomization,timing]", "metric.rise.n_steps=4",
                            "metric.road.fractions=[0.5]", "metric.randomization.max_images=1"]), out)
    tables = sorted(p.stem for p in out.glob("*.parquet"))
    assert tables == ["curves", "randomization", "scores", "tau_curves", "tau_images", "timing", "viewer"]
    for kind in ("curves", "randomization", "tau_curves", "tau_images", "timing"):
        table = pd.read_parquet(out / f"{kind}.parquet")
        assert list(table.columns[:2]) == ["method", "metric"] and set(table["method"]) == {"gradcam", "saliency",
                                                                                            "random"}, kind
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["metric"]) == {"rise", "road"} and set(curves["curve"]) == {"deletion", "insertion", "morf", "lerf"}
    components = json.loads((out / "run.json").read_text())["components"]
    assert components["methods"]["random"]["baseline"] and not components["methods"]["gradcam"]["baseline"]
    assert set(components["metrics"]["rise"]["curve_kinds"]) == {"deletion", "insertion"}
    assert components["metrics"]["cam_paper"]["needs"]["maps"] == "label"
    # a re-run with another metric set leaves no table of the old one behind
    run_job(compose_config(["debug=fast", "dataset.limit=4", "method=[gradcam]", "metric=[cam_paper]"]), out)
    assert sorted(p.stem for p in out.glob("*.parquet")) == ["scores", "viewer"]
    assert set(pd.read_parquet(out / "viewer.parquet")["method"]) == {"", "gradcam"}  # the new job's maps only
