"""Shared test helpers: small models, batch and ExplainedBatch builders, and the reusable
method / metric testers that every registered component runs through (tests/test_components.py).

A new method or metric is covered by the testers as soon as it is registered; its own test file
then only adds its reference case (a hand-computed toy, or captum / pytorch-grad-cam / Quantus on
the same inputs).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from salbench.datasets import collate
from salbench.metrics import ExplainedBatch, Metric

SIZE = 32  # side of the synthetic test images


# --------------------------------------------------------------------------- models
def tiny_net(seed: int = 0) -> nn.Module:
    """conv-ReLU-conv-ReLU-GAP-linear, [B, 3, H, W] -> [B, 4], with well-separated classes so
    that softmax curves move."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():
        net[-1].weight.mul_(8.0)
    return net.eval()


def small_cnn(num_classes: int = 5) -> nn.Module:
    """conv-BN-ReLU-maxpool-conv-BN-ReLU(in place)-conv-ReLU6-GAP-linear (CAM applies; both kinds
    of rectifier and an in-place one), eval mode, non-trivial BN statistics, seeded."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )
    for bn in (model[1], model[5]):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    return model.eval()


def bundle_of(model: nn.Module, size: int = SIZE, num_classes: int = 5) -> Any:
    """A :class:`~salbench.models.bundle.ModelBundle` around ``model`` (the synthetic set's
    normalization, class names "c0".."c<K-1>")."""
    from salbench.models import ModelBundle

    return ModelBundle("test", model, (size, size), (0.5,) * 3, (0.25,) * 3, [f"c{i}" for i in range(num_classes)])


# --------------------------------------------------------------------------- batches
def synthetic_batch(images: int = 3, size: int = SIZE, start: int = 0) -> Any:
    """A collated batch of the synthetic shapes (boxes and masks), dataset positions start..."""
    from salbench.datasets import create_dataset

    dataset = create_dataset("synthetic", num_images=start + images, image_size=size)
    return collate([dataset[i] for i in range(start, start + images)])


def box_batch(maps: Tensor, boxes: Sequence[Sequence[Sequence[float]]], labels: Optional[Sequence[int]] = None,
              orig_sizes=None, orig_boxes=None, masks=None, box_labels=None) -> Any:
    """A collated batch of blank images with the given per-image boxes (lists of [x0, y0, x1, y1])."""
    batch_size, height, width = maps.shape
    labels = labels if labels is not None else [0] * batch_size
    samples = []
    for i in range(batch_size):
        sample = {"image": torch.zeros(3, height, width), "label": labels[i],
                  "boxes": torch.tensor(boxes[i], dtype=torch.float32).reshape(-1, 4), "image_id": str(i)}
        if orig_sizes is not None:
            sample["orig_size"] = orig_sizes[i]
            sample["orig_boxes"] = torch.tensor(orig_boxes[i], dtype=torch.float32).reshape(-1, 4)
        if masks is not None:
            sample["mask"] = masks[i]
        if box_labels is not None:
            sample["box_labels"] = torch.tensor(box_labels[i], dtype=torch.long)
        samples.append(sample)
    return collate(samples)


def explained(batch: Any, maps: Any, *, inputs: Optional[Tensor] = None, targets: Optional[Tensor] = None,
              logits: Optional[Tensor] = None, model: Any = None, method: str = "m", explainers: Any = None,
              costs: Any = None, num_classes: int = 5) -> ExplainedBatch:
    """An :class:`ExplainedBatch` of ``batch``: ``maps`` one tensor [N, H, W] (of ``method``) or
    {method: maps}; ``inputs`` default the batch images; ``targets`` default the labels;
    ``logits`` default one-hot labels over ``num_classes``."""
    maps = maps if isinstance(maps, dict) else {method: maps}
    labels = batch.labels
    logits = logits if logits is not None else torch.nn.functional.one_hot(labels, num_classes).float()
    return ExplainedBatch(batch=batch, inputs=inputs if inputs is not None else batch.images, logits=logits,
                          targets=targets if targets is not None else labels, maps=maps, model=model,
                          explainers=explainers, costs=costs)


def model_explained(model: nn.Module, x: Tensor, maps: Any, labels: Optional[Tensor] = None,
                    indices: Optional[Iterable[int]] = None, method: str = "m") -> ExplainedBatch:
    """An :class:`ExplainedBatch` of model inputs ``x`` [B, C, H, W] (no dataset): logits from
    ``model``, targets its predictions, ids ``img<position>``."""
    with torch.no_grad():
        logits = model(x).detach()
    positions = list(indices if indices is not None else range(x.shape[0]))
    batch = SimpleNamespace(labels=labels if labels is not None else logits.argmax(1),
                            image_ids=[f"img{i}" for i in positions], indices=torch.as_tensor(positions))
    maps = maps if isinstance(maps, dict) else {method: maps}
    return ExplainedBatch(batch=batch, inputs=x, logits=logits, targets=logits.argmax(1), maps=maps,
                          model=SimpleNamespace(module=model))


def scores_of(metric: Metric, explained: ExplainedBatch, method: Optional[str] = None) -> Dict[str, Tensor]:
    """One method's per-row scores of one update (the only method when ``method`` is None)."""
    out = metric.update(explained)
    return out[method if method is not None else next(iter(out))]


