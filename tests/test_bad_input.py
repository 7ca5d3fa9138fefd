"""Bad input: one clear message per case, and nothing lost (broken maps are scored NaN with a
flag, the rest of the job goes on)."""
import json

import pandas as pd
import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict
from torch import nn

from salbench.datasets import collate, create_dataset
from salbench.methods import METHODS, create_method
from salbench.methods.base import Explainer
from salbench.metrics import create_metric
from salbench.metrics.localization import box_iou
from salbench.models import create_model
from salbench.harness.registry import UnknownNameError

from helpers import explained, scores_of


def tiny_cnn(gap: bool = True) -> nn.Module:
    """[B, 3, 16, 16] -> logits [B, 3]; with a GAP + linear head, or flatten + linear without."""
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)] if gap else [nn.Flatten(), nn.Linear(4 * 16 * 16, 3)]
    torch.manual_seed(0)
    return nn.Sequential(features, *head).eval()


# --------------------------------------------------------------------------- unknown names
@pytest.mark.parametrize(
    "build, typo, suggestion",
    [
        pytest.param(lambda n: create_method(n, tiny_cnn()), "gradcma", "gradcam", id="method"),
        pytest.param(lambda n: create_model(n), "synthetic_ccn", "synthetic_cnn", id="model"),
        pytest.param(lambda n: create_dataset(n), "synthetc", "synthetic", id="dataset"),
        pytest.param(lambda n: create_metric(n), "cam_papr", "cam_paper", id="metric"),
    ],
)
def test_unknown_name_lists_close_matches(build, typo, suggestion):
    with pytest.raises(UnknownNameError) as error:
        build(typo)
    message = str(error.value)
    assert f"{typo!r}" in message and f"Did you mean {suggestion!r}" in message and "Valid choices:" in message


def test_unknown_registry_name_in_a_config_node_lists_close_matches(compose_config):
    from salbench.harness.schema import validate_config

    cfg = compose_config(["debug=fast", "method=[gradcam]"])
    with open_dict(cfg):
        cfg.method.gradcam.name = "gradcma"
    with pytest.raises(UnknownNameError, match="unknown method 'gradcma'. Did you mean 'gradcam'"):
        validate_config(cfg)


@pytest.mark.parametrize(
    "override, listed",
    [pytest.param("model=synthetc_cnn", "synthetic_cnn", id="model"),
     pytest.param("dataset=synthetc", "synthetic", id="dataset")],
)
def test_unknown_config_option_of_a_single_select_group_lists_the_options(compose_config, override, listed):
    with pytest.raises(MissingConfigException) as error:
        compose_config([override])
    assert override.split("=")[1] in str(error.value) and listed in str(error.value)


@pytest.mark.parametrize("override", [pytest.param("method=[gradcma]", id="method"),
                                      pytest.param("metric=[cam_papr]", id="metric")])
def test_unknown_config_option_of_a_multi_select_group_names_it(compose_config, override):
    # Hydra says "Could not load 'method/gradcma'" without the choices (see the lead's note on
    # a pre-check in the CLI); at least the bad name and its group are in the message.
    with pytest.raises(MissingConfigException) as error:
        compose_config([override])
    group, name = override.split("=")[0], override.split("[")[1].rstrip("]")
    assert f"{group}/{name}" in str(error.value)


def test_unknown_layer_lists_the_candidate_layers():
    with pytest.raises(UnknownNameError) as error:
        create_method("gradcam", tiny_cnn(), layer="0.9")
    message = str(error.value)
    assert "unknown layer '0.9'" in message and "Did you mean '0.0'" in message and "Valid choices:" in message


# --------------------------------------------------------------------------- architecture
def test_cam_on_a_model_without_a_gap_head_is_a_clear_error():
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([0, 1])
    assert create_method("cam", tiny_cnn(gap=True))(x, target).shape == (2, 16, 16)  # the same net with GAP works
    with pytest.raises(ValueError, match="global-average-pooling.*use method 'gradcam' instead"):
        create_method("cam", tiny_cnn(gap=False))(x, target)


# --------------------------------------------------------------------------- explainer inputs
@pytest.mark.parametrize(
    "x, target, message",
    [
        pytest.param(torch.randn(3, 16, 16), torch.tensor([0]), r"x must be a float tensor \[B, C, H, W\]; got shape \(3, 16, 16\)",
                     id="3d-image"),
        pytest.param(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([0, 1]), "dtype torch.uint8", id="uint8-image"),
        pytest.param(torch.randn(2, 3, 16, 16), torch.tensor([0.0, 1.0]), "integer tensor", id="float-target"),
        pytest.param(torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 2]), r"shape \[B\]=\[2\]; got \(3,\)", id="target-length"),
        pytest.param(torch.randn(2, 3, 16, 16), torch.tensor([0, 7]), "target class 7 is outside the model's 3 classes",
                     id="target-class"),
    ],
)
@pytest.mark.parametrize("method", ["gradcam", "random"])
def test_wrong_input_shape_or_dtype_is_a_clear_error(method, x, target, message):
    explainer = create_method(method, tiny_cnn())
    if method == "random" and "outside" in message:  # baselines ignore the model: any class is fine
        assert explainer(x, target).shape == (2, 16, 16)
        return
    with pytest.raises(ValueError, match=message):
        explainer(x, target)


