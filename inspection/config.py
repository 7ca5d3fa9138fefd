"""Typed schema of ``salbench inspect`` (config ``inspect``): the job keys shared with the main
job (``model``, ``dataset``, ``device``, ``seed``, ``batch_size``, ``progress``...) and the
``inspect`` group (``conf/inspect/*.yaml``), one section per kind of picture. A mistyped key or a
wrong type fails when the config is composed; :func:`validate_inspection` checks the choices.

Layer names: a module name of the model, or ``first`` / ``target`` / ``conv_stages``
(:mod:`salbench.inspection.layers`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from salbench.harness.allocator import check_malloc


@dataclass
class FiltersSection:
    enabled: bool = True
    layers: List[str] = field(default_factory=list)  # more layers drawn per input channel
    max_filters: int = 64  # filters drawn per layer (the first ones)
    max_channels: int = 8  # input channels drawn per filter (the first ones)


@dataclass
class ActivationsSection:
    enabled: bool = True
    layer: str = "target"
    images: List[int] = field(default_factory=lambda: [0, 1, 2, 3])  # dataset positions
    top_k: int = 8  # channels per image, by mean activation


@dataclass
class PatchesSection:
    enabled: bool = True
    layer: str = "target"
    units: Optional[List[int]] = None  # channel indices; null: the first num_units
    num_units: int = 8
    top_k: int = 9
    distinct_images: bool = True  # at most one patch per image and unit (its maximum)
    outside: str = "clip"  # the field's part outside the image: clip (not shown) | pad (grey)


@dataclass
class ClassModelSection:
    enabled: bool = True
    classes: Optional[List[int]] = None  # null: the distinct labels of the first images, up to max_classes
    max_classes: int = 5
    steps: int = 200
    lr: float = 0.05
    l2: float = 0.001  # lambda of S_c(I) - lambda ||I||^2 (Simonyan et al. 2013)
    optimizer: str = "adam"  # adam | sgd (plain gradient ascent)
    init: str = "zero"  # zero (the mean image) | noise (seeded, init_std)
    init_std: float = 0.1
    jitter: int = 0  # pixels: random roll of each step's forward input
    blur_sigma: float = 0.0
    blur_every: int = 0  # steps between blurs (0: none)
    display: str = "minmax"  # minmax (per image) | clip (to [0, 1])


@dataclass
class EmbeddingsSection:
    enabled: bool = True
    k: int = 5
    queries: List[int] = field(default_factory=lambda: [0, 1, 2, 3])  # dataset positions shown
    max_images: int = 1000  # the first images of the dataset
    pixel_size: Optional[int] = 64  # pixel space: area-resized to this side; null: the input size
    distance: str = "euclidean"  # euclidean | cosine
    tsne_perplexity: float = 30.0
    tsne_iterations: int = 1000  # scikit-learn's default; at least 250


@dataclass
class DissectionSection:
    enabled: bool = True
    layers: List[str] = field(default_factory=lambda: ["first", "target"])
    quantile: float = 0.005  # top quantile of each unit's activations (Bau et al. 2017)
    iou_threshold: float = 0.04  # a unit detects its best concept above this IoU
    threshold: str = "exact"  # exact (top-m buffer) | histogram (two passes, within one bin)
    histogram_bins: int = 4096
    max_megabytes: float = 1024.0  # budget of the exact method's buffers per layer
    upsample: str = "bilinear"  # bilinear | nearest | bicubic
    align_corners: bool = False
    concepts: str = "auto"  # auto | class_masks | mask | boxes


@dataclass
class InspectSection:
    filters: FiltersSection = field(default_factory=FiltersSection)
    activations: ActivationsSection = field(default_factory=ActivationsSection)
    patches: PatchesSection = field(default_factory=PatchesSection)
    class_model: ClassModelSection = field(default_factory=ClassModelSection)
    embeddings: EmbeddingsSection = field(default_factory=EmbeddingsSection)
    dissection: DissectionSection = field(default_factory=DissectionSection)


@dataclass
class InspectConfig:
    model: Any = MISSING
    dataset: Any = MISSING
    inspect: InspectSection = field(default_factory=InspectSection)
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    num_workers: int = 0
    progress: bool = True
    resume: bool = True
    flush_every: int = 256
    malloc: str = "retain"
    plugins: List[str] = field(default_factory=list)


def register_inspect_schema() -> None:
    """Store the schema in Hydra's ConfigStore (``inspect.yaml``'s first default)."""
    ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)


CHOICES = {
    ("patches", "outside"): ("clip", "pad"),
    ("class_model", "optimizer"): ("adam", "sgd"),
    ("class_model", "init"): ("zero", "noise"),
    ("class_model", "display"): ("minmax", "clip"),
    ("embeddings", "distance"): ("euclidean", "cosine"),
    ("dissection", "threshold"): ("exact", "histogram"),
    ("dissection", "upsample"): ("bilinear", "nearest", "bicubic"),
    ("dissection", "concepts"): ("auto", "class_masks", "mask", "boxes"),
}
POSITIVE = {("activations", "top_k"), ("patches", "num_units"), ("patches", "top_k"), ("class_model", "max_classes"),
            ("embeddings", "k"), ("embeddings", "max_images"), ("dissection", "histogram_bins"),
            ("filters", "max_filters"), ("filters", "max_channels")}


def validate_inspection(cfg: DictConfig) -> None:
    """Every choice against its valid values; errors name the key, the value and the choices."""
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {cfg.batch_size}")
    check_malloc(cfg.get("malloc", "retain"))
    for (section, key), choices in CHOICES.items():
        value = cfg.inspect[section][key]
        if value not in choices:
            raise ValueError(f"inspect.{section}.{key}={value!r} is not valid; valid: {', '.join(choices)}")
    for section, key in sorted(POSITIVE):
        if int(cfg.inspect[section][key]) < 1:
            raise ValueError(f"inspect.{section}.{key} must be >= 1; got {cfg.inspect[section][key]}")
    quantile = float(cfg.inspect.dissection.quantile)
    if not 0 < quantile < 1:
        raise ValueError(f"inspect.dissection.quantile must be in (0, 1); got {quantile}")
    if int(cfg.inspect.embeddings.tsne_iterations) < 250:
        raise ValueError(f"inspect.embeddings.tsne_iterations must be >= 250; got {cfg.inspect.embeddings.tsne_iterations}")
    if cfg.inspect.class_model.steps < 0:
        raise ValueError(f"inspect.class_model.steps must be >= 0; got {cfg.inspect.class_model.steps}")
