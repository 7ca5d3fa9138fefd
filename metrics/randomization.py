"""Model-parameter randomization sanity check (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps").

Layers (groups of modules) are re-initialized on a deep copy of the model, either cascading
from the top (cumulative: after step k the top k groups are random) or independently (one group
at a time on a fresh copy). The maps of the randomized model are compared with the original
maps per image by Spearman rank correlation of ``|map|`` and of the signed map (average ranks
for ties, as ``scipy.stats.spearmanr``) and by SSIM (skimage's defaults: 7 x 7 uniform window,
sample covariance, K1 = 0.01, K2 = 0.03, data range 1, mean over the valid region) of the
per-image min-max normalized maps. A method whose maps stay similar while the model is
destroyed does not depend on what the model learned: gradient and Grad-CAM decorrelate, guided
backprop and Guided Grad-CAM are known not to.

Default layers: the model's parameterized layers in forward order, one group per convolution /
linear layer together with the normalization layers that follow it, listed top (output) first.
Re-initialization (``init="reset"``): each module's own ``reset_parameters()`` (PyTorch's default
init; normalization layers become the identity and their running statistics are reset),
seeded per group so the cascading and independent runs draw the same weights for a group.
"""
from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.methods.hooks import trace_forward
from salbench.methods.shared import explain_in_chunks
from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo
from salbench.metrics.perturbation import capped_chunk

if TYPE_CHECKING:  # annotations only
    import pandas

MODES = ("cascading", "independent")
INITS = ("reset", "normal")
SIMILARITIES = ("spearman_abs", "spearman_signed", "ssim")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

LayerSpec = Union[str, Sequence[str]]
ExplainerFactory = Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]]