# --------------------------------------------------------------------------- broken maps
class BrokenMaps(Explainer):
    """Image 0: NaN map, image 1: +Inf map, image 2: constant map, others: a valid peaked map."""

    name = "broken_maps"

    def attribute(self, x, target):
        height, width = x.shape[-2:]
        maps = torch.zeros(x.shape[0], height, width)
        maps[:, height // 4: height // 2, width // 4: width // 2] = 1.0
        for position, index in enumerate(self.batch_positions(x)):
            if index == 0:
                maps[position] = float("nan")
            elif index == 1:
                maps[position, 0, 0] = float("inf")
            elif index == 2:
                maps[position] = 0.5
        return maps

    def batch_positions(self, x):
        start = getattr(self, "_seen", 0)
        self._seen = start + x.shape[0]
        return range(start, start + x.shape[0])


@pytest.fixture
def broken_maps(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "broken_maps", BrokenMaps)


def test_nonfinite_and_constant_maps_are_flagged_scored_nan_and_the_job_goes_on(
        tmp_path, compose_config, synthetic_bundle, broken_maps):
    from salbench.harness.runner import run_job

    cfg = compose_config(["debug=fast", "method=[gradcam]", "dataset.limit=6", "gallery_images=0"])
    with open_dict(cfg):
        cfg.method.broken = OmegaConf.create({"name": "broken_maps"})
    scores = run_job(cfg, tmp_path / "job")
    per_image = scores[scores["scope"] == "image"]
    broken = per_image[per_image["method"] == "broken"].set_index(["image_index", "score"]).sort_index()
    flags = broken["flag"].groupby(level="image_index").first()
    assert flags.tolist() == ["nonfinite_map", "nonfinite_map", "constant_map", "", "", ""]
    assert broken.loc[[0, 1, 2], "value"].isna().all()
    assert broken.loc[[3, 4, 5], "value"].notna().all()
    gradcam = per_image[per_image["method"] == "gradcam"]
    assert len(gradcam) == 6 * 4 and gradcam["value"].notna().all() and (gradcam["flag"] == "").all()
    info = json.loads((tmp_path / "job" / "run.json").read_text())
    assert info["status"] == "completed" and info["counts"]["flagged_maps"] == 3
    saved = pd.read_parquet(tmp_path / "job" / "scores.parquet")
    assert (saved["flag"] != "").sum() == 3 * 4  # 3 images x 4 cam_paper scores


# --------------------------------------------------------------------------- ground truth
def test_empty_ground_truth_gives_nan_not_zero():
    boxes = torch.tensor([[2.0, 2.0, 5.0, 5.0], [0.0, 0.0, 3.0, 3.0]])
    iou = box_iou(boxes, [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 3.0, 3.0]])])
    assert torch.isnan(iou[0]) and iou[1] == 1.0

    image = torch.rand(3, 16, 16)
    samples = [{"image": image, "label": 0, "boxes": torch.zeros(0, 4), "image_id": "no-boxes"},
               {"image": image, "label": 1, "boxes": torch.tensor([[4.0, 4.0, 11.0, 11.0]]), "image_id": "boxed"}]
    batch = collate(samples)
    heatmaps = torch.zeros(2, 16, 16)
    heatmaps[:, 4:12, 4:12] = 1.0
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    values = scores_of(create_metric("cam_paper"), explained(batch, heatmaps, logits=logits))
    for score in ("iou", "gt_known_loc", "top1_loc", "top5_loc"):
        assert torch.isnan(values[score][0]), score
        assert values[score][1] == 1.0, score


# --------------------------------------------------------------------------- results directories
def test_a_directory_without_results_is_a_clear_error_for_report_and_check(tmp_path, capsys):
    from salbench.harness.check import main as check_main
    from salbench.reports.load import load

    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="not a salbench results directory: no scores.parquet"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing")
    assert check_main([str(tmp_path), "--baseline", str(tmp_path / "b.yaml")]) == 2
    assert "not a salbench results directory" in capsys.readouterr().err
    from salbench.reports.cli import main as report_main

    assert report_main([str(tmp_path)]) == 2
    assert "not a salbench results directory" in capsys.readouterr().err
