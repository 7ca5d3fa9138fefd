"""One job: one (method(s), model, dataset) cell, written into its output directory.

The job loop executes what the components declare and knows none of them by name: per batch it
explains the images once for every method (:func:`salbench.methods.shared.explain_all`, shared
passes), gathers for each metric the maps it declares (:class:`salbench.metrics.base.Needs`:
the class each map explains, one row per (image, class) pair) from a cache keyed by (image,
class), so a pair is explained once whatever the number of metrics that score it, and calls
every metric once with every method's maps. Timing observes the loop (each method's explanation
and each metric's update) and reaches the metrics that declare ``Needs(costs=True)`` after the
others.

Outputs: ``scores.parquet`` (tidy: one row per image x method x metric score, plus dataset-level
rows with ``scope == "dataset"``; :func:`score_rows` builds every row), one table per kind of
side output (``curves``, ``tau_curves``, ``randomization``, ``timing``: ``<kind>.parquet`` with
``method`` and ``metric`` columns), ``run.json`` (resolved config, versions, device, git
commit, seed, times, status, counts, and the components' declarations that reports read),
``summary.md`` (method x score means), ``gallery.png`` (heatmaps of the first images) and
``viewer.parquet`` (small uint8 thumbnails of the first images and of every method's maps, for the
report's per-image viewer: :mod:`salbench.reports.viewer`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from salbench.datasets import DATASETS, collate, create_dataset
from salbench.harness import store
from salbench.harness.allocator import set_malloc
from salbench.harness.maps import MAPS, MapWriter
from salbench.harness.plugins import load_plugins, loaded_plugins
from salbench.harness.schema import drop_unselected_settings, method_key, options_of, validate_config
from salbench.harness.timing import Stopwatch, device_name
from salbench.methods import create_method
from salbench.methods.shared import Explanations, explain_all
from salbench.metrics import METRICS, BatchCosts, ExplainedBatch, Metric, create_metric
from salbench.metrics.base import TABLE_KINDS
from salbench.metrics.perturbation import autotuned_chunks, logits_in_chunks, restore_chunks
from salbench.models import ModelBundle, create_model
from salbench.models.bundle import check_model_output
from salbench.reports import viewer

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CONSTANT_MAP_RTOL = 1e-6


def map_flags(heatmaps: Tensor) -> List[str]:
    """Per-image flag: ``nonfinite_map`` (NaN/Inf), ``constant_map`` or "". A map is constant when
    ``max - min <= CONSTANT_MAP_RTOL * max(|max|, |min|)`` (1e-6: about 8 float32 ulps, so a map
    that is constant up to upsampling rounding, e.g. of a 1x1 layer, is flagged too): it ranks no
    pixel above another, so no score of it means anything."""
    flat = heatmaps.flatten(1).float()
    finite = torch.isfinite(flat).all(1)
    high, low = flat.amax(1), flat.amin(1)
    constant = (high - low) <= CONSTANT_MAP_RTOL * torch.maximum(high.abs(), low.abs())
    return ["" if f and not c else ("nonfinite_map" if not f else "constant_map")
            for f, c in zip(finite.tolist(), constant.tolist())]


def build_dataset(cfg: DictConfig, bundle: ModelBundle):
    """The configured dataset at the model's input size; a dataset that declares
    ``needs_model`` (the grid composer selects tiles the model classifies) gets the job's model."""
    options = options_of(cfg.dataset)
    if options.get("image_size", "absent") is None:
        options["image_size"] = tuple(bundle.input_size)
    if getattr(DATASETS.get(cfg.dataset.name), "needs_model", False):
        options["model"] = bundle
    return create_dataset(cfg.dataset.name, **options)


