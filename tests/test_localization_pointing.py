"""Pointing game (TorchRay rules), energy and grid pointing games: hand-computed toys, the
Quantus PointingGame reference on non-empty masks (and the empty-mask difference), class
averaging, the difficult subset, every class present and empty classes through a job."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from salbench.metrics import create_metric
from salbench.metrics.pointing import boxes_to_mask, energy_pointing, grid_pointing_score, max_points, pointing_hits
from helpers import scores_of
from test_localization import explained


def point_map(height, width, x, y):
    maps = torch.zeros(1, height, width)
    maps[0, y, x] = 1.0
    return maps


# --------------------------------------------------------------------------- toys
def test_pointing_tolerance_is_strict_15px():
    maps = point_map(40, 40, 5, 5)
    near, far = torch.zeros(1, 40, 40, dtype=torch.bool), torch.zeros(1, 40, 40, dtype=torch.bool)
    near[0, 5, 19] = True  # distance 14 < 15: hit
    far[0, 5, 20] = True  # distance 15, not < 15: miss (TorchRay: d^2 < tolerance^2)
    assert pointing_hits(maps, near).item() == 1.0
    assert pointing_hits(maps, far).item() == 0.0
    diagonal = torch.zeros(1, 40, 40, dtype=torch.bool)
    diagonal[0, 15, 15] = True  # d^2 = 200 < 225
    assert pointing_hits(maps, diagonal).item() == 1.0
    assert pointing_hits(maps, near, tolerance=0).item() == 0.0
    assert pointing_hits(maps, near, tolerance=0, ties="any").item() == 0.0
    assert pointing_hits(maps, near, ties="any").item() == 1.0
    assert pointing_hits(maps, far, ties="any").item() == 0.0


def test_pointing_ties_and_empty_ground_truth():
    maps = torch.zeros(1, 5, 5)
    maps[0, 0, 4] = maps[0, 4, 0] = 1.0  # two maxima: argmax takes (x=4, y=0)
    assert max_points(maps).tolist() == [[4, 0]]
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 4, 0] = True
    assert pointing_hits(maps, mask, tolerance=0, ties="first").item() == 0.0
    assert pointing_hits(maps, mask, tolerance=0, ties="any").item() == 1.0
    empty = torch.zeros(1, 5, 5, dtype=torch.bool)
    assert math.isnan(pointing_hits(maps, empty).item())  # never a hit


def test_energy_and_grid_toys():
    maps = torch.tensor([[[1.0, -5.0], [3.0, 0.0]]])
    mask = torch.tensor([[[True, True], [False, False]]])
    assert energy_pointing(maps, mask).item() == pytest.approx(1 / 4)  # negatives ignored
    assert math.isnan(energy_pointing(torch.zeros(1, 2, 2), mask).item())
    uniform = torch.ones(4, 12, 12)
    assert grid_pointing_score(uniform, 2, torch.arange(4)).tolist() == pytest.approx([1 / 4] * 4)
    assert grid_pointing_score(uniform[:1], 3, torch.tensor([4])).item() == pytest.approx(1 / 9)
    focused = torch.zeros(1, 12, 12)
    focused[0, 0:6, 6:12] = 2.0  # top-right cell = index 1
    assert grid_pointing_score(focused, 2, torch.tensor([1, 0]).narrow(0, 0, 1)).item() == 1.0
    assert boxes_to_mask(torch.tensor([[1.0, 0.0, 2.0, 1.0]]), (3, 4)).tolist() == [
        [False, True, True, False], [False, True, True, False], [False, False, False, False]]


def test_grid_pointing_game_metric_uses_target_box():
    maps = torch.ones(2, 8, 8)
    maps[1, 4:, 4:] = 5.0
    ex = explained(maps, [[[0, 0, 3, 3]], [[4, 4, 7, 7]]], labels=[1, 2])
    out = scores_of(create_metric("grid_pointing_game"), ex)["grid_score"]
    assert out.tolist() == pytest.approx([1 / 4, 80 / 128])


# --------------------------------------------------------------------------- quantus reference
def test_agrees_with_quantus_on_non_empty_masks_and_differs_on_empty():
    quantus = pytest.importorskip("quantus")
    generator = torch.Generator().manual_seed(0)
    batch, size = 16, 12
    maps = torch.rand(batch, size, size, generator=generator)  # continuous: no ties
    masks = torch.rand(batch, size, size, generator=generator) > 0.7
    masks[-1] = False  # one empty mask
    metric = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)
    reference = np.asarray(metric.evaluate_batch(a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy()),
                           dtype=float)
    ours = pointing_hits(maps, masks, tolerance=0, ties="any").numpy()
    assert 0 < reference[:-1].sum() < batch - 1  # both outcomes occur
    np.testing.assert_array_equal(ours[:-1], reference[:-1])
    assert reference[-1] == 1.0 and math.isnan(ours[-1])  # Quantus: a hit on an empty mask
    np.testing.assert_array_equal(pointing_hits(maps, masks, tolerance=0, ties="first").numpy()[:-1], reference[:-1])


# --------------------------------------------------------------------------- the metric
def make_batch():
    """Three images (20 x 20): classes 0, 1 and 2 with hand-placed maxima."""
    maps = torch.zeros(3, 20, 20)
    maps[0, 2, 2] = 1.0  # inside the class-0 box
    maps[1, 19, 19] = 1.0  # far from the class-1 box: miss
    maps[2, 10, 10] = 1.0  # target 0 again: inside
    boxes = [[[0, 0, 5, 5], [14, 14, 17, 17]], [[0, 0, 2, 2]], [[8, 8, 12, 12]]]
    ex = explained(maps, boxes, labels=[0, 1, 0])
    ex.batch.box_labels[0] = torch.tensor([0, 1])  # a distractor of class 1 in image 0
    return ex


def test_pointing_game_metric_class_average_and_difficult():
    ex = make_batch()
    metric = create_metric("pointing_game", frame="input")
    out = scores_of(metric, ex)
    assert out["pointing_hit"].tolist() == [1.0, 0.0, 1.0]
    # difficult rule: image 0's class-0 box covers 36 px < 400 / 4 and a distractor is present
    hard = out["pointing_hit_difficult"].tolist()
    assert hard[0] == 1.0 and math.isnan(hard[1]) and math.isnan(hard[2])
    result = metric.compute()["toy"]
    assert result["pointing_acc"] == pytest.approx((2 / 2 + 0 / 1) / 2)  # mean over classes
    assert result["pointing_acc_difficult"] == 1.0


def test_pointing_game_skips_all_difficult_and_absent_classes():
    ex = make_batch()
    ex.batch.difficult[1] = torch.tensor([True])
    ex = dataclasses.replace(ex, targets=torch.tensor([0, 1, 3]))  # class 3 is not in image 2
    out = scores_of(create_metric("pointing_game", frame="input"), ex)["pointing_hit"]
    assert out[0].item() == 1.0 and math.isnan(out[1].item()) and math.isnan(out[2].item())


def test_pointing_game_original_frame():
    maps = torch.zeros(1, 10, 10)
    maps[0, 1, 1] = 1.0
    ex = explained(maps, [[[0, 0, 1, 1]]], orig_sizes=[(100, 100)], orig_boxes=[[[60, 60, 90, 90]]])
    metric = create_metric("pointing_game", resize_mode="nearest")
    assert scores_of(metric, ex)["pointing_hit"].item() == 0.0  # max near (10..19) is > 15 px from (60, 60)
    ex = explained(maps, [[[0, 0, 1, 1]]], orig_sizes=[(100, 100)], orig_boxes=[[[20, 20, 90, 90]]])  # (10, 10) to (20, 20): 14.1 px
    assert scores_of(metric, ex)["pointing_hit"].item() == 1.0


def test_energy_pointing_game_metric():
    maps = torch.zeros(1, 6, 6)
    maps[0, 0:2, 0:2] = 1.0
    maps[0, 5, 5] = 4.0
    ex = explained(maps, [[[0, 0, 1, 1]]])
    assert scores_of(create_metric("energy_pointing_game"), ex)["energy"].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- every class present
def test_present_classes_lists_each_box_class_once_without_all_difficult_ones():
    ex = make_batch()
    ex.batch.box_labels[0] = torch.tensor([1, 0])
    ex.batch.difficult[2] = torch.tensor([True])
    metric = create_metric("pointing_game", frame="input")
    assert metric.needs.maps == "present"
    # image 2's only class is all-difficult: it stays (scored NaN) so the image keeps a row
    assert metric.present_classes(ex.batch) == [[0, 1], [1], [0]]
    assert create_metric("pointing_game", frame="input", ground_truth="mask").present_classes(ex.batch) == [[0], [1], [0]]
    explained_only = create_metric("pointing_game", classes="explained")
    assert explained_only.needs.maps == "target" and explained_only.protocol()["map_class"] == "explained_target"
    with pytest.raises(ValueError, match="classes must be one of"):
        create_metric("pointing_game", classes="all")


def test_batch_select_repeats_rows_and_per_sample_extras():
    ex = make_batch()
    ex.batch.extras["class_mask_labels"] = ["a", "b", "c"]
    ex.batch.extras["skipped"] = [{"image_id": "x", "index": 9, "reason": "corrupt"}]
    picked = ex.batch.select([0, 0, 2])
    assert picked.image_ids == [ex.batch.image_ids[i] for i in (0, 0, 2)]
    assert torch.equal(picked.images, ex.batch.images[[0, 0, 2]])
    assert torch.equal(picked.box_labels[1], ex.batch.box_labels[0]) and len(picked.boxes) == 3
    assert picked.extras["class_mask_labels"] == ["a", "a", "c"] and picked.extras["skipped"] == []


@pytest.mark.usefixtures("synthetic_bundle")
def test_job_scores_every_class_present_like_explaining_each_class_by_hand(tmp_path, compose_config, synthetic_bundle):
    """Multi-label 2x2 grids of synthetic shapes: the job writes one pointing row per (image,
    class present); each hit equals Grad-CAM of that class tested by hand against the union of
    that class's boxes, and pointing_acc is the mean over classes of the hand-made hit rates."""
    from salbench.datasets import create_dataset
    from salbench.methods import create_method
    from salbench.harness.runner import run_job

    grid = {"source": "synthetic", "source_options": {"num_images": 40}, "per_cell": False, "num_grids": 3,
            "threshold": 0.3}
    overrides = ["debug=fast", "dataset=grid", "dataset.source=synthetic", "+dataset.source_options.num_images=40",
                 "dataset.per_cell=false", "dataset.num_grids=3", "dataset.threshold=0.3", "dataset.limit=null",
                 "method=[gradcam]", "metric=[pointing_game]", "metric.pointing_game.tolerance=4", "target=predicted"]
    scores = run_job(compose_config(overrides), tmp_path / "job")
    hits = scores[(scores["metric"] == "pointing_game") & (scores["score"] == "pointing_hit")]
    dataset = create_dataset("grid", model=synthetic_bundle, image_size=synthetic_bundle.input_size, **grid)
    assert len(hits) == 3 * 4  # every grid holds 4 distinct classes
    assert (hits["target_rule"] == "present").all()
    gradcam = create_method("gradcam", synthetic_bundle)
    expected_rows = []
    for _, row in hits.iterrows():
        sample = dataset[int(row["image_index"])]
        present = sample["box_labels"] == int(row["target"])
        assert present.any()
        heatmap = gradcam(synthetic_bundle.normalize(sample["image"][None]), torch.tensor([int(row["target"])]))
        mask = boxes_to_mask(sample["boxes"][present], tuple(heatmap.shape[-2:]))
        expected = pointing_hits(heatmap, mask[None], tolerance=4).item()
        assert row["value"] == expected
        expected_rows.append((int(row["target"]), expected))
    per_class = {}
    for cls, hit in expected_rows:
        per_class.setdefault(cls, []).append(hit)
    accuracy = scores[(scores["metric"] == "pointing_game") & (scores["score"] == "pointing_acc")]["value"].item()
    assert accuracy == pytest.approx(np.mean([np.mean(v) for v in per_class.values()]))


@pytest.mark.parametrize("empty_class", ["skip", "zero"])
def test_empty_class_zero_counts_every_model_class_in_a_job(tmp_path, compose_config, empty_class):
    """``empty_class: zero`` divides by the model's class count (TorchRay's clamp): on 4 images
    of fewer than the 5 classes it is lower than ``skip``, by exactly the missing classes."""
    from salbench.harness.runner import run_job

    scores = run_job(compose_config(["debug=fast", "dataset.limit=4", "method=[gradcam]", "metric=[pointing_game]",
                                     "metric.pointing_game.tolerance=4",
                                     f"metric.pointing_game.empty_class={empty_class}"]), tmp_path / empty_class)
    hits = scores[scores["score"] == "pointing_hit"].dropna(subset=["value"])
    per_class = hits.groupby("target")["value"].mean()
    assert len(per_class) < 5  # some class never occurs in these images
    accuracy = scores.loc[scores["score"] == "pointing_acc", "value"].item()
    expected = per_class.sum() / (5 if empty_class == "zero" else len(per_class))
    assert accuracy == pytest.approx(expected)