# --------------------------------------------------------------------------- similarities
def average_ranks(values: Tensor) -> Tensor:
    """values [B, N] -> ranks [B, N] float64 (1-based; ties get their average rank)."""
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    count = values.shape[1]
    positions = torch.arange(count, device=values.device).expand_as(order)
    new_run = torch.ones_like(order, dtype=torch.bool)
    new_run[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    run_end = torch.ones_like(new_run)
    run_end[:, :-1] = new_run[:, 1:]
    first = torch.where(new_run, positions, torch.zeros_like(positions)).cummax(dim=1).values
    last = torch.where(run_end, positions, torch.full_like(positions, count)).flip(1).cummin(dim=1).values.flip(1)
    average = (first + last).double() / 2 + 1
    return torch.empty_like(average).scatter_(1, order, average)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """a, b [B, N] -> [B] correlation (NaN when either row is constant)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    value = (a * b).sum(1) / denominator
    return torch.where(denominator > 0, value, torch.full_like(value, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """a, b [B, ...] -> [B] Spearman rank correlation of each pair of flattened maps."""
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1))).float()


def minmax(maps: Tensor) -> Tensor:
    """[B, H, W] -> per-image min-max normalized to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1).double()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-300), torch.zeros_like(flat))
    return scaled.view(maps.shape)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """a, b [B, H, W] -> [B] mean SSIM as ``skimage.metrics.structural_similarity`` with its
    defaults (uniform ``win_size`` window, sample covariance, mean over the valid region)."""
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs maps of at least {win_size} x {win_size}; got {tuple(a.shape[-2:])}")
    x, y = a.double()[:, None], b.double()[:, None]
    pool = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731  the valid region only
    count = win_size * win_size
    cov_norm = count / (count - 1)
    ux, uy = pool(x), pool(y)
    vx = cov_norm * (pool(x * x) - ux * ux)
    vy = cov_norm * (pool(y * y) - uy * uy)
    vxy = cov_norm * (pool(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def map_similarity(original: Tensor, randomized: Tensor) -> Dict[str, Tensor]:
    """original, randomized [B, H, W] -> {similarity name: [B]}."""
    return {
        "spearman_abs": spearman(original.abs(), randomized.abs()),
        "spearman_signed": spearman(original, randomized),
        "ssim": ssim(minmax(original), minmax(randomized)),
    }


# --------------------------------------------------------------------------- layers
def forward_order(model: nn.Module, x: Tensor) -> List[str]:
    """Names of the modules in the order their forward first ran on ``x[:1]``."""
    return trace_forward(model, x).started


def default_layer_groups(model: nn.Module, x: Optional[Tensor] = None) -> List[List[str]]:
    """Parameterized layers grouped as (conv | linear) + the normalization layers after it,
    ordered top (output side) first. With ``x``, order is the forward order; else the
    registration order."""
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if any(True for _ in m.parameters(recurse=False))]
    if x is not None:
        ran = forward_order(model, x)
        position = {n: i for i, n in enumerate(ran)}
        registered = {n: i for i, n in enumerate(modules)}
        names.sort(key=lambda n: (position.get(n, len(ran)), registered[n]))
    groups: List[List[str]] = []
    for name in names:
        if isinstance(modules[name], NORM_LAYERS) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups[::-1]


def _as_groups(layers: Sequence[LayerSpec]) -> List[List[str]]:
    return [[layer] if isinstance(layer, str) else list(layer) for layer in layers]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The CPU generator seeded with ``seed`` inside the block, its state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _cpu_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose own parameters and buffers are CPU copies (children shared)."""
    proxy = copy.copy(module)
    proxy._parameters = {k: None if v is None else nn.Parameter(v.detach().to("cpu", copy=True), v.requires_grad)
                         for k, v in module._parameters.items()}
    proxy._buffers = {k: None if v is None else v.to("cpu", copy=True) for k, v in module._buffers.items()}
    return proxy


def _reinitialize(module: nn.Module, init: str, init_std: float) -> None:
    """Re-initialize ``module``'s own parameters (and running statistics) from the CPU generator:
    a module on another device is initialized as a CPU copy and copied back, so the randomized
    weights are the same on every device (CUDA generators give other numbers for a seed)."""
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    target = module if all(t.device.type == "cpu" for t in tensors) else _cpu_copy(module)
    if init == "reset" and hasattr(module, "reset_parameters"):
        target.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            target.reset_running_stats()
    else:
        for param in target.parameters(recurse=False):
            param.normal_(0.0, init_std)
    if target is not module:
        for store, source in ((module._parameters, target._parameters), (module._buffers, target._buffers)):
            for name, value in source.items():
                if value is not None:
                    store[name].copy_(value)


def randomize_layers(model: nn.Module, group: Sequence[str], seed: int, init: str = "reset", init_std: float = 0.01) -> None:
    """Re-initialize every parameter of the modules named in ``group`` **in place** (call it on
    a copy). ``reset``: the module's ``reset_parameters()``; ``normal``: N(0, ``init_std``).
    Seeded by ``seed`` and drawn from the CPU generator (the same weights on every device);
    the global RNG state is left as it was."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    modules = dict(model.named_modules())
    with _seeded(seed), torch.no_grad():
        for name in group:
            if name not in modules:
                raise ValueError(f"model has no module {name!r}")
            for module in modules[name].modules():
                if any(True for _ in module.parameters(recurse=False)):
                    _reinitialize(module, init, init_std)


# --------------------------------------------------------------------------- the check
def randomization_check(
    model: nn.Module,
    explainer_factory: ExplainerFactory,
    x: Tensor,
    target: Tensor,
    layers: Optional[Sequence[LayerSpec]] = None,
    mode: str = "cascading",
    *,
    seed: int = 0,
    init: str = "reset",
    init_std: float = 0.01,
    original_maps: Optional[Tensor] = None,
    chunk: Optional[int] = None,
) -> "pandas.DataFrame":  # noqa: F821
    """Compare maps of ``model`` with maps of layer-randomized copies of it.

    model: the classifier (never modified: randomization happens on deep copies);
    explainer_factory: ``model -> explainer``, the explainer called as ``(x, target) -> [B, H, W]``;
    x: [B, C, H, W] normalized inputs; target: [B] explained class; layers: module names or
    groups of names, top (output side) first (default :func:`default_layer_groups`); mode:
    ``cascading`` | ``independent`` | ``both``; original_maps: [B, H, W] to skip recomputing;
    chunk: explain in calls of exactly this many images (as the job loop), None: one call.

    Returns a long DataFrame: image (index in x), mode, depth (1-based position of the group,
    top first; in cascading mode the number of randomized groups), layer (the group's first
    module name), similarity (spearman_abs | spearman_signed | ssim), value.
    """
    import pandas as pd

    modes = MODES if mode == "both" else (mode,)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: cascading, independent, both")
    groups = _as_groups(layers) if layers is not None else default_layer_groups(model, x)
    if not groups:
        raise ValueError("no layers to randomize")
    if original_maps is None:
        original_maps = explain_in_chunks(explainer_factory(model), x, target, chunk)
    original_maps = original_maps.detach()
    rows: List[Dict[str, Any]] = []

    def record(randomized: nn.Module, run_mode: str, depth: int, label: str) -> None:
        maps = explain_in_chunks(explainer_factory(randomized), x, target, chunk).detach()
        for similarity, values in map_similarity(original_maps, maps).items():
            for image, value in enumerate(values.tolist()):
                rows.append({"image": image, "mode": run_mode, "depth": depth, "layer": label,
                             "similarity": similarity, "value": value})

    for run_mode in modes:
        cascade = copy.deepcopy(model) if run_mode == "cascading" else None
        for depth, group in enumerate(groups, start=1):
            randomized = cascade if cascade is not None else copy.deepcopy(model)
            randomize_layers(randomized, group, seed * 1_000_003 + depth, init, init_std)
            record(randomized, run_mode, depth, group[0])
            del randomized
    return pd.DataFrame(rows, columns=["image", "mode", "depth", "layer", "similarity", "value"])


def summarize(table: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    """The "similarity vs randomized depth" plot data: mean, std and count of ``value`` per
    (method, mode, depth, layer, similarity), NaN values skipped."""
    keys = [k for k in ("method", "mode", "depth", "layer", "similarity") if k in table.columns]
    summary = table.groupby(keys, sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    return summary


# --------------------------------------------------------------------------- the metric
def rebuild_explainer(explainer: Any, module: nn.Module) -> Any:
    """The same method with the same options (its constructor's, :meth:`Explainer.options`) on
    another model."""
    options = {k: v for k, v in explainer.options().items() if k != "method"}
    return type(explainer)(module, **options)


@register_metric("randomization")
class ModelRandomization(MethodwiseMetric):
    """Adebayo et al.'s model-randomization check as a job metric (registered ``randomization``).

    Per batch and method, runs :func:`randomization_check` with the method's own explainer
    rebuilt on randomized copies of the model. Per-image scores: the similarities after the
    full cascade (every group random), lower is better (the map depends on the model);
    :meth:`tables` gives ``randomization`` (every image, mode, depth and similarity; reports
    draw the similarity-vs-depth plot from it, :func:`summarize`). The explainers are re-run
    (``Needs(explainers=True)``).
    """

    name = "randomization"
    category = "sanity"
    needs = Needs(explainers=True)
    presets = {"adebayo2018": {"mode": "both", "init": "reset", "layers": None}}
    table_kinds = ("randomization",)
    scores = tuple(ScoreInfo(f"cascade_{s}", False, "sanity") for s in SIMILARITIES)

    def __init__(
        self,
        mode: str = "both",
        layers: Optional[List[str]] = None,
        seed: int = 0,
        init: str = "reset",
        init_std: float = 0.01,
        max_images: Optional[int] = None,
    ):
        super().__init__()
        if mode not in (*MODES, "both"):
            raise ValueError(f"unknown mode {mode!r}; valid: cascading, independent, both")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        self.mode, self.layers, self.seed = mode, layers, seed
        self.init, self.init_std, self.max_images = init, init_std, max_images
        self._frames: List[Any] = []

    def protocol(self) -> Dict[str, Any]:
        return {
            "mode": self.mode,
            "layers": self.layers if self.layers is not None else "conv/linear + following norm, top first",
            "seed": self.seed,
            "init": self.init,
            "init_std": self.init_std if self.init == "normal" else None,
            "similarities": list(SIMILARITIES),
            "ssim": {"window": "uniform 7x7", "maps": "per-image min-max", "data_range": 1.0},
            "max_images": self.max_images,
        }

    def new_state(self) -> Dict[str, int]:
        return {"seen": 0}

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        x, heatmaps, targets = explained.inputs, explained.heatmaps, explained.targets
        nan = torch.full((x.shape[0],), float("nan"), device=x.device)
        keep = x.shape[0]
        state = self.state(explained.method)
        if self.max_images is not None:  # the check is costly: a fixed number of images per method
            keep = max(0, min(keep, self.max_images - state["seen"]))
        if keep == 0:
            return {s.name: nan for s in self.scores}
        state["seen"] += keep
        model = explained.classifier
        table = randomization_check(
            model, lambda m: rebuild_explainer(explained.explainer, m), x[:keep], targets[:keep],
            layers=self.layers, mode=self.mode, seed=self.seed, init=self.init, init_std=self.init_std,
            original_maps=heatmaps[:keep], chunk=capped_chunk(explained.forward_chunk, self.max_images),
        )
        ids = list(getattr(explained.batch, "image_ids", None) or [str(i) for i in range(x.shape[0])])
        table.insert(0, "image_id", [ids[i] for i in table["image"]])
        table.insert(1, "method", explained.method)
        self._frames.append(table.drop(columns="image"))
        out = {}
        if "cascading" in table["mode"].values:
            last = table[(table["mode"] == "cascading") & (table["depth"] == table["depth"].max())]
            for similarity in SIMILARITIES:
                values = nan.clone()
                rows = last[last["similarity"] == similarity]
                values[torch.tensor(rows["image"].tolist(), dtype=torch.long, device=values.device)] = torch.tensor(
                    rows["value"].tolist(), dtype=values.dtype, device=values.device
                )
                out[f"cascade_{similarity}"] = values
        return out

    def tables(self) -> Dict[str, Any]:
        import pandas as pd

        columns = ["image_id", "method", "mode", "depth", "layer", "similarity", "value"]
        table = pd.concat(self._frames, ignore_index=True) if self._frames else pd.DataFrame(columns=columns)
        return {"randomization": table}
