"""Confidence change (Average Drop, Increase in Confidence, Average Gain) against TorchCAM's
ClassificationMetric and pytorch-grad-cam's confidence-change metrics on the same inputs and
maps, a float64 transcription of the papers' formulas, and the deviations: pytorch-grad-cam's
DropInConfidence does not divide by Y; TorchCAM adds 1e-7 to Y."""
from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import pytest
import torch

from salbench.metrics import create_metric
from salbench.metrics.functional import confidence_change, scale_maps
from helpers import bundle_of, explained, small_cnn, synthetic_batch


def shared_case(seed=0, images=6):
    """A small CNN, its normalized inputs (synthetic shapes), maps of the predicted class."""
    model = small_cnn()
    batch = synthetic_batch(images)
    bundle = bundle_of(model)
    x = bundle.normalize(batch.images)
    with torch.no_grad():
        logits = model(x)
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(images, x.shape[-2], x.shape[-1], generator=generator) * 3 - 1
    maps[2] = 0.5  # a constant map: min-max makes it all zeros
    case = explained(batch, maps, inputs=x, logits=logits, model=bundle, method="m")
    return model, bundle, x, logits, maps, case


def transcription(model, x, maps, tracked, epsilon=0.0):
    """float64 loops: Y on the image, O on the image times the min-max map (Chattopadhyay et al.)."""
    drops, increases, gains = [], [], []
    for xi, mi, c in zip(x, maps, tracked.tolist()):
        m = mi.double()
        m = torch.zeros_like(m) if m.max() == m.min() else (m - m.min()) / (m.max() - m.min())
        with torch.no_grad():
            y = model(xi[None]).softmax(1)[0, c].double().item()
            o = model((xi * m.float())[None]).softmax(1)[0, c].double().item()
        drops.append(max(0.0, y - o) / (y + epsilon))
        increases.append(float(o > y))
        gains.append(max(0.0, o - y) / (1 - y + epsilon))
    return np.array(drops), np.array(increases), np.array(gains)


def test_confidence_change_equals_the_papers_formulas():
    model, _, x, logits, maps, case = shared_case()
    metric = create_metric("confidence_change")
    assert metric.preset == "gradcampp"
    got = metric.update(case)["m"]
    drop, increase, gain = transcription(model, x, maps, logits.argmax(1))
    np.testing.assert_allclose(got["average_drop"].numpy(), drop, atol=1e-6)
    np.testing.assert_allclose(got["increase_in_confidence"].numpy(), increase, atol=0)
    np.testing.assert_allclose(got["average_gain"].numpy(), gain, atol=1e-6)
    values = confidence_change(torch.tensor([0.5, 0.8]), torch.tensor([0.25, 0.9]))
    assert values["average_drop"].tolist() == [0.5, 0.0] and values["increase_in_confidence"].tolist() == [0.0, 1.0]
    assert values["average_gain"].tolist() == pytest.approx([0.0, 0.5])


class FakeExtractor:
    """A TorchCAM CAM extractor that returns given maps (TorchCAM's metric takes the CAM as is)."""

    def __init__(self, model, maps):
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def test_torchcam_preset_equals_torchcams_classification_metric():
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    model, _, x, logits, maps, case = shared_case(seed=1)
    scaled = scale_maps(maps, "minmax")  # TorchCAM's extractors hand over min-max normalized CAMs
    reference = torchcam_metrics.ClassificationMetric(FakeExtractor(model, scaled), partial(torch.softmax, dim=-1))
    reference.update(x, class_idx=logits.argmax(1).tolist())
    summary = reference.summary()
    metric = create_metric("confidence_change", epsilon=1e-7)
    assert metric.preset == "torchcam"
    got = metric.update(case)["m"]
    assert got["average_drop"].double().mean().item() == pytest.approx(summary["avg_drop"], abs=1e-6)
    assert got["increase_in_confidence"].double().mean().item() == pytest.approx(summary["conf_increase"], abs=1e-9)


def test_pytorch_grad_cam_confidence_change_and_its_undivided_drop():
    """pytorch-grad-cam: CamMultImageConfidenceChange = O - Y, IncreaseInConfidence = 1[O > Y]
    (equal to salbench's), DropInConfidence = max(0, Y - O): not divided by Y (the paper's
    Average Drop is; shown here as salbench's drop x Y)."""
    gradcam_metrics = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, _, x, logits, maps, case = shared_case(seed=2)
    tracked = logits.argmax(1)
    cams = scale_maps(maps, "minmax").numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in tracked]
    change = gradcam_metrics.CamMultImageConfidenceChange()(x, cams, targets, model)
    drop = gradcam_metrics.DropInConfidence()(x, cams, targets, model)
    increase = gradcam_metrics.IncreaseInConfidence()(x, cams, targets, model)
    got = create_metric("confidence_change").update(case)["m"]
    clean = logits.softmax(1).gather(1, tracked[:, None])[:, 0].double().numpy()
    np.testing.assert_allclose(got["increase_in_confidence"].numpy(), increase, atol=0)
    np.testing.assert_allclose(got["average_drop"].double().numpy() * clean, drop, atol=1e-6)
    assert not np.allclose(got["average_drop"].numpy(), drop, atol=1e-3)  # the deviation
    masked = clean + change.astype(np.float64)
    np.testing.assert_allclose(got["average_gain"].numpy(), np.maximum(masked - clean, 0) / (1 - clean), atol=1e-5)


def test_image_space_logit_and_options():
    model, bundle, x, logits, maps, case = shared_case(seed=3)
    image_space = create_metric("confidence_change", multiplied="image").update(case)["m"]
    tracked = logits.argmax(1)
    scaled = scale_maps(maps, "minmax")
    with torch.no_grad():
        masked = model(bundle.normalize(case.images * scaled[:, None])).softmax(1).gather(1, tracked[:, None])[:, 0]
    clean = logits.softmax(1).gather(1, tracked[:, None])[:, 0]
    np.testing.assert_allclose(image_space["average_drop"].numpy(),
                               ((clean - masked).clamp_min(0) / clean).numpy(), atol=1e-6)
    logit_metric = create_metric("confidence_change", score="logit")
    assert [s.name for s in logit_metric.scores] == ["average_drop", "increase_in_confidence"]
    assert set(logit_metric.update(case)["m"]) == {"average_drop", "increase_in_confidence"}
    with pytest.raises(ValueError, match="valid: input, image"):
        create_metric("confidence_change", multiplied="pixels")
    assert scale_maps(torch.tensor([[[-1.0, 2.0]]]), "max").tolist() == [[[0.0, 1.0]]]