# --------------------------------------------------------------------------- model state
class ModelState:
    """A snapshot of a model's mode, ``requires_grad`` flags, ``.grad``, hooks and weights."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes = [m.training for m in model.modules()]
        self.flags = [p.requires_grad for p in model.parameters()]
        self.grads = [p.grad for p in model.parameters()]
        self.hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
        self.weights = copy.deepcopy(model.state_dict())

    def assert_unchanged(self) -> None:
        model = self.model
        assert [m.training for m in model.modules()] == self.modes, "train/eval mode changed"
        assert [p.requires_grad for p in model.parameters()] == self.flags, "requires_grad changed"
        assert all(p.grad is g for p, g in zip(model.parameters(), self.grads)), ".grad changed"
        hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
        assert hooks == self.hooks, "a hook was left on the model"
        for key, value in model.state_dict().items():
            assert torch.equal(value, self.weights[key]), f"weight {key} changed"


def assert_same_values(got: Dict[str, Tensor], expected: Dict[str, Tensor], rtol: float = 0.0, atol: float = 0.0) -> None:
    """Per-score tensors equal (NaN where the other is NaN)."""
    assert set(got) == set(expected)
    for score in expected:
        torch.testing.assert_close(got[score].cpu().float(), expected[score].cpu().float(), rtol=rtol, atol=atol,
                                   equal_nan=True, msg=lambda m, s=score: f"{s}: {m}")


def split_rows(explained_batch: ExplainedBatch, parts: List[List[int]]) -> List[ExplainedBatch]:
    """The same rows as several smaller ExplainedBatches (``parts``: row positions of each)."""
    out = []
    for rows in parts:
        index = torch.tensor(rows, dtype=torch.long)
        batch = explained_batch.batch.select(rows)
        out.append(ExplainedBatch(batch=batch, inputs=explained_batch.inputs[index], logits=explained_batch.logits[index],
                                  targets=explained_batch.targets[index],
                                  maps={m: v[index] for m, v in explained_batch.maps.items()},
                                  model=explained_batch.model, explainers=explained_batch.explainers,
                                  costs=explained_batch.costs))
    return out


def explainer_case(method: str = "saliency", images: int = 4):
    """(model, explainer, x, labels, maps, ExplainedBatch) of one method on synthetic images: what
    a metric that re-runs the explainers (sensitivity, random logit) needs."""
    from salbench.methods import create_method

    model = small_cnn()
    batch = synthetic_batch(images)
    bundle = bundle_of(model)
    x = bundle.normalize(batch.images)
    explainer = create_method(method, model)
    with torch.no_grad():
        logits = model(x)
    maps = explainer(x, batch.labels)
    case = explained(batch, {method: maps}, inputs=x, logits=logits, model=bundle, explainers={method: explainer})
    return model, explainer, x, batch.labels, maps, case


# --------------------------------------------------------------------------- saved maps
SAVED_MAP_IDS = 6  # the rows of the testers' method inputs that have a saved map


def saved_maps_root() -> str:
    """A folder of seeded random maps [SIZE // 2, SIZE // 2] named ``img0.npy`` .. ``img5.npy``
    (made once per session, removed at exit): what ``method=precomputed`` reads in the testers."""
    global _SAVED_MAPS
    if _SAVED_MAPS is None:
        import atexit
        import shutil
        import tempfile
        from pathlib import Path

        import numpy as np

        folder = Path(tempfile.mkdtemp(prefix="salbench-saved-maps-"))
        atexit.register(shutil.rmtree, folder, True)
        generator = np.random.default_rng(0)
        for i in range(SAVED_MAP_IDS):
            np.save(folder / f"img{i}.npy", generator.random((SIZE // 2, SIZE // 2), dtype=np.float32))
        _SAVED_MAPS = str(folder)
    return _SAVED_MAPS


_SAVED_MAPS: Optional[str] = None


class ById:
    """A method that looks its maps up by image id (``needs_image_ids``), called as the testers
    call every method (``(x, target)``): each input row's id is ``img<i>``, ``i`` its row in
    ``reference`` (the testers' inputs)."""

    def __init__(self, explainer: Any, reference: Tensor):
        self.explainer, self.reference = explainer, reference.detach().cpu()

    def ids(self, x: Tensor) -> List[str]:
        rows = x.detach().cpu()
        return [f"img{next(i for i in range(len(self.reference)) if torch.equal(row, self.reference[i]))}"
                for row in rows]

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        return self.explainer(x, target, image_ids=self.ids(x))

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        return self.explainer.attribute(x, target, image_ids=self.ids(x))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.explainer, name)
