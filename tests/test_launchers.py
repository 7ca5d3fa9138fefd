"""Sweeps through Hydra launcher plugins (the ``launchers`` extra) and dataset sharding.

The union of the shards' per-image scores equals one unsharded run's, whichever launcher ran
the shards; the report loader merges them. Tests skip when a launcher plugin is not installed.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from salbench.reports.load import load

SALBENCH = str(Path(sys.executable).with_name("salbench"))
KEY = ["image_id", "method", "metric", "score"]
FAST = ["debug=fast", "dataset.limit=10", "gallery_images=0"]


def needs_plugin(module: str):
    try:
        installed = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent namespace (hydra_plugins) is absent too
        installed = False
    return pytest.mark.skipif(not installed, reason=f"{module} not installed (pip install 'salbench[launchers]')")


def sweep(*overrides, out: Path, timeout: int = 600):
    result = subprocess.run([SALBENCH, "-m", *FAST, *overrides, f"hydra.sweep.dir={out}"],
                            cwd=out.parent, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, compose_config, synthetic_bundle):
    """Per-image scores of one in-process run over the same 10 images, indexed by KEY."""
    from salbench.harness.runner import run_job

    scores = run_job(compose_config([*FAST, "method=[gradcam,random]"]), tmp_path_factory.mktemp("one") / "run")
    return scores[scores["scope"] == "image"].set_index(KEY).sort_index()


def assert_same_per_image_scores(merged: pd.DataFrame, reference: pd.DataFrame) -> None:
    merged = merged[merged["scope"] == "image"]
    assert not merged.duplicated(KEY).any(), "an image was scored by two shards"
    merged = merged.set_index(KEY).sort_index()
    assert merged.index.equals(reference.index)  # every image exactly once, nothing lost
    pd.testing.assert_series_equal(merged["value"], reference["value"], check_exact=False, rtol=0, atol=1e-6)
    for column in ("label", "predicted", "target", "flag"):
        assert (merged[column] == reference[column]).all(), column


def test_shards_partition_the_dataset_and_merge_to_the_unsharded_scores(tmp_path, unsharded):
    out = tmp_path / "sweep"
    sweep("method=[gradcam,random]", "dataset.shard=0,1", "dataset.num_shards=2", out=out)
    merged = load(out)
    assert merged["run"].nunique() == 2
    shards = [set(part["image_id"]) for _, part in merged.groupby("run")]
    assert len(shards[0]) == 5 and len(shards[1]) == 5 and not shards[0] & shards[1]
    assert_same_per_image_scores(merged, unsharded)


@pytest.mark.slow  # ~20-40 s: two loky worker processes each import torch
@needs_plugin("hydra_plugins.hydra_joblib_launcher")
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path, unsharded):
    out = tmp_path / "sweep"
    result = sweep("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=[gradcam],[random]", out=out)
    assert "Joblib.Parallel" in result.stdout + result.stderr
    merged = load(out)
    assert sorted(merged.groupby("run")["method"].first()) == ["gradcam", "random"]
    assert set(merged["status"]) == {"completed"}
    assert_same_per_image_scores(merged, unsharded)


@pytest.mark.slow
@needs_plugin("hydra_plugins.hydra_submitit_launcher")
def test_submitit_local_launcher_runs_sharded_jobs(tmp_path, unsharded):
    out = tmp_path / "sweep"
    sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
          "method=[gradcam,random]", "dataset.shard=0,1", "dataset.num_shards=2", out=out)
    assert (out / ".submitit").is_dir()  # the jobs really went through submitit
    merged = load(out)
    assert merged["run"].nunique() == 2 and set(merged["status"]) == {"completed"}
    assert_same_per_image_scores(merged, unsharded)