# --------------------------------------------------------------------------- score rows
def score_rows(rows: Dict[str, Any], *, method: str, metric_key: str, metric: Metric, values: Dict[str, Any],
               scope: str, flags: Optional[Sequence[str]] = None, method_options: str = "{}") -> List[pd.DataFrame]:
    """The tidy score rows (:data:`salbench.harness.store.SCORE_COLUMNS`) of one method and one
    metric: ``rows`` holds the per-row columns of the scored rows (image_id, image_index, model,
    dataset, target_rule, target, label, predicted); ``values`` {score: [N] tensor (image scope)
    or float (dataset scope)}: tensors are stored through float32 (metrics compute in it), floats
    as they are. A flagged row's values are NaN (the flag says why)."""
    count = len(rows["image_id"])
    flags = list(flags) if flags is not None else [""] * count
    invalid = torch.tensor([bool(f) for f in flags], dtype=torch.bool)
    protocol = json.dumps(metric.protocol(), default=str)
    frames = []
    for score, value in values.items():
        value = value.detach().float().cpu() if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
        value = value.reshape(count)
        value = torch.where(invalid, torch.full_like(value, float("nan")), value)
        info = metric.score_info(score)
        frames.append(pd.DataFrame({
            **rows, "method": method, "metric": metric_key, "score": score,
            "value": value.numpy().astype(np.float64),
            "category": info.category if info else metric.category,
            "higher_is_better": info.higher_is_better if info else None,
            "scope": scope, "flag": flags, "preset": metric.preset, "protocol": protocol,
            "method_options": method_options,
        }))
    return frames


class ScoreRows:
    """Collects score row frames (cheap appends) and builds the tidy frame once."""

    def __init__(self) -> None:
        self.parts: List[pd.DataFrame] = []

    def add(self, frames: List[pd.DataFrame]) -> None:
        self.parts.extend(frames)

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=store.SCORE_COLUMNS)
        return pd.concat(self.parts, ignore_index=True)[store.SCORE_COLUMNS]


# --------------------------------------------------------------------------- identity, resume
JOB_IDENTITY_EXCLUDES = ("progress", "gallery_images", "viewer_images", "flush_every", "resume", "num_workers", "malloc")


