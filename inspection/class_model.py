"""Class model visualization by gradient ascent on the input (Simonyan, Vedaldi & Zisserman 2013,
"Deep inside convolutional networks", Sec. 2):

    I* = argmax_I  S_c(I) - lambda ||I||_2^2

``S_c``: the unnormalized (pre-softmax) score of class ``c``; ``I``: the image in the model's
input space (normalized: the zero image is the mean image, the paper's start). Plain gradient
ascent ``I <- I + lr * grad`` (``optimizer="sgd"``, the paper's) or Adam (the default: its step
does not depend on the scale of a model's gradients, so one ``lr`` serves every model). Optional regularizers of later
work (Yosinski, Clune, Nguyen, Fuchs & Lipson 2015, "Understanding neural networks through deep
visualization"; Mordvintsev, Olah & Tyka 2015): ``jitter`` (each step's forward sees the image
rolled by a random offset in [-jitter, jitter] pixels on each axis) and ``blur_sigma`` /
``blur_every`` (a Gaussian blur of the image every ``blur_every`` steps). Every random draw comes
from a generator seeded with ``seed``. All classes are optimized together, one image each,
batched on the model's device; the model is left exactly as it was (mode, ``requires_grad``,
``.grad``).

Returns the images, and per step the class score ``S_c(I_t)`` of the un-jittered image and the
objective: row ``t`` is before update ``t``, the last row after the final update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.methods.hooks import preserved_model_state

INITS = ("zero", "noise")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class ClassModelResult:
    images: Tensor  # [K, 3, H, W] in the model's input space
    scores: Tensor  # [steps + 1, K] class score S_c of the current (un-jittered) image
    objectives: Tensor  # [steps + 1, K] S_c - lambda ||I||^2
    classes: Tensor  # [K]


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, C, H, W] (kernel radius ceil(3 sigma), reflect padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def class_model_visualization(model: nn.Module, classes: Sequence[int], input_size: Sequence[int], *, steps: int = 200,
                              lr: float = 0.05, l2: float = 1e-3, optimizer: str = "adam", init: str = "zero",
                              init_std: float = 0.1, jitter: int = 0, blur_sigma: float = 0.0, blur_every: int = 0,
                              seed: int = 0, device: torch.device = torch.device("cpu")) -> ClassModelResult:
    """Optimize one image per class of ``classes`` (see the module docstring)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if steps < 0 or lr <= 0 or l2 < 0 or jitter < 0 or blur_sigma < 0 or blur_every < 0:
        raise ValueError(f"need steps >= 0, lr > 0, l2 >= 0, jitter >= 0, blur_sigma >= 0, blur_every >= 0; got "
                         f"steps={steps}, lr={lr}, l2={l2}, jitter={jitter}, blur_sigma={blur_sigma}, blur_every={blur_every}")
    generator = torch.Generator().manual_seed(int(seed))
    target = torch.as_tensor(list(classes), dtype=torch.long, device=device)
    height, width = int(input_size[0]), int(input_size[1])
    shape = (len(target), 3, height, width)
    start = torch.zeros(shape) if init == "zero" else torch.randn(shape, generator=generator) * init_std
    image = start.to(device).requires_grad_(True)
    update = torch.optim.SGD([image], lr=lr) if optimizer == "sgd" else torch.optim.Adam([image], lr=lr)
    rows = torch.arange(len(target), device=device)

    def measure(logits: Tensor) -> Dict[str, Tensor]:
        score = logits[rows, target]
        return {"score": score, "objective": score - l2 * image.detach().pow(2).flatten(1).sum(1)}

    scores, objectives = [], []
    with preserved_model_state(model):
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for step in range(steps + 1):
            shift = [int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator)] if jitter else [0, 0]
            if step == steps or any(shift):  # the recorded score is always the un-jittered image's
                with torch.no_grad():
                    clean = measure(model(image))
                scores.append(clean["score"].detach())
                objectives.append(clean["objective"].detach())
            if step == steps:
                break
            seen = torch.roll(image, shifts=shift, dims=(2, 3)) if any(shift) else image
            logits = model(seen)
            score = logits[rows, target]
            if not any(shift):
                scores.append(score.detach())
                objectives.append((score - l2 * image.detach().pow(2).flatten(1).sum(1)).detach())
            objective = score - l2 * image.pow(2).flatten(1).sum(1)
            update.zero_grad()
            (-objective.sum()).backward()  # images are independent: the sum's gradient is each one's
            update.step()
            if blur_sigma > 0 and blur_every > 0 and (step + 1) % blur_every == 0:
                with torch.no_grad():
                    image.copy_(gaussian_blur(image, blur_sigma))
    return ClassModelResult(images=image.detach(), scores=torch.stack(scores), objectives=torch.stack(objectives),
                            classes=target)


def display_images(images: Tensor, mean: Sequence[float], std: Sequence[float], mode: str = "minmax") -> Tensor:
    """Model-space images [K, 3, H, W] -> [K, 3, H, W] in [0, 1] for display: un-normalized to
    pixel space, then ``minmax`` (each image scaled to its own range) or ``clip`` (clipped to
    [0, 1])."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    pixels = images * std_t + mean_t
    if mode == "clip":
        return pixels.clamp(0, 1)
    if mode == "minmax":
        low = pixels.flatten(1).min(1).values[:, None, None, None]
        high = pixels.flatten(1).max(1).values[:, None, None, None]
        return (pixels - low) / (high - low).clamp_min(1e-12)
    raise ValueError(f"unknown display mode {mode!r}; valid: minmax, clip")
