"""End-to-end comparison: the demo's work done by salbench and by the peer libraries, as a user
would write it with them, on the same images with the same protocol values.

    python -m benchmarks.peers [--images 100] [--device cpu] [--json FILE] [--check-only]

The work is conf/experiment/demo.yaml's synthetic cell as it was before the comparison set joined
the demo (the job is given these methods and metrics): the shipped synthetic CNN, the synthetic
test images (64 px), the maps of eight methods and two baselines for the labelled class (and for
the predicted class where it differs, for the deletion/insertion curves), scored by the CAM
paper's box rule, wsolevaluation's MaxBoxAcc / MaxBoxAccV2 (tau grid 0.001), the pointing game
(4 px tolerance), the energy pointing game, RISE deletion / insertion (32 steps) and the
cascading and independent model-randomization check (8 images; Spearman of |map| and of the
signed map, SSIM).

* **salbench**: the job itself (``run_job`` on ``experiment=demo`` in a temporary folder, in this
  process); component times from its own timing table (metric ``update`` times) and from the
  map computations of the job loop (every ``explain_all`` call, timed by wrapping it).
* **peers**: captum methods one by one (CAM: ``LayerActivation`` x the head's weights, captum
  has no CAM), pytorch-grad-cam for Grad-CAM and counterfactual Grad-CAM (a negated-score
  target), numpy baselines; the CAM paper's rule with ``scipy.ndimage.label``; a
  wsolevaluation-style loop over every threshold (one ``cv2.findContours`` per image and tau);
  the pointing game (argmax, distance to the box pixels) and Quantus ``RelevanceMassAccuracy``
  (energy); the RISE reference's deletion and insertion loop (one forward of the batch per step;
  Quantus ``PixelFlipping`` cannot run 32 steps at 64 px: :func:`causal_metric`); Quantus ``MPRT`` (cascading: ``top_down``; ``independent``)
  once per similarity (Spearman |map|, Spearman signed, SSIM), as Quantus takes one similarity
  per metric.

Where the protocols are the same the peers' numbers equal salbench's (:func:`value_checks`:
captum's maps equal salbench's, so the CAM-paper accuracy, MaxBoxAccV2, pointing game, energy
and the deletion / insertion AUCs of saliency, guided backprop and occlusion agree to float
rounding; Grad-CAM differs by pytorch-grad-cam's min-max and cv2 resize, the baselines and the
randomized weights by their random draws).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salbench.harness.allocator import MALLOC_CHOICES

METHODS = ["cam", "gradcam", "counterfactual_gradcam", "guided_gradcam", "saliency", "guided_backprop", "deconvnet",
           "occlusion", "random", "center"]
COMPONENTS = ("explain", "localization", "curves", "randomization")
LOCALIZATION_METRICS = ("cam_paper", "wsoleval", "pointing_game", "energy_pointing_game")
BATCH = 32  # the job's batch_size and forward_chunk (the config's defaults)
WINDOW, STRIDE = 16, 8  # occlusion's defaults (the demo keeps them)
N_STEPS, TOLERANCE, RANDOMIZED_IMAGES = 32, 4, 8
SALBENCH_METRICS = (*LOCALIZATION_METRICS, "rise", "randomization", "timing")


class Clock:
    """Accumulated wall-clock seconds per component (the CPU: perf_counter)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------- data
def demo_data(images: int, device: torch.device) -> Dict[str, Any]:
    """The demo's images, labels and boxes, and the shipped model (salbench loads both: the
    loading is not what is compared)."""
    from salbench.datasets import create_dataset
    from salbench.models import create_model

    bundle = create_model("synthetic_cnn")
    dataset = create_dataset("synthetic", num_images=images, image_size=tuple(bundle.input_size))
    samples = [dataset[i] for i in range(len(dataset))]
    pixels = torch.stack([s["image"] for s in samples]).to(device)
    return {"model": bundle.module.eval().to(device), "x": bundle.normalize(pixels),
            "labels": torch.tensor([int(s["label"]) for s in samples], device=device),
            "boxes": [s["boxes"].numpy().astype(int) for s in samples], "layer": bundle.target_layer,
            "ids": [s["image_id"] for s in samples]}