def job_id(cfg: DictConfig, inputs: Optional[Dict[str, Any]] = None) -> str:
    """Identity of a job: a hash of its resolved config (minus settings that do not change any
    score: progress bars, gallery, flush size, workers, the host allocator), the salbench version and, when given,
    the fingerprints of its inputs (``{"dataset": ..., "model": ...}``: the dataset's files and
    annotations, the weights file), so a changed input makes a completed job run again."""
    from salbench import __version__

    config = OmegaConf.to_container(cfg, resolve=True)
    for key in JOB_IDENTITY_EXCLUDES:
        config.pop(key, None)
    blob = json.dumps({"config": config, "salbench": __version__, **({"inputs": inputs} if inputs else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _previous_run(output_dir: Path) -> Dict[str, Any]:
    path = output_dir / "run.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}


def _completed_scores(output_dir: Path, identity: str) -> Optional[pd.DataFrame]:
    """The scores of a completed run of this job in ``output_dir`` (None when the table is absent,
    unreadable or written by another job)."""
    path = output_dir / "scores.parquet"
    try:
        if store.parquet_job_id(path) != identity:
            return None
        return pd.read_parquet(path)
    except Exception:  # a truncated or corrupt file: the job is recomputed
        return None


def _clear_outputs(output_dir: Path) -> None:
    """Remove every result a job writes (a job of another config or inputs starts afresh; none
    of its files can then be read as this job's)."""
    _clear_checkpoint(output_dir)
    for name in ("scores", "viewer", *TABLE_KINDS):
        (output_dir / f"{name}.parquet").unlink(missing_ok=True)
    for name in ("summary.md", "gallery.png"):
        (output_dir / name).unlink(missing_ok=True)
    for name in (MAPS, RESCORE_DIR):  # saved maps and an unfinished rescore belong to the earlier job
        if (output_dir / name).is_dir():
            shutil.rmtree(output_dir / name)


RESCORE_DIR = ".rescore"  # salbench rescore's working job inside a run folder (harness/rescore.py)


def run_job(cfg: DictConfig, output_dir: Path, overrides: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Run the job described by ``cfg`` and write its files into ``output_dir``; returns scores.

    The output folder is locked for the job (:func:`salbench.harness.store.output_lock`: a second
    run into it fails at once and changes nothing), and temporaries of killed writes are removed.
    With ``resume`` (default), a directory whose run.json says ``completed`` for the same job
    identity (config, version, input fingerprints) is not run again (its scores are returned),
    and an interrupted job continues from its last flushed chunk; anything unreadable is
    recomputed. ``overrides``: the command line's overrides, recorded in run.json.
    """
    output_dir = Path(output_dir)
    cfg = cfg.copy()
    load_plugins(cfg.get("plugins") or [])  # before validation: their names are options
    for note in drop_unselected_settings(cfg):
        print(f"salbench: {note}")
    validate_config(cfg)
    with store.output_lock(output_dir):
        store.remove_temporaries(output_dir)
        with cuda_numerics(tf32=bool(cfg.get("tf32", False))):
            return _run_locked(cfg, output_dir, list(overrides or []))


def _run_locked(cfg: DictConfig, output_dir: Path, overrides: List[str]) -> pd.DataFrame:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    bundle = create_model(cfg.model.name, **options_of(cfg.model)).to(device)
    check_model_output(bundle)
    dataset = build_dataset(cfg, bundle)
    if len(dataset) == 0:
        raise ValueError(f"dataset {cfg.dataset.name!r} selects no image ({OmegaConf.to_container(cfg.dataset)}); "
                         "check its root, annotation file and limit / shard")
    inputs = {"dataset": dataset.fingerprint(), "model": bundle.info.get("weights_sha256")}
    identity = job_id(cfg, inputs)
    previous = _previous_run(output_dir)
    resume = bool(cfg.get("resume", True))
    if resume and previous.get("job_id") == identity and previous.get("status") == "completed":
        scores = _completed_scores(output_dir, identity)
        if scores is not None:
            print(f"salbench: job {identity} already completed in {output_dir}; skipping (resume=false reruns it)")
            return scores
        print(f"salbench: the completed job's scores.parquet in {output_dir} is missing or unreadable; recomputing")
    if previous.get("job_id") not in (None, identity) or not resume:
        if previous.get("config_id") == job_id(cfg) and previous.get("inputs", inputs) != inputs:
            changed = [key for key in inputs if (previous.get("inputs") or {}).get(key) != inputs[key]]
            print(f"salbench: inputs changed since the run in {output_dir} ({' and '.join(changed)}); recomputing")
        _clear_outputs(output_dir)  # another config or other inputs ran here before: start afresh
    run_info: Dict[str, Any] = {
        "job_id": identity,
        "config_id": job_id(cfg),
        "inputs": inputs,
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "overrides": overrides,
        "versions": store.package_versions(),
        "plugins": loaded_plugins(),
        "git_commit": store.git_commit(PROJECT_ROOT),
        "attempts": int(previous.get("attempts", 0)) + 1 if previous.get("job_id") == identity else 1,
    }
    store.write_json(output_dir / "run.json", run_info)
    clock = time.perf_counter()
    try:
        scores = _run(cfg, output_dir, run_info, bundle, dataset, device)
    except BaseException as error:
        run_info.update(status="failed", error=f"{type(error).__name__}: {error}",
                        traceback=traceback.format_exc(), ended=datetime.now(timezone.utc).isoformat())
        store.write_json(output_dir / "run.json", run_info)
        raise
    run_info.update(status="completed", ended=datetime.now(timezone.utc).isoformat(),
                    seconds=round(time.perf_counter() - clock, 3))
    store.write_json(output_dir / "run.json", run_info)
    _clear_checkpoint(output_dir)
    return scores


CHECKPOINT = "checkpoint.pt"
PARTS = "parts"


def _clear_checkpoint(output_dir: Path) -> None:
    (output_dir / CHECKPOINT).unlink(missing_ok=True)
    if (output_dir / PARTS).is_dir():
        shutil.rmtree(output_dir / PARTS)


class Checkpoint:
    """State of an interrupted job: the flushed row chunks, how many dataset positions they
    cover, and the metrics' accumulators. Each chunk is written atomically, then the checkpoint
    that names it, so a kill at any point leaves a consistent (possibly older) state. The
    checkpoint holds tensors and plain data only (``torch.load(weights_only=True)``: the
    metrics' state through :func:`salbench.harness.store.to_plain`); an unreadable checkpoint or
    part is reported and the job starts afresh."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.parts: List[str] = []
        self.done = 0
        self.state: Dict[str, Any] = {}

    @classmethod
    def load(cls, output_dir: Path, identity: str) -> "Checkpoint":
        checkpoint = cls(output_dir)
        path = output_dir / CHECKPOINT
        if path.exists():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved.get("job_id") == identity:
                    parts, done, state = saved["parts"], saved["done"], store.from_plain(saved["state"])
                    for name in parts:  # every named part must be readable
                        pd.read_parquet(output_dir / PARTS / name, columns=["value"])
                    checkpoint.parts, checkpoint.done, checkpoint.state = parts, done, state
            except Exception as error:  # truncated, corrupt or of an older format: start afresh
                print(f"salbench: the checkpoint in {output_dir} cannot be read ({type(error).__name__}: "
                      f"{str(error)[:200]}); starting the job afresh")
                _clear_checkpoint(output_dir)
                return cls(output_dir)
        known = set(checkpoint.parts)
        for orphan in (output_dir / PARTS).glob("*.parquet") if (output_dir / PARTS).is_dir() else []:
            if orphan.name not in known:  # written after the last checkpoint: redone
                orphan.unlink()
        return checkpoint

    def flush(self, rows: ScoreRows, done: int, identity: str, state: Dict[str, Any]) -> None:
        frame = rows.frame()
        rows.parts.clear()
        name = f"part-{len(self.parts):06d}.parquet"
        store.write_parquet(self.output_dir / PARTS / name, frame, job_id=identity)
        self.parts.append(name)
        self.done = done
        with store.atomic_path(self.output_dir / CHECKPOINT) as tmp:
            torch.save({"job_id": identity, "parts": self.parts, "done": done, "state": store.to_plain(state)}, tmp)

    def frames(self) -> List[pd.DataFrame]:
        return [pd.read_parquet(self.output_dir / PARTS / name) for name in self.parts]


@contextlib.contextmanager
def cuda_numerics(tf32: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions on (``tf32``) or off for the block; torch's
    previous settings come back afterwards (they are process-wide)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------- the job
@dataclass
class Job:
    """What every batch of one job needs: the built components and the loop's settings."""

    bundle: ModelBundle
    explainers: Dict[str, Any]
    metrics: Dict[str, Metric]
    device: torch.device
    dataset_name: str
    target_rule: str  # "label" | "predicted": the class the job's own maps explain
    shared_passes: bool = True
    channels_last: bool = False
    forward_chunk: int = 32  # images per explanation pass and per logits forward (fixed: batch-size independent)
    method_options: Dict[str, str] = field(default_factory=dict)
    map_writer: Optional[MapWriter] = None  # save_maps: every method's job maps go to disk

    def __post_init__(self) -> None:
        self.refresh_method_options()

    def refresh_method_options(self) -> None:
        """The options every score row records (after the first explanation they hold a
        ``batch_size: auto`` method's chosen chunk)."""
        self.method_options = {key: json.dumps(e.options(), default=str) for key, e in self.explainers.items()}

    def stopwatch(self, memory: bool = False) -> Stopwatch:
        return Stopwatch(self.device, memory=memory)

    def describe(self) -> Dict[str, Any]:
        """The components' declarations, recorded in run.json (reports read them)."""
        return {"methods": {key: {"name": e.name, "baseline": bool(getattr(e, "baseline", False)),
                                  "space": getattr(e, "space", "pixel"),
                                  "options": json.loads(self.method_options[key])}
                            for key, e in self.explainers.items()},
                "metrics": {key: metric.describe() for key, metric in self.metrics.items()}}


class MapCache:
    """Every method's heatmap of each (image, class) pair of one batch, explained once: the
    pairs a request lacks are explained together, in the order of the request, by
    :func:`explain_all` calls of exactly ``job.forward_chunk`` pairs (the last chunk padded by
    repeating its last pair), so a map does not depend on the batch its image arrived in."""

    def __init__(self, job: Job, inputs: Tensor, image_ids: Optional[Sequence[str]] = None):
        self.job, self.inputs = job, inputs
        self.image_ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(inputs))]
        self.maps: Dict[Tuple[int, int], Dict[str, Tensor]] = {}
        self.flags: Dict[Tuple[int, int], Dict[str, str]] = {}

    def explain(self, rows: Sequence[int], classes: Sequence[int], stopwatch: Any = None) -> Optional[Explanations]:
        """Explain the pairs (rows[i], classes[i]) not yet cached; returns that call's
        :class:`~salbench.methods.shared.Explanations` (None when nothing was missing)."""
        missing = list(dict.fromkeys(pair for pair in zip(rows, classes) if pair not in self.maps))
        if not missing:
            return None
        chunk = self.job.forward_chunk
        pieces: List[Explanations] = []
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            padded = part + [part[-1]] * (chunk - len(part))
            index = torch.tensor([r for r, _ in padded], dtype=torch.long, device=self.inputs.device)
            wanted = torch.tensor([c for _, c in padded], dtype=torch.long, device=self.inputs.device)
            result = explain_all(self.job.explainers, self.inputs[index], wanted, shared=self.job.shared_passes,
                                 stopwatch=stopwatch, image_ids=[self.image_ids[r] for r, _ in padded])
            pieces.append(Explanations({k: v[:len(part)] for k, v in result.maps.items()}, result.costs,
                                       None if result.logits is None else result.logits[:len(part)]))
        explained = Explanations(
            maps={key: torch.cat([p.maps[key] for p in pieces]) for key in self.job.explainers},
            costs={key: {**pieces[0].costs[key], **{k: sum(p.costs[key][k] for p in pieces) for k in ("seconds",)},
                         **({"peak_memory_bytes": max(p.costs[key]["peak_memory_bytes"] for p in pieces)}
                            if "peak_memory_bytes" in pieces[0].costs[key] else {})}
                   for key in self.job.explainers},
            logits=None if pieces[0].logits is None else torch.cat([p.logits for p in pieces]))
        flags = {key: map_flags(maps) for key, maps in explained.maps.items()}
        for i, pair in enumerate(missing):
            self.maps[pair] = {key: maps[i] for key, maps in explained.maps.items()}
            self.flags[pair] = {key: flags[key][i] for key in flags}
        return explained

    def gather(self, rows: Sequence[int], classes: Sequence[int]) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
        """({method: [N, H, W]}, {method: [N] flags}) of the pairs, explaining what is missing."""
        self.explain(rows, classes)
        pairs = list(zip(rows, classes))
        maps = {key: torch.stack([self.maps[pair][key] for pair in pairs]) for key in self.job.explainers}
        flags = {key: [self.flags[pair][key] for pair in pairs] for key in self.job.explainers}
        return maps, flags


def wanted_classes(needs_maps: str, metric: Metric, batch: Any, targets: Tensor, predicted: Tensor) -> List[List[int]]:
    """Per image, the classes whose maps a metric scores (``Needs.maps``)."""
    if needs_maps == "present":
        return metric.present_classes(batch)
    per_image = {"target": targets, "label": batch.labels, "predicted": predicted}[needs_maps]
    return [[int(c)] for c in per_image.tolist()]


def new_job_state(gallery_images: int = 0, viewer_images: int = 0) -> Dict[str, Any]:
    """The per-job accumulators :func:`evaluate_batch` updates (plain data: checkpointed with the job)."""
    return {"gallery": {"size": gallery_images, "images": [], "boxes": [], "labels": [], "maps": {}},
            "viewer": viewer.new_state(viewer_images), "flagged": 0, "skipped": []}


def evaluate_batch(job: Job, batch: Any, state: Dict[str, Any]) -> List[pd.DataFrame]:
    """Explain one batch with every method (shared passes where possible), score it with every
    metric (each once, with every method's maps) and return the score rows."""
    inputs = job.bundle.normalize(batch.images)
    if job.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    cache = MapCache(job, inputs, batch.image_ids)
    timer = functools.partial(job.stopwatch, memory=True)
    positions = list(range(len(batch)))
    if job.target_rule == "label":
        # the targets are known: the shared pass's forward gives the clean logits (bit-identical
        # to an inference forward); a separate forward runs only when no pass was shared
        targets = batch.labels.to(inputs.device)
        explained_job = cache.explain(positions, targets.tolist(), stopwatch=timer)
        logits = explained_job.logits
        if logits is None:
            logits = logits_in_chunks(job.bundle.module, inputs, job.forward_chunk)
        predicted = logits.argmax(1)
    else:
        logits = logits_in_chunks(job.bundle.module, inputs, job.forward_chunk)
        predicted = targets = logits.argmax(1)
        explained_job = cache.explain(positions, targets.tolist(), stopwatch=timer)
    job.refresh_method_options()  # a method's autotuned chunk, chosen by its first call
    job_maps, job_flags = cache.gather(positions, targets.tolist())
    if job.map_writer is not None:
        job.map_writer.write(batch.image_ids, targets, job_maps)
    state["flagged"] += sum(bool(f) for flags in job_flags.values() for f in flags)
    # an image whose clean logits are not finite has no meaningful score under any metric
    image_flags = ["" if ok else "nonfinite_logits" for ok in torch.isfinite(logits).all(1).tolist()]
    _collect_gallery(state["gallery"], batch, job_maps)
    viewer.collect(state["viewer"], batch, job_maps, targets, predicted, job_flags, job.bundle.class_names)

    columns = {
        "image_id": list(batch.image_ids), "image_index": batch.indices.cpu().numpy(), "model": job.bundle.name,
        "dataset": job.dataset_name, "target": targets.cpu().numpy(), "label": batch.labels.cpu().numpy(),
        "predicted": predicted.cpu().numpy(),
    }
    frames: List[pd.DataFrame] = []
    metric_seconds: Dict[str, float] = {}
    # metrics that read the loop's costs run last, when every other metric has been timed
    for key in sorted(job.metrics, key=lambda k: job.metrics[k].needs.costs):
        metric = job.metrics[key]
        needs = metric.needs
        per_image = wanted_classes(needs.maps, metric, batch, targets, predicted)
        rows = [i for i, classes in enumerate(per_image) for _ in classes]
        classes = [c for per in per_image for c in per]
        maps, flags = cache.gather(rows, classes)
        same = rows == positions
        index = torch.tensor(rows, dtype=torch.long, device=inputs.device)
        explained = ExplainedBatch(
            batch=batch if same else batch.select(rows), inputs=inputs if same else inputs[index],
            logits=logits if same else logits[index], targets=torch.tensor(classes, device=inputs.device), maps=maps,
            model=job.bundle, explainers=job.explainers if needs.explainers else None,
            costs=BatchCosts(explain=explained_job.costs, metrics=dict(metric_seconds), device=device_name(job.device),
                             clock="cuda_events" if job.device.type == "cuda" else "perf_counter")
            if needs.costs else None, forward_chunk=job.forward_chunk)
        with job.stopwatch() as watch:
            results = metric.update(explained)
        metric_seconds[key] = watch.seconds
        view = {name: ([value[r] for r in rows] if isinstance(value, list) else value[rows])
                if not isinstance(value, str) else value for name, value in columns.items()}
        view["target"] = np.asarray(classes, dtype=np.int64)
        view["target_rule"] = needs.maps if needs.maps != "target" else job.target_rule
        for method in job.explainers:
            row_flags = [image_flags[r] or flag for r, flag in zip(rows, flags[method])]
            frames += score_rows(view, method=method, metric_key=key, metric=metric, values=results[method],
                                 scope="image", flags=row_flags, method_options=job.method_options[method])
    return frames


def _collect_gallery(gallery: Dict[str, Any], batch: Any, maps: Dict[str, Tensor]) -> None:
    need = max(0, gallery["size"] - len(gallery["images"]))
    if need:
        gallery["images"] += list(batch.images[:need].cpu())
        gallery["boxes"] += [b.cpu() for b in batch.boxes[:need]]
        gallery["labels"] += batch.labels[:need].tolist()
        for key, heatmaps in maps.items():
            gallery["maps"].setdefault(key, []).extend(heatmaps[:need].cpu())


def dataset_rows(job: Job, metric_key: str, metric: Metric) -> List[pd.DataFrame]:
    """The ``scope == "dataset"`` rows of one metric (its :meth:`~Metric.compute`)."""
    rows = {"image_id": [None], "image_index": [-1], "model": job.bundle.name, "dataset": job.dataset_name,
            "target_rule": job.target_rule, "target": [-1], "label": [-1], "predicted": [-1]}
    frames: List[pd.DataFrame] = []
    for method, values in metric.compute().items():
        frames += score_rows(rows, method=method, metric_key=metric_key, metric=metric, scope="dataset",
                             values={score: float(value) for score, value in values.items()},
                             method_options=job.method_options[method])
    return frames


def write_tables(job: Job, output_dir: Path, identity: Optional[str] = None) -> List[str]:
    """One ``<kind>.parquet`` per kind of side table the metrics wrote (with ``method`` and
    ``metric`` columns); a kind no metric wrote this time is removed (a re-run never leaves
    another config's table). Returns the kinds written."""
    by_kind: Dict[str, List[pd.DataFrame]] = {}
    for key, metric in job.metrics.items():
        for kind, table in metric.tables().items():
            if kind not in metric.table_kinds:
                raise ValueError(f"metric {key!r} wrote a {kind!r} table but declares {list(metric.table_kinds)}")
            if len(table):
                by_kind.setdefault(kind, []).append(table.assign(metric=key))
    for kind in TABLE_KINDS:
        if kind not in by_kind:
            (output_dir / f"{kind}.parquet").unlink(missing_ok=True)
    for kind, tables in by_kind.items():
        table = pd.concat(tables, ignore_index=True)
        first = [c for c in ("method", "metric") if c in table.columns]
        store.write_parquet(output_dir / f"{kind}.parquet", table[first + [c for c in table.columns if c not in first]],
                            job_id=identity)
    return sorted(by_kind)


def check_components(explainers: Dict[str, Any], metrics: Dict[str, Metric], dataset: Any = None,
                     dataset_name: str = "") -> None:
    """Refuse what cannot be scored, before any work, from the components' declarations: a
    metric that re-runs the explainers (``Needs(explainers=True)``) with a method whose maps
    cannot be recomputed (saved maps), and a localization metric (it scores maps against
    ground-truth boxes or masks) on a dataset that declares no ground truth (``annotations``)."""
    fixed = [key for key, e in explainers.items() if not getattr(e, "recomputable", True)]
    annotations = getattr(dataset, "annotations", ("boxes",)) if dataset is not None else ("boxes",)
    for key, metric in metrics.items():
        if metric.needs.explainers and fixed:
            raise ValueError(
                f"metric {key!r} re-runs the explainers on perturbed inputs or a changed model "
                f"(Needs(explainers=True)); method(s) {', '.join(repr(f) for f in fixed)} read saved maps, which "
                "cannot be recomputed: score saved maps with metrics that need no explainers")
        if metric.category == "localization" and not annotations:
            usable = [n for n in METRICS.names() if getattr(METRICS.get(n), "category", "") != "localization"]
            raise ValueError(
                f"metric {key!r} scores maps against ground-truth boxes or masks, and dataset {dataset_name!r} has "
                f"none; metrics that need none: {', '.join(usable)}")


def build_job(cfg: DictConfig, bundle: ModelBundle, device: torch.device, metrics: Optional[Dict[str, Metric]] = None,
              dataset: Any = None) -> Job:
    """The job's components from ``cfg``: explainers keyed by their label (``method_key``),
    metrics (``metrics``: already built, e.g. restored from a checkpoint) and the loop's settings."""
    explainers = {method_key(key, node): create_method(node.name, bundle, **options_of(node, "method"))
                  for key, node in cfg.method.items()}
    if metrics is None:
        metrics = {key: create_metric(node.name, **options_of(node)) for key, node in cfg.metric.items()}
    check_components(explainers, metrics, dataset, cfg.dataset.name)
    return Job(bundle=bundle, explainers=explainers, metrics=metrics, device=device,
               dataset_name=cfg.dataset.name, target_rule=cfg.target,
               shared_passes=bool(cfg.get("shared_passes", True)), channels_last=bool(cfg.get("channels_last", False)),
               forward_chunk=int(cfg.get("forward_chunk", 32)))


def _run(cfg: DictConfig, output_dir: Path, run_info: Dict[str, Any], bundle: ModelBundle, dataset: Any,
         device: torch.device) -> pd.DataFrame:
    allocator = set_malloc(cfg.get("malloc", "retain"))  # process-wide, before the first forward pass
    run_info["device"] = {**store.device_info(device), "device_name": device_name(device),
                          "channels_last": bool(cfg.get("channels_last", False)),
                          "shared_passes": bool(cfg.get("shared_passes", True)), "malloc": allocator}
    if cfg.get("channels_last", False):  # the job's own model copy: NHWC weights for GPU convolutions
        bundle.module.to(memory_format=torch.channels_last)
    run_info["model"] = bundle.describe()
    identity = run_info["job_id"]
    checkpoint = Checkpoint.load(output_dir, identity) if cfg.get("resume", True) else Checkpoint(output_dir)
    metrics = {key: create_metric(node.name, **options_of(node)) for key, node in cfg.metric.items()}
    state = {**new_job_state(int(cfg.gallery_images), int(cfg.get("viewer_images", viewer.VIEWER_IMAGES))),
             **checkpoint.state}
    for key, saved in state.pop("metrics", {}).items():  # the accumulators of the flushed batches
        metrics[key].__dict__.update(saved)
    state["metrics"] = metrics
    if cfg.batch_size < cfg.get("forward_chunk", 32):
        print(f"salbench: note: forward_chunk={cfg.forward_chunk} > batch_size={cfg.batch_size}: every pass is padded "
              f"to {cfg.forward_chunk} images; forward_chunk={cfg.batch_size} is faster (scores then round as with it)")
    job = build_job(cfg, bundle, device, metrics=state["metrics"], dataset=dataset)
    explainers = job.explainers
    restore_chunks(explainers, state.pop("method_chunks", {}))  # a resumed job keeps its autotuned chunks
    job.refresh_method_options()
    if cfg.get("save_maps"):
        job.map_writer = MapWriter(output_dir / MAPS, cfg.save_maps, methods=list(explainers))
        run_info["maps"] = job.map_writer.describe()
    run_info["components"] = job.describe()
    run_info["dataset"] = {"name": cfg.dataset.name, "num_images": len(dataset)}
    if checkpoint.done:
        run_info["resumed_from"] = checkpoint.done
        print(f"salbench: resuming job {identity} after {checkpoint.done} of {len(dataset)} images")
    remaining = Subset(dataset, range(checkpoint.done, len(dataset)))
    loader = DataLoader(remaining, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda")
    rows = ScoreRows()
    flush_every = max(int(cfg.get("flush_every", 256)), 1)
    done, since_flush = checkpoint.done, 0
    progress = tqdm(total=len(dataset), initial=done, desc=f"{bundle.name}/{cfg.dataset.name}", unit="img",
                    disable=not cfg.progress, mininterval=1.0)
    for batch in loader:
        state["skipped"] += batch.extras.get("skipped", [])
        if len(batch):
            rows.add(evaluate_batch(job, batch.to(device), state))
        step = len(batch) + len(batch.extras.get("skipped", []))
        done += step
        since_flush += step
        progress.update(step)
        if since_flush >= flush_every and done < len(dataset):
            if job.map_writer is not None:
                job.map_writer.flush()
            checkpoint.flush(rows, done, identity, {**state, "metrics": {k: vars(m) for k, m in metrics.items()},
                                                    "method_chunks": autotuned_chunks(explainers)})
            since_flush = 0
    progress.close()

    if job.map_writer is not None:
        job.map_writer.flush()
    for key, metric in job.metrics.items():
        rows.add(dataset_rows(job, key, metric))
    tables = write_tables(job, output_dir, identity)
    parts = [*checkpoint.frames(), rows.frame()]
    scores = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else rows.frame()
    scores = scores[store.SCORE_COLUMNS]
    store.write_parquet(output_dir / "scores.parquet", scores, job_id=identity)
    table = store.summary_markdown(scores)
    skipped = state["skipped"]
    evaluated = len(dataset) - len(skipped)
    note = f"Mean over {evaluated} images (target: {cfg.target})."
    if skipped:
        note += f" {len(skipped)} images skipped (see run.json)."
    store.write_text(output_dir / "summary.md", f"# {bundle.name} on {cfg.dataset.name}\n\n{note}\n\n"
                     + table)
    gallery = state["gallery"]
    if gallery["images"]:
        from salbench.reports.gallery import save_gallery

        save_gallery(output_dir / "gallery.png", gallery, list(explainers), bundle.class_names,
                     spaces={key: getattr(e, "space", "pixel") for key, e in explainers.items()})
    if state["viewer"]["records"]:
        store.write_parquet(output_dir / "viewer.parquet", viewer.table(state["viewer"]), job_id=identity)
    else:
        (output_dir / "viewer.parquet").unlink(missing_ok=True)
    tuned = {"methods": autotuned_chunks(job.explainers), "metrics": autotuned_chunks(job.metrics)}
    if tuned["methods"] or tuned["metrics"]:  # batch_size: auto: the chunks chosen and their measurements
        run_info["forward_chunks"] = tuned
        run_info["components"] = job.describe()
    run_info["counts"] = {"images": evaluated, "skipped": len(skipped), "flagged_maps": state["flagged"],
                          "rows": len(scores)}
    run_info["skipped"] = skipped
    run_info["tables"] = tables
    run_info["outputs"] = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("."))
    print(f"\n{bundle.name} on {cfg.dataset.name} ({evaluated} images), mean per method:\n")
    print(table)
    if skipped:
        print(f"{len(skipped)} images skipped; reasons in run.json")
    print(f"results: {output_dir.resolve()}")
    return scores
