"""Determinism on the CPU: the same seed gives identical scores, and the batch size never
changes a score: every explanation pass and logits forward has exactly ``forward_chunk`` images
and every perturbation forward exactly the metric's ``batch_size`` inputs (the last chunk
padded; metrics capped by ``max_images`` pass at most that many images), so an image's numbers do not depend on the batch it arrived in."""
import pandas as pd
import pytest

KEY = ["image_id", "method", "metric", "score", "target"]
JOB = ["debug=fast", "method=[gradcam,saliency,guided_gradcam,occlusion,random]", "gallery_images=0", "device=cpu",
       "metric=[cam_paper,wsoleval,pxap,pointing_game,energy_pointing_game,rise,road,randomization,random_logit,sensitivity]",
       "metric.rise.n_steps=6", "metric.rise.batch_size=20", "metric.road.fractions=[0.3,0.7]",
       "metric.road.batch_size=6", "metric.randomization.max_images=3", "metric.randomization.mode=cascading",
       "metric.random_logit.max_images=3", "metric.sensitivity.max_images=3", "metric.sensitivity.n_perturbations=2",
       "method.occlusion.window=16", "method.occlusion.stride=16", "forward_chunk=4", "dataset.limit=7"]


def values(scores: pd.DataFrame) -> pd.Series:
    return scores.set_index(["scope", *KEY]).sort_index()["value"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compose_config, synthetic_bundle):
    from salbench.harness.runner import run_job

    return run_job(compose_config([*JOB, "batch_size=7"]), tmp_path_factory.mktemp("ref") / "run")


def test_same_seed_gives_identical_scores(tmp_path, compose_config, reference):
    from salbench.harness.runner import run_job

    again = run_job(compose_config([*JOB, "batch_size=7"]), tmp_path / "again")
    pd.testing.assert_frame_equal(again, reference, check_exact=True)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_never_changes_a_score(tmp_path, compose_config, reference, batch_size):
    """Every per-image and dataset-level score, bit for bit (batch sizes 1 and 3 against 7)."""
    from salbench.harness.runner import run_job

    other = run_job(compose_config([*JOB, f"batch_size={batch_size}"]), tmp_path / "other")
    got, expected = values(other), values(reference)
    assert got.index.equals(expected.index) and len(expected) > 5 * 7 * 10
    mismatched = (got != expected) & ~(got.isna() & expected.isna())
    assert not mismatched.any(), got[mismatched].head(10)