# --------------------------------------------------------------------------- explain (peers)
def explain(method: str, model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """One method's maps [B, H, W] float32 for ``x`` [B, C, H, W], the peers' calls."""
    from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerActivation, LayerAttribution, Occlusion, \
        Saliency

    module = dict(model.named_modules())[layer]
    size = tuple(x.shape[-2:])
    if method == "cam":
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        features = LayerActivation(model, module).attribute(x)
        cam = torch.einsum("bk,bkhw->bhw", head.weight[target], features)[:, None]
        return LayerAttribution.interpolate(cam, size, "bilinear")[:, 0].detach().cpu().numpy()
    if method in ("gradcam", "counterfactual_gradcam"):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        sign = 1.0 if method == "gradcam" else -1.0
        targets = [ClassifierOutputTarget(int(c)) if sign > 0 else (lambda out, c=int(c): -out[c]) for c in target]
        with GradCAM(model=model, target_layers=[module]) as cam:
            return cam(input_tensor=x, targets=targets).astype(np.float32)
    leaf = x.detach().clone().requires_grad_(True)
    if method == "guided_gradcam":
        maps = GuidedGradCam(model, module).attribute(leaf, target=target, interpolate_mode="bilinear").abs().amax(1)
    elif method == "saliency":
        maps = Saliency(model).attribute(leaf, target=target, abs=True).amax(1)
    elif method == "guided_backprop":
        maps = GuidedBackprop(model).attribute(leaf, target=target).abs().amax(1)
    elif method == "deconvnet":
        maps = Deconvolution(model).attribute(leaf, target=target).abs().amax(1)
    elif method == "occlusion":
        maps = Occlusion(model).attribute(x, target=target, sliding_window_shapes=(x.shape[1], WINDOW, WINDOW),
                                          strides=(x.shape[1], STRIDE, STRIDE), baselines=0.0,
                                          perturbations_per_eval=64).mean(1)
    elif method == "random":
        rng = np.random.default_rng(0)
        return rng.random((x.shape[0], *size), dtype=np.float32)
    elif method == "center":
        ys, xs = np.mgrid[0:size[0], 0:size[1]]
        sigma = 0.25 * np.array(size)
        gauss = np.exp(-0.5 * (((ys - (size[0] - 1) / 2) / sigma[0]) ** 2 + ((xs - (size[1] - 1) / 2) / sigma[1]) ** 2))
        return np.repeat(gauss[None].astype(np.float32), x.shape[0], 0)
    else:
        raise ValueError(f"unknown method {method!r}")
    return maps.detach().cpu().numpy().astype(np.float32)


def explain_all_peers(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> Dict[str, np.ndarray]:
    """{method: [N, H, W]} in batches of the demo's size, each method called alone."""
    out: Dict[str, List[np.ndarray]] = {m: [] for m in METHODS}
    for start in range(0, x.shape[0], BATCH):
        part = slice(start, start + BATCH)
        for method in METHODS:
            out[method].append(explain(method, model, layer, x[part], target[part]))
    return {m: np.concatenate(v) for m, v in out.items()}


# --------------------------------------------------------------------------- localization (peers)
def box_iou(box: Sequence[int], gt: Sequence[int]) -> float:
    """Inclusive-pixel IoU of (x0, y0, x1, y1) boxes."""
    iw = max(0, min(box[2], gt[2]) - max(box[0], gt[0]) + 1)
    ih = max(0, min(box[3], gt[3]) - max(box[1], gt[1]) + 1)
    inter = iw * ih
    union = (box[2] - box[0] + 1) * (box[3] - box[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def cam_paper(maps: np.ndarray, boxes: List[np.ndarray]) -> np.ndarray:
    """CAM paper: >= 20% of the max, largest 8-connected component's box, IoU >= 0.5 -> [N]."""
    from scipy import ndimage

    correct = []
    for heatmap, gt in zip(maps, boxes):
        peak = heatmap.max()
        mask = heatmap >= 0.2 * peak if peak > 0 else np.zeros_like(heatmap, dtype=bool)
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        if count == 0:
            box = (0, 0, 0, 0)
        else:
            largest = np.bincount(labels.ravel())[1:].argmax() + 1
            ys, xs = np.nonzero(labels == largest)
            box = (xs.min(), ys.min(), xs.max(), ys.max())
        correct.append(max(box_iou(box, g) for g in gt) >= 0.5)
    return np.asarray(correct, dtype=np.float64)


def wsol_loop(maps: np.ndarray, boxes: List[np.ndarray], taus: np.ndarray) -> Tuple[float, float]:
    """(MaxBoxAcc, MaxBoxAccV2) in percent, wsolevaluation-style: every image, every tau:
    cv2 threshold, contours, boxes; MaxBoxAcc: the largest contour, IoU 0.5; V2: every contour,
    IoU 0.3 / 0.5 / 0.7, best tau per IoU threshold."""
    import cv2

    thresholds = (0.3, 0.5, 0.7)
    correct_v1 = np.zeros(len(taus))
    correct_v2 = np.zeros((len(thresholds), len(taus)))
    for heatmap, gt in zip(maps, boxes):
        scoremap = cv2.resize(heatmap.astype(np.float64), heatmap.shape[::-1], interpolation=cv2.INTER_CUBIC)
        low, high = scoremap.min(), scoremap.max()
        scoremap = (scoremap - low) / (high - low) if high > low and np.isfinite(scoremap).all() else np.zeros_like(scoremap)
        quantized = (scoremap * 255).astype(np.uint8)
        height, width = quantized.shape
        for t, tau in enumerate(taus):
            _, binary = cv2.threshold(quantized, int(tau * np.max(quantized)), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if not contours:
                candidates = [(0, 0, 0, 0)]
                largest = (0, 0, 0, 0)
            else:
                candidates = []
                for contour in contours:
                    bx, by, bw, bh = cv2.boundingRect(contour)
                    candidates.append((bx, by, min(bx + bw, width - 1), min(by + bh, height - 1)))
                index = int(np.argmax([cv2.contourArea(c) for c in contours]))
                largest = candidates[index]
            correct_v1[t] += max(box_iou(largest, g) for g in gt) >= 0.5
            best = max(box_iou(box, g) for box in candidates for g in gt)
            for i, threshold in enumerate(thresholds):
                correct_v2[i, t] += best >= threshold
    count = len(maps)
    return float(correct_v1.max() * 100 / count), float((correct_v2.max(1) * 100 / count).mean())


def box_masks(boxes: List[np.ndarray], size: Tuple[int, int]) -> np.ndarray:
    masks = np.zeros((len(boxes), *size), dtype=bool)
    for mask, gt in zip(masks, boxes):
        for x0, y0, x1, y1 in gt:
            mask[y0:y1 + 1, x0:x1 + 1] = True
    return masks


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = TOLERANCE) -> np.ndarray:
    """TorchRay's rule: a hit when a ground-truth pixel lies within ``tolerance`` px of the argmax."""
    hits = []
    ys, xs = np.mgrid[0:maps.shape[1], 0:maps.shape[2]]
    for heatmap, mask in zip(maps, masks):
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        hits.append(bool((mask & ((xs - x) ** 2 + (ys - y) ** 2 < tolerance ** 2)).any()))
    return np.asarray(hits, dtype=np.float64)


def energy(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus RelevanceMassAccuracy on the positive maps: mass inside the boxes / total mass."""
    import quantus

    metric = quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)
    values = metric(model=None, x_batch=np.zeros((len(maps), 3, *maps.shape[1:]), np.float32),
                    y_batch=np.zeros(len(maps), dtype=int), a_batch=np.clip(maps, 0, None)[:, None],
                    s_batch=masks[:, None].astype(np.float32))
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------- curves (peers)
def rise_kernel(size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's ``gkern``: scipy's gaussian_filter of a centred delta."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1
    return torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))


def causal_metric(model: nn.Module, x: torch.Tensor, maps: np.ndarray, target: torch.Tensor, mode: str) -> np.ndarray:
    """RISE's CausalMetric in batches (their reference code's loop): deletion from the image to
    0, insertion from the blurred image to the image, the pixels most salient first (ties: the
    first in row-major order, as salbench), one forward of the batch per step; AUC as RISE's
    ``auc``. (Quantus PixelFlipping cannot run these 32 steps: it requires its features per step
    to divide H * W while it flips C * H * W / features.)"""
    channels, height, width = x.shape[1:]
    pixels = height * width
    step = (pixels + N_STEPS - 1) // N_STEPS
    kernel = rise_kernel().to(x.device)[None, None].repeat(channels, 1, 1, 1)
    aucs = []
    for begin in range(0, x.shape[0], BATCH):
        images, tracked = x[begin:begin + BATCH], target[begin:begin + BATCH]
        order = torch.from_numpy(np.argsort(-maps[begin:begin + BATCH].reshape(len(images), -1), axis=1, kind="stable"))
        if mode == "deletion":
            start, finish = images.reshape(len(images), channels, -1).clone(), torch.zeros_like(images).reshape(
                len(images), channels, -1)
        else:
            start = F.conv2d(images, kernel, padding=5, groups=channels).reshape(len(images), channels, -1).clone()
            finish = images.reshape(len(images), channels, -1)
        scores = []
        with torch.no_grad():
            for i in range(N_STEPS + 1):
                probs = model(start.view_as(images)).softmax(1).gather(1, tracked[:, None])[:, 0]
                scores.append(probs.cpu().numpy())
                if i < N_STEPS:
                    coords = order[:, step * i:step * (i + 1)].to(x.device)
                    index = coords[:, None, :].expand(-1, channels, -1)
                    start.scatter_(2, index, finish.gather(2, index))
        scores = np.stack(scores, 1)
        aucs.append((scores.sum(1) - scores[:, 0] / 2 - scores[:, -1] / 2) / (scores.shape[1] - 1))
    return np.concatenate(aucs)


# --------------------------------------------------------------------------- randomization (peers)
def randomization_quantus(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor) -> Dict[str, Any]:
    """Quantus MPRT per method, cascading (``top_down``) and ``independent``, once per similarity."""
    import quantus

    def ssim(a: np.ndarray, b: np.ndarray, batched: bool = True, **kwargs: Any) -> np.ndarray:
        # Quantus 0.6's batched ssim returns a list, which its MPRT cannot take (.tolist())
        return np.asarray(quantus.similarity_func.ssim(a, b, batched=batched, **kwargs))

    similarities = {"spearman_abs": (quantus.similarity_func.correlation_spearman, True),
                    "spearman": (quantus.similarity_func.correlation_spearman, False), "ssim": (ssim, False)}
    out: Dict[str, Any] = {}
    for method in METHODS:
        def explain_func(model, inputs, targets, method=method, **kwargs):
            tensor = torch.as_tensor(inputs, device=x.device)
            return explain(method, model, layer, tensor, torch.as_tensor(targets, device=x.device))[:, None]

        for order in ("top_down", "independent"):
            for name, (func, absolute) in similarities.items():
                metric = quantus.MPRT(similarity_func=func, layer_order=order, abs=absolute, normalise=False,
                                      disable_warnings=True, display_progressbar=False)
                result = metric(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=None,
                                explain_func=explain_func, device=str(x.device), batch_size=len(x))
                out[f"{method}/{order}/{name}"] = {k: np.asarray(v).tolist() for k, v in result.items()}
    return out


# --------------------------------------------------------------------------- the two runs
def run_peers(images: int, device: torch.device) -> Dict[str, Any]:
    data = demo_data(images, device)
    model, x, labels, boxes, layer = data["model"], data["x"], data["labels"], data["boxes"], data["layer"]
    clock = Clock()
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with clock("explain"):
            with torch.no_grad():
                predicted = torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]).argmax(1)
            maps = explain_all_peers(model, layer, x, labels)
            other = (predicted != labels).nonzero()[:, 0]
            maps_predicted = {m: v.copy() for m, v in maps.items()}
            if len(other):
                extra = explain_all_peers(model, layer, x[other], predicted[other])
                for method in METHODS:
                    maps_predicted[method][other.cpu().numpy()] = extra[method]
        values: Dict[str, Dict[str, float]] = {m: {} for m in METHODS}
        masks = box_masks(boxes, tuple(x.shape[-2:]))
        with clock("localization"):
            taus = np.arange(0, 1, 0.001)
            top1 = (predicted == labels).cpu().numpy()
            for method in METHODS:
                correct = cam_paper(maps[method], boxes)
                values[method]["cam_paper/gt_known_loc"] = float(correct.mean())
                values[method]["cam_paper/top1_loc"] = float((correct * top1).mean())
                v1, v2 = wsol_loop(maps[method], boxes, taus)
                values[method]["wsoleval/maxboxacc"], values[method]["wsoleval/maxboxacc_v2"] = v1, v2
                values[method]["pointing_game/pointing_hit"] = float(pointing_game(maps[method], masks).mean())
                values[method]["energy_pointing_game/energy"] = float(np.nanmean(energy(maps[method], masks)))
        with clock("curves"):
            for method in METHODS:
                for mode in ("deletion", "insertion"):
                    aucs = causal_metric(model, x, maps_predicted[method], predicted, mode)
                    values[method][f"rise/{mode}_auc"] = float(aucs.mean())
        with clock("randomization"):
            part = slice(0, RANDOMIZED_IMAGES)
            randomization_quantus(model, layer, x[part], labels[part])
    return {"seconds": time.perf_counter() - begin, "components": clock.seconds, "values": values, "images": images}


def run_salbench(images: int, device: torch.device, folder: Path, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The demo job in this process (``extra``: more config overrides); component seconds: the job
    loop's ``explain_all`` calls (timed by wrapping them) and the metrics' ``update`` times from
    the job's timing table."""
    import pandas as pd
    from hydra import compose, initialize_config_dir

    import salbench.harness.runner as runner
    from salbench.harness.cli import config_dir
    from salbench.harness.schema import register_schemas

    register_schemas()
    overrides = ["experiment=demo", f"dataset.num_images={images}", "progress=false", f"device={device}",
                 # the work the peers do: the demo's seed methods, localization, curves and randomization
                 f"method=[{','.join(METHODS)}]", f"metric=[{','.join(SALBENCH_METRICS)}]",
                 f"metric.randomization.max_images={RANDOMIZED_IMAGES}", f"batch_size={BATCH}", f"forward_chunk={BATCH}",
                 "gallery_images=8", "viewer_images=32", *extra]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    explain_seconds = [0.0]
    original = runner.explain_all

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            explain_seconds[0] += time.perf_counter() - start

    runner.explain_all = timed
    try:
        begin = time.perf_counter()
        scores = runner.run_job(cfg, folder / "demo")
        seconds = time.perf_counter() - begin
    finally:
        runner.explain_all = original
    timing = pd.read_parquet(folder / "demo" / "timing.parquet")
    metric_seconds = {c[: -len("_seconds")]: float(timing[c].sum()) for c in timing.columns
                      if c.endswith("_seconds") and c != "explain_seconds"}
    components = {"explain": explain_seconds[0],
                  "localization": sum(metric_seconds.get(m, 0.0) for m in LOCALIZATION_METRICS),
                  "curves": metric_seconds.get("rise", 0.0), "randomization": metric_seconds.get("randomization", 0.0)}
    return {"seconds": seconds, "components": components, "metric_seconds": metric_seconds, "scores": scores,
            "images": images}


CHECKS = [  # (method, "metric/score"): the protocols are the same, the maps too
    ("saliency", "cam_paper/gt_known_loc"), ("occlusion", "cam_paper/gt_known_loc"),
    ("guided_backprop", "cam_paper/top1_loc"), ("saliency", "wsoleval/maxboxacc"),
    ("guided_backprop", "wsoleval/maxboxacc_v2"), ("occlusion", "wsoleval/maxboxacc_v2"),
    ("saliency", "pointing_game/pointing_hit"), ("deconvnet", "pointing_game/pointing_hit"),
    ("cam", "energy_pointing_game/energy"), ("guided_backprop", "energy_pointing_game/energy"),
    ("saliency", "rise/deletion_auc"), ("occlusion", "rise/deletion_auc"),
    ("saliency", "rise/insertion_auc"), ("guided_backprop", "rise/insertion_auc"),
    ("gradcam", "cam_paper/gt_known_loc"), ("gradcam", "rise/deletion_auc"),  # pytorch-grad-cam: min-max + cv2 resize
]


def value_checks(scores: Any, values: Dict[str, Dict[str, float]]) -> List[Dict[str, Any]]:
    """salbench's mean (or dataset-level value) beside the peers' for :data:`CHECKS`."""
    rows = []
    for method, key in CHECKS:
        metric, score = key.split("/")
        picked = scores[(scores.method == method) & (scores.metric == metric) & (scores.score == score)]
        ours = float(picked["value"].mean()) if len(picked) else float("nan")
        theirs = values[method][key]
        rows.append({"method": method, "score": key, "salbench": ours, "peers": theirs, "diff": abs(ours - theirs)})
    return rows


def markdown(result: Dict[str, Any]) -> str:
    """The end-to-end table: salbench's job (the demo's config) and, when measured, the same job in
    the peers' NCHW memory format (``channels_last=false``), against the peers, by component."""
    s, p = result["salbench"], result["peers"]
    runs = [("salbench", s)] + ([("salbench NCHW", result["salbench_nchw"])] if result.get("salbench_nchw") else [])
    head = (f"Demo work on {result['images']} images ({result['device']}): salbench {s['seconds']:.1f} s, "
            f"peers {p['seconds']:.1f} s: **salbench {p['seconds'] / s['seconds']:.2f}x faster** end to end")
    if len(runs) > 1:
        n = runs[1][1]
        head += (f" with the demo's `channels_last: true`; in the peers' NCHW memory format salbench took "
                 f"{n['seconds']:.1f} s, {p['seconds'] / n['seconds']:.2f}x")
    lines = [head + "."]
    if result.get("malloc"):
        lines.append(f"Both sides ran under the host allocator setting `malloc: {result['malloc']['malloc']}` "
                     f"({result['malloc']['note']}).")
    lines += ["", "| component | " + " | ".join(f"{name} s" for name, _ in runs) + " | peers s | "
              + " | ".join(f"peers / {name}" for name, _ in runs) + " |",
              "| --- " * (2 + 2 * len(runs)) + "|"]
    for component in COMPONENTS:
        theirs = p["components"].get(component, float("nan"))
        ours = [run["components"].get(component, float("nan")) for _, run in runs]
        ratios = [f"{theirs / value:.2f}" if value > 0 else "" for value in ours]
        lines.append(f"| {component} | " + " | ".join(f"{v:.2f}" for v in ours) + f" | {theirs:.2f} | "
                     + " | ".join(ratios) + " |")
    rests = [run["seconds"] - sum(run["components"].values()) for _, run in runs]
    lines.append("| other (salbench: data, logits, dataset-level scores, writing) | " + " | ".join(f"{v:.2f}" for v in rests)
                 + f" | {p['seconds'] - sum(p['components'].values()):.2f} |" + " |" * len(runs))
    lines += ["", "Same numbers where the protocols are the same (mean over images, or the dataset-level value):", "",
              "| method | score | salbench | peers | abs diff |", "| --- | --- | --- | --- | --- |"]
    for row in result["checks"]:
        lines.append(f"| {row['method']} | {row['score']} | {row['salbench']:.4f} | {row['peers']:.4f} | {row['diff']:.1e} |")
    return "\n".join(lines) + "\n"


def run(images: int = 100, device: str = "cpu", malloc: str = "retain") -> Dict[str, Any]:
    from salbench.harness.allocator import set_malloc
    from salbench.harness.timing import device_name

    allocator = set_malloc(malloc)  # process-wide, before either side: both run under the same rules
    torch.manual_seed(0)
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as folder:
        ours = run_salbench(images, dev, Path(folder) / "demo", [f"malloc={malloc}"])
        # the demo's channels_last, and the peers' memory format (NCHW): what the format alone gives
        nchw = run_salbench(images, dev, Path(folder) / "nchw", [f"malloc={malloc}", "channels_last=false"])
    theirs = run_peers(images, dev)
    checks = value_checks(ours.pop("scores"), theirs["values"])
    nchw.pop("scores")
    return {"images": images, "device": device_name(dev), "malloc": allocator, "salbench": ours,
            "salbench_nchw": nchw, "peers": theirs, "checks": checks}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="write the results as JSON here")
    parser.add_argument("--malloc", default="retain", choices=MALLOC_CHOICES, help="host allocator, both sides")
    args = parser.parse_args(argv)
    result = run(args.images, args.device, args.malloc)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
