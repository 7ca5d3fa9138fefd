"""An example salbench plugin: importing this module registers

* the method ``gradient_x_input`` (a plain function: gradient x input, Shrikumar et al. 2016),
* the metric ``concentration`` (share of a map's positive mass in its top pixels, with a
  dataset-level mean kept in an accumulator object of this plugin's own class),
* the model ``example_net`` (a seeded conv -> ReLU -> GAP -> linear classifier of 32 px images),
* the dataset ``stripes`` (one bright stripe per image; class 0 horizontal, 1 vertical; its box).

Each is then an option of its config group (``method=[gradient_x_input,gradcam]``), with the
defaults of its signature, and a name for ``salbench.create_method`` / ``list_methods``.
"""
from __future__ import annotations

import torch
from torch import nn

import salbench
from salbench.datasets.base import LocalizationDataset, input_size
from salbench.metrics import MethodwiseMetric, ScoreInfo


@salbench.register_method("gradient_x_input")
def gradient_x_input(model, x, target, absolute: bool = True):
    """Gradient x input (Shrikumar et al. 2016), summed over channels: [B, C, H, W] -> [B, H, W];
    ``absolute``: the magnitude (else the signed sum)."""
    x = x.detach().requires_grad_(True)
    scores = model(x).gather(1, target[:, None]).sum()
    (gradient,) = torch.autograd.grad(scores, x)
    maps = (gradient * x).sum(1)
    return maps.abs() if absolute else maps


class Accumulator:
    """Running sum and count (a metric state of the plugin's own class: checkpoints keep it)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, values: torch.Tensor) -> None:
        finite = values[torch.isfinite(values)]
        self.total += float(finite.double().sum())
        self.count += int(finite.numel())


@salbench.register_metric("concentration")
class Concentration(MethodwiseMetric):
    """Per image: the share of the map's positive mass in its top ``fraction`` of pixels (1: all
    mass there; ``fraction``: spread evenly); dataset level: the mean over images."""

    name = "concentration"
    category = "complexity"
    presets = {"concentration": {"fraction": 0.1}}
    scores = (ScoreInfo("concentration", True, "complexity"),
              ScoreInfo("concentration_mean", True, "complexity", scope="dataset"))

    def __init__(self, fraction: float = 0.1):
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
        self.fraction = fraction

    def protocol(self):
        return {"fraction": self.fraction, "mass": "positive part of the map"}

    def new_state(self):
        return Accumulator()

    def update_method(self, explained):
        maps = explained.heatmaps.flatten(1).clamp_min(0).double()
        keep = max(1, round(self.fraction * maps.shape[1]))
        top = maps.topk(keep, dim=1).values.sum(1)
        values = (top / maps.sum(1)).float()  # NaN for an all-zero map
        self.state(explained.method).add(values.cpu())
        return {"concentration": values}

    def compute_state(self, state):
        return {"concentration_mean": state.total / state.count} if state.count else {}


@salbench.register_model("example_net")
def example_net(num_classes: int = 2, width: int = 8, seed: int = 0) -> salbench.ModelBundle:
    """A seeded conv -> ReLU -> conv -> ReLU -> GAP -> linear classifier of 32 x 32 images."""
    generator = torch.Generator().manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                           nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return salbench.ModelBundle(name="example_net", module=module, input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                std=(0.25, 0.25, 0.25), class_names=["horizontal", "vertical"][:num_classes]
                                + [f"class{i}" for i in range(2, num_classes)], target_layer="2")


@salbench.register_dataset("stripes")
class Stripes(LocalizationDataset):
    """A bright stripe on a dark image, its place and orientation drawn from the index; class 0
    horizontal, 1 vertical; the box is the stripe."""

    class_names = ["horizontal", "vertical"]

    def __init__(self, num_images: int = 16, thickness: int = 6, image_size=None, **common):
        super().__init__(**common)
        self.num_images, self.thickness = num_images, thickness
        self.size = input_size(image_size, default=(32, 32))

    def num_items(self) -> int:
        return self.num_images

    def image_id(self, index: int) -> str:
        return f"stripes/{index:04d}"

    def load(self, index: int) -> dict:
        height, width = self.size
        generator = torch.Generator().manual_seed(index)
        label = index % 2
        start = int(torch.randint(0, (height if label == 0 else width) - self.thickness, (1,), generator=generator))
        image = torch.rand(3, height, width, generator=generator) * 0.2
        if label == 0:
            image[:, start:start + self.thickness, :] += 0.7
            box = [0, start, width - 1, start + self.thickness - 1]
        else:
            image[:, :, start:start + self.thickness] += 0.7
            box = [start, 0, start + self.thickness - 1, height - 1]
        return {"image": image, "label": label, "boxes": torch.tensor([box], dtype=torch.float32),
                "image_id": self.image_id(index)}
