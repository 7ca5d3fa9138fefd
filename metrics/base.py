"""Metric base classes: a thin stateful shell over pure batched tensor functions.

A metric *declares* what it needs from the job loop (:class:`Needs`: which class each scored
map explains, whether it runs the model or the explainers, whether it reads the loop's measured
costs) and the tables it writes; the loop gathers the maps once for all metrics and calls each
metric once per batch with every method's maps:

* ``metric.update(explained) -> {method: {score: [N]}}``: per-row values (NaN where undefined),
  one row per scored (image, class) pair of the batch;
* ``metric.compute() -> {method: {score: float}}``: dataset-level values (MaxBoxAcc, ...);
* ``metric.tables() -> {kind: DataFrame}``: tidy side tables, each with a ``method`` column; the
  loop writes one file per kind (:data:`TABLE_KINDS`) for the whole job.

Every score carries its metadata (:class:`ScoreInfo`), and every value is stored with the
metric's :meth:`~Metric.protocol` (every choice) and :attr:`~Metric.preset` (the named preset
whose values all equal the metric's options, else ``custom``). Reports read the metadata the
classes declare (:meth:`Metric.describe`): score directions, categories, curve kinds.

Most metrics score each method's maps on their own: :class:`MethodwiseMetric` turns the
all-methods call into one :meth:`~MethodwiseMetric.update_method` call per method (with a
:class:`MethodBatch`, the batch as that method sees it) and keeps per-method state.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

MAP_CLASSES = ("target", "label", "predicted", "present")
TABLE_KINDS = ("curves", "tau_curves", "tau_images", "randomization", "timing")
SUMMARIES = ("auc", "mean")


@dataclass(frozen=True)
class Needs:
    """What a metric needs from the job loop.

    ``maps``: the class each scored map explains: ``target`` (the job's ``target`` rule),
    ``label``, ``predicted`` (on the clean image) or ``present`` (one row per class present in
    the image, :meth:`Metric.present_classes`); the loop explains the (image, class) pairs it
    lacks. ``model``: runs the model (forward passes on perturbed inputs). ``explainers``:
    re-runs the explainers (the randomization check), so it cannot score saved maps. ``costs``:
    reads the loop's measured costs of the batch (:class:`BatchCosts`), so it is updated after
    every other metric of the batch."""

    maps: str = "target"
    model: bool = False
    explainers: bool = False
    costs: bool = False

    def __post_init__(self) -> None:
        if self.maps not in MAP_CLASSES:
            raise ValueError(f"Needs.maps {self.maps!r} is not one of {', '.join(MAP_CLASSES)}")


@dataclass(frozen=True)
class ScoreInfo:
    """Metadata of one score a metric produces (reports orient arrows and tables from it)."""

    name: str
    higher_is_better: bool
    category: str  # "localization" | "faithfulness" | "robustness" | "complexity" | "sanity" | "cost" | "parameter"
    scope: str = "image"  # "image": one value per image; "dataset": one value per run


@dataclass(frozen=True)
class CurveKind:
    """One kind of curve a metric writes to the ``curves`` table (its ``curve`` column), as
    reports draw and summarize it: ``summary`` is ``auc`` (trapezoid over the fractions) or
    ``mean`` (mean of the curve values), the rule of the metric's own score."""

    lower_is_better: bool
    x_label: str
    summary: str = "auc"

    def __post_init__(self) -> None:
        if self.summary not in SUMMARIES:
            raise ValueError(f"CurveKind.summary {self.summary!r} is not one of {', '.join(SUMMARIES)}")


@dataclass(frozen=True)
class BatchCosts:
    """What the loop measured on one batch (for metrics with ``Needs(costs=True)``):
    ``explain[method]``: ``seconds`` (its share of the batch's explanation), ``shared_with``,
    ``peak_memory_bytes`` (when measured); ``metrics[key]``: seconds of that metric's update
    (all methods together); ``device`` and ``clock`` name what measured them."""

    explain: Mapping[str, Mapping[str, Any]]
    metrics: Mapping[str, float]
    device: str
    clock: str


@dataclass(frozen=True)
class ExplainedBatch:
    """What a metric sees of one batch: every method's maps of the same rows. Tensors are on the
    job's device.

    ``batch``: the :class:`salbench.datasets.base.Batch` of the rows (one row per scored (image,
    class) pair); ``inputs`` [N, C, H, W] the normalized model input; ``logits`` [N, K] on the
    clean input; ``targets`` [N] the class each map explains; ``maps[method]`` [N, H, W] at input
    resolution; ``model`` the :class:`salbench.models.bundle.ModelBundle`; ``explainers``
    {method: explainer} (set for ``Needs(explainers=True)``); ``costs`` (for ``Needs(costs=True)``);
    ``forward_chunk``: images per explanation pass in the job (a metric that re-runs the
    explainers calls them in chunks of this size, so its values do not depend on the batch).
    """

    batch: Any
    inputs: Tensor
    logits: Tensor
    targets: Tensor
    maps: Mapping[str, Tensor]
    model: Any = None
    explainers: Optional[Mapping[str, Any]] = None
    costs: Optional[BatchCosts] = None
    forward_chunk: Optional[int] = None

    @property
    def images(self) -> Tensor:
        return self.batch.images

    @property
    def classifier(self) -> Any:
        """The ``nn.Module`` to call: the bundle's ``module``, or ``model`` when it is one already."""
        return getattr(self.model, "module", self.model)

    @property
    def methods(self) -> List[str]:
        return list(self.maps)

    def of(self, method: str) -> "MethodBatch":
        """The batch as one method sees it."""
        return MethodBatch(self.batch, self.inputs, self.logits, self.targets, self.maps[method], self.model,
                           method, (self.explainers or {}).get(method), self.forward_chunk)


@dataclass(frozen=True)
class MethodBatch:
    """One method's maps of a batch: the fields of :class:`ExplainedBatch` with ``heatmaps``
    [N, H, W], the method's key ``method`` and its ``explainer`` (None unless needed)."""

    batch: Any
    inputs: Tensor
    logits: Tensor
    targets: Tensor
    heatmaps: Tensor
    model: Any
    method: str
    explainer: Any = None
    forward_chunk: Optional[int] = None

    @property
    def images(self) -> Tensor:
        return self.batch.images

    @property
    def classifier(self) -> Any:
        """The ``nn.Module`` to call: the bundle's ``module``, or ``model`` when it is one already."""
        return getattr(self.model, "module", self.model)


def _same(value: Any, preset_value: Any) -> bool:
    if isinstance(value, (list, tuple)) or isinstance(preset_value, (list, tuple)):
        return isinstance(value, (list, tuple)) and isinstance(preset_value, (list, tuple)) \
            and len(value) == len(preset_value) and all(_same(a, b) for a, b in zip(value, preset_value))
    return bool(value == preset_value)


class Metric:
    """Base class. Subclasses set ``name``, ``category``, ``scores``, ``presets`` and, where they
    need more than the job's maps, ``needs``; they implement :meth:`update` (and :meth:`compute`
    for dataset-level scores, :meth:`tables` for side tables of the kinds in ``table_kinds``).

    ``presets``: ``{preset name: {option: value}}``, the named protocols the metric reproduces;
    :attr:`preset` is the first whose every value equals the metric's option of that name
    (``custom`` when none does). ``baseline`` methods and ``curve_kinds`` are reported from the
    declarations, never from names."""

    name: str = ""
    category: str = ""
    scores: Tuple[ScoreInfo, ...] = ()
    presets: Dict[str, Dict[str, Any]] = {}
    needs: Needs = Needs()
    table_kinds: Tuple[str, ...] = ()
    curve_kinds: Dict[str, CurveKind] = {}

    @property
    def preset(self) -> str:
        for preset, values in self.presets.items():
            if all(_same(getattr(self, option), value) for option, value in values.items()):
                return preset
        return "custom"

    def protocol(self) -> Dict[str, Any]:
        """Every choice that shapes the scores (recorded with each value)."""
        return {}

    def present_classes(self, batch: Any) -> List[List[int]]:
        """With ``Needs(maps="present")``: per image, the classes to explain and score. Default:
        the distinct labels of the image's boxes (without classes whose boxes are all PASCAL
        "difficult"), the image label when it has no boxes."""
        classes: List[List[int]] = []
        for i, label in enumerate(batch.labels.tolist()):
            labels = batch.box_labels[i].tolist()
            if not labels:
                classes.append([int(label)])
                continue
            difficult = batch.difficult[i].tolist()
            if len(difficult) != len(labels):
                difficult = [False] * len(labels)
            present = sorted(set(labels))
            kept = {c for c, hard in zip(labels, difficult) if not hard}
            classes.append([c for c in present if c in kept] or present)
        return classes

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        raise NotImplementedError

    def compute(self) -> Dict[str, Dict[str, float]]:
        return {}

    def tables(self) -> Dict[str, Any]:
        """Tidy side tables (``kind -> pandas.DataFrame`` with a ``method`` column) of the kinds
        in :attr:`table_kinds`."""
        return {}

    def score_info(self, score: str) -> Optional[ScoreInfo]:
        return next((s for s in self.scores if s.name == score), None)

    def describe(self) -> Dict[str, Any]:
        """The declarations reports and tests read (JSON-ready; recorded in run.json)."""
        return {
            "name": self.name,
            "category": self.category,
            "preset": self.preset,
            "needs": {f.name: getattr(self.needs, f.name) for f in fields(Needs)},
            "scores": [{f.name: getattr(s, f.name) for f in fields(ScoreInfo)} for s in self.scores],
            "table_kinds": list(self.table_kinds),
            "curve_kinds": {kind: {f.name: getattr(c, f.name) for f in fields(CurveKind)}
                            for kind, c in self.curve_kinds.items()},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, {self.protocol()})"


class MethodwiseMetric(Metric):
    """A metric that scores each method's maps on their own: :meth:`update_method` per method;
    per-method dataset state lives in ``state(method)`` (made by :meth:`new_state`) and
    :meth:`compute_state` turns it into dataset-level scores."""

    def __init__(self) -> None:
        self._states: Dict[str, Any] = {}

    def new_state(self) -> Any:
        return None

    def state(self, method: str) -> Any:
        if method not in self._states:
            self._states[method] = self.new_state()
        return self._states[method]

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        return {method: self.update_method(explained.of(method)) for method in explained.maps}

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        raise NotImplementedError

    def compute(self) -> Dict[str, Dict[str, float]]:
        out = {method: self.compute_state(state) for method, state in self._states.items()}
        return {method: scores for method, scores in out.items() if scores}

    def compute_state(self, state: Any) -> Dict[str, float]:
        return {}


# --------------------------------------------------------------------------- helpers
TRACKED = ("predicted", "label", "explained")


class TracksClass:
    """For perturbation metrics with option ``target`` (one of :data:`TRACKED`): the class whose
    score they track is also the class the maps must explain (RISE and ROAD explain the
    prediction); ``target: explained`` scores the job's maps as they are."""

    target: str = "predicted"

    @property
    def needs(self) -> Needs:
        return Needs(maps=self.target if self.target in ("predicted", "label") else "target", model=True)

    def tracked_class(self, explained: Any) -> Tensor:
        """[N] long on the inputs' device."""
        if self.target == "predicted":
            return explained.logits.argmax(dim=1)
        if self.target == "label":
            return explained.batch.labels.to(explained.inputs.device)
        return explained.targets.to(explained.inputs.device)


def check_choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    """A clear error for an option outside its choices."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def image_positions(explained: Any) -> Tensor:
    """[N] int64 on the CPU: each row's dataset position (its batch position when the batch
    carries none)."""
    indices = getattr(explained.batch, "indices", None)
    if indices is None:
        return torch.arange(explained.inputs.shape[0])
    return torch.as_tensor(indices, device="cpu")


def image_seeds(explained: Any, seed: int) -> Tensor:
    """[N] int64 on the CPU: ``seed * 1_000_003 + position``, so seeded noise does not depend
    on batching."""
    return seed * 1_000_003 + image_positions(explained)


def image_ids(explained: Any) -> list:
    """The rows' image ids, or the dataset positions as strings."""
    return list(getattr(explained.batch, "image_ids", None) or map(str, image_positions(explained).tolist()))


__all__ = ["BatchCosts", "CurveKind", "ExplainedBatch", "MAP_CLASSES", "Metric", "MethodBatch", "MethodwiseMetric",
           "Needs", "ScoreInfo", "TABLE_KINDS", "TRACKED", "TracksClass", "check_choice", "image_ids",
           "image_positions", "image_seeds"]
