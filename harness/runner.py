"""One job: one (method(s), model, dataset) cell, written into its output directory.

Outputs: ``scores.parquet`` (tidy: one row per image x method x metric score, plus dataset-level
rows with ``scope == "dataset"``), any extra metric tables (``<name>.parquet``), ``run.json``
(resolved config, versions, device, git commit, seed, times, status, counts), ``summary.md``
(method x score means) and ``gallery.png`` (heatmaps of the first images).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import random
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from salbench import store
from salbench.datasets import collate, create_dataset
from salbench.methods import create_method
from salbench.methods.shared import explain_all
from salbench.metrics import ExplainedBatch, create_metric
from salbench.models import ModelBundle, create_model
from salbench.schema import options_of, validate_config
from salbench.timing import Stopwatch, device_name

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


def map_flags(heatmaps: torch.Tensor) -> List[str]:
    """Per-image flag: ``nonfinite_map`` (NaN/Inf), ``constant_map`` (max == min) or ""."""
    flat = heatmaps.flatten(1)
    finite = torch.isfinite(flat).all(1)
    constant = flat.amax(1) == flat.amin(1)
    return ["" if f and not c else ("nonfinite_map" if not f else "constant_map")
            for f, c in zip(finite.tolist(), constant.tolist())]


def build_dataset(cfg: DictConfig, bundle: ModelBundle):
    """The configured dataset at the model's input size; datasets that select images with a
    model (the grid composer) get the job's model."""
    import inspect

    from salbench.datasets import DATASETS

    options = options_of(cfg.dataset)
    if options.get("image_size", "absent") is None:
        options["image_size"] = tuple(bundle.input_size)
    if "model" in inspect.signature(DATASETS.get(cfg.dataset.name)).parameters:
        options["model"] = bundle
    return create_dataset(cfg.dataset.name, **options)


class ScoreRows:
    """Collects score rows column-wise (cheap appends) and builds the tidy frame once."""

    def __init__(self) -> None:
        self.parts: List[pd.DataFrame] = []

    def add(self, columns: Dict[str, Any]) -> None:
        self.parts.append(pd.DataFrame(columns))

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame(columns=store.SCORE_COLUMNS)
        return pd.concat(self.parts, ignore_index=True)[store.SCORE_COLUMNS]


JOB_IDENTITY_EXCLUDES = ("progress", "gallery_images", "flush_every", "resume", "num_workers")


def job_id(cfg: DictConfig) -> str:
    """Identity of a job: a hash of its resolved config (minus settings that do not change any
    score: progress bars, gallery, flush size, workers) and the salbench version."""
    from salbench import __version__

    config = OmegaConf.to_container(cfg, resolve=True)
    for key in JOB_IDENTITY_EXCLUDES:
        config.pop(key, None)
    blob = json.dumps({"config": config, "salbench": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _previous_run(output_dir: Path) -> Dict[str, Any]:
    path = output_dir / "run.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def run_job(cfg: DictConfig, output_dir: Path) -> pd.DataFrame:
    """Run the job described by ``cfg`` and write its files into ``output_dir``; returns scores.

    With ``resume`` (default), a directory whose run.json says ``completed`` for the same job
    identity is not run again (its scores are returned), and an interrupted job continues from
    its last flushed chunk.
    """
    output_dir = Path(output_dir)
    validate_config(cfg)
    identity = job_id(cfg)
    previous = _previous_run(output_dir)
    if cfg.get("resume", True) and previous.get("job_id") == identity and previous.get("status") == "completed" \
            and (output_dir / "scores.parquet").exists():
        print(f"salbench: job {identity} already completed in {output_dir}; skipping (resume=false reruns it)")
        return pd.read_parquet(output_dir / "scores.parquet")
    if previous.get("job_id") not in (None, identity) or not cfg.get("resume", True):
        _clear_checkpoint(output_dir)  # another config ran here before: start afresh
    run_info: Dict[str, Any] = {
        "job_id": identity,
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": store.package_versions(),
        "git_commit": store.git_commit(PROJECT_ROOT),
        "attempts": int(previous.get("attempts", 0)) + 1 if previous.get("job_id") == identity else 1,
    }
    store.write_json(output_dir / "run.json", run_info)
    clock = time.perf_counter()
    try:
        with cuda_numerics(tf32=bool(cfg.get("tf32", False))):
            scores = _run(cfg, output_dir, run_info)
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
    that names it, so a kill at any point leaves a consistent (possibly older) state."""

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
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if saved.get("job_id") == identity:
                checkpoint.parts, checkpoint.done, checkpoint.state = saved["parts"], saved["done"], saved["state"]
        known = set(checkpoint.parts)
        for orphan in (output_dir / PARTS).glob("*.parquet") if (output_dir / PARTS).is_dir() else []:
            if orphan.name not in known:  # written after the last checkpoint: redone
                orphan.unlink()
        return checkpoint

    def flush(self, rows: "ScoreRows", done: int, identity: str, state: Dict[str, Any]) -> None:
        frame = rows.frame()
        rows.parts.clear()
        name = f"part-{len(self.parts):06d}.parquet"
        store.write_parquet(self.output_dir / PARTS / name, frame)
        self.parts.append(name)
        self.done = done
        with store.atomic_path(self.output_dir / CHECKPOINT) as tmp:
            torch.save({"job_id": identity, "parts": self.parts, "done": done, "state": state}, tmp)

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


def _run(cfg: DictConfig, output_dir: Path, run_info: Dict[str, Any]) -> pd.DataFrame:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_info["device"] = {**store.device_info(device), "device_name": device_name(device),
                          "channels_last": bool(cfg.get("channels_last", False)),
                          "shared_passes": bool(cfg.get("shared_passes", True))}
    bundle = create_model(cfg.model.name, **options_of(cfg.model)).to(device)
    if cfg.get("channels_last", False):  # the job's own model copy: NHWC weights for GPU convolutions
        bundle.module.to(memory_format=torch.channels_last)
    run_info["model"] = bundle.describe()
    dataset = build_dataset(cfg, bundle)
    explainers = {key: create_method(node.name, bundle, **options_of(node)) for key, node in cfg.method.items()}
    identity = run_info["job_id"]
    checkpoint = Checkpoint.load(output_dir, identity) if cfg.get("resume", True) else Checkpoint(output_dir)
    state = checkpoint.state or {
        "metrics": {key: {mkey: create_metric(node.name, **options_of(node)) for mkey, node in cfg.metric.items()}
                    for key in explainers},
        "gallery": {"images": [], "boxes": [], "labels": [], **{k: [] for k in explainers}},
        "flagged": 0,
        "skipped": [],
    }
    metrics, gallery = state["metrics"], state["gallery"]
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
            _evaluate_batch(cfg, batch.to(device), bundle, explainers, metrics, gallery, state, rows)
        step = len(batch) + len(batch.extras.get("skipped", []))
        done += step
        since_flush += step
        progress.update(step)
        if since_flush >= flush_every and done < len(dataset):
            checkpoint.flush(rows, done, identity, state)
            since_flush = 0
    progress.close()

    for key, by_metric in metrics.items():
        method_options = json.dumps(explainers[key].options(), default=str)
        for mkey, metric in by_metric.items():
            for score, value in metric.compute().items():
                info = metric.score_info(score)
                rows.add({"image_id": [None], "image_index": [-1], "method": key, "model": bundle.name,
                          "dataset": cfg.dataset.name, "target_rule": cfg.target, "target": [-1], "label": [-1],
                          "predicted": [-1], "metric": mkey, "score": score, "value": [float(value)],
                          "category": info.category if info else metric.category,
                          "higher_is_better": info.higher_is_better if info else None, "scope": "dataset",
                          "flag": "", "preset": metric.preset, "protocol": json.dumps(metric.protocol(), default=str),
                          "method_options": method_options})
            for name, table in metric.tables().items():
                if "method" not in table:
                    table = table.assign(method=key)
                store.write_parquet(output_dir / f"{name}-{key}-{mkey}.parquet", table)

    parts = [*checkpoint.frames(), rows.frame()]
    scores = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else rows.frame()
    scores = scores[store.SCORE_COLUMNS]
    store.write_parquet(output_dir / "scores.parquet", scores)
    table = store.summary_table(scores)
    skipped = state["skipped"]
    evaluated = len(dataset) - len(skipped)
    note = f"Mean over {evaluated} images (target: {cfg.target})."
    if skipped:
        note += f" {len(skipped)} images skipped (see run.json)."
    store.write_text(output_dir / "summary.md", f"# {bundle.name} on {cfg.dataset.name}\n\n{note}\n\n"
                     + store.markdown_table(table))
    if gallery["images"]:
        from salbench.reports.gallery import save_gallery

        save_gallery(output_dir / "gallery.png", gallery, list(explainers), bundle.class_names)
    run_info["counts"] = {"images": evaluated, "skipped": len(skipped), "flagged_maps": state["flagged"],
                          "rows": len(scores)}
    run_info["skipped"] = skipped
    run_info["outputs"] = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("."))
    print(f"\n{bundle.name} on {cfg.dataset.name} ({evaluated} images), mean per method:\n")
    print(store.markdown_table(table))
    if skipped:
        print(f"{len(skipped)} images skipped; reasons in run.json")
    print(f"results: {output_dir.resolve()}")
    return scores


def _metric_order(by_metric: Dict[str, Any]) -> List[str]:
    """Metric keys with the timing-consuming ones (``wants_timing``) last."""
    return sorted(by_metric, key=lambda k: bool(getattr(by_metric[k], "wants_timing", False)))


def _update_metrics(cfg, views: Dict[str, Dict[str, ExplainedBatch]], metrics, device) -> Dict[str, Dict[str, Any]]:
    """Every metric of every method on one batch: ``{method: {metric: {score: [B]}}}``.
    ``views[metric][method]`` is what that metric scores (maps of its ``map_target``); each
    update's seconds go to the method's shared ``timing["metric_seconds"]``. Metrics of several
    methods that can share forward batches (same deletion/insertion choices) run together when
    ``shared_passes``; metrics that want timing run last."""
    from salbench.metrics.deletion import DeletionInsertion, update_many

    keys = list(next(iter(views.values()), {}))
    results: Dict[str, Dict[str, Any]] = {key: {} for key in keys}
    order = _metric_order(metrics[keys[0]]) if keys else []
    for mkey in order:
        explained = views[mkey]
        if getattr(metrics[keys[0]][mkey], "wants_timing", False):
            for key in keys:
                results[key][mkey] = metrics[key][mkey].update(explained[key])
            continue
        group = [k for k in keys if isinstance(metrics[k][mkey], DeletionInsertion)
                 and metrics[keys[0]][mkey].shares_passes_with(metrics[k][mkey])] \
            if cfg.get("shared_passes", True) and isinstance(metrics[keys[0]][mkey], DeletionInsertion) else []
        if len(group) > 1:
            with Stopwatch(device) as watch:
                shared = update_many({k: metrics[k][mkey] for k in group}, {k: explained[k] for k in group})
            for key in group:
                results[key][mkey] = shared[key]
                explained[key].timing["metric_seconds"][mkey] = watch.seconds / len(group)
        for key in keys:
            if key in group and len(group) > 1:
                continue
            with Stopwatch(device) as watch:
                results[key][mkey] = metrics[key][mkey].update(explained[key])
            explained[key].timing["metric_seconds"][mkey] = watch.seconds
    return results


def _view_key(metric, batch, job_target: str):
    """Metrics with equal keys score the same maps: the job's target, ``"label"``,
    ``"predicted"``, or ``("present", pairs)``."""
    wanted = getattr(metric, "map_target", None) or job_target
    if wanted == "present":
        return wanted, tuple(tuple(classes) for classes in metric.present_classes(batch))
    return wanted


def _explain_for(cfg, view_key, batch, predicted, explained, flags, explainers):
    """What the metrics of ``view_key`` (:func:`_view_key`) score: ``(views, view_flags, rows)``
    with ``rows`` [N] the batch position of each scored row.

    ``"label"`` / ``"predicted"``: one row per image, explaining that class; ``("present",
    pairs)``: one row per (image, class) pair. Rows whose class equals the job's target reuse
    the job's maps; the others are explained again (their cost is not charged to the timing
    metric)."""
    base = next(iter(explained.values()))
    device = base.targets.device
    if isinstance(view_key, tuple) and view_key[0] == "present":
        per_image = view_key[1]
        rows = torch.tensor([i for i, classes in enumerate(per_image) for _ in classes], dtype=torch.long,
                            device=device)
        classes = torch.tensor([c for classes in per_image for c in classes], dtype=torch.long, device=device)
        same_rows = all(len(c) == 1 for c in per_image)
    elif view_key in ("label", "predicted"):
        rows = torch.arange(len(batch), device=device)
        classes = (batch.labels if view_key == "label" else predicted).to(device)
        same_rows = True
    else:
        raise ValueError(f"a metric asks for maps of {view_key!r}; valid: label, predicted, present")
    view_batch = batch if same_rows else batch.select(rows.tolist())
    differ = torch.nonzero(classes != base.targets[rows]).flatten()
    if len(differ):
        extra, _ = explain_all(explainers, base.inputs[rows[differ]], classes[differ],
                               shared=cfg.get("shared_passes", True))
    views: Dict[str, ExplainedBatch] = {}
    view_flags: Dict[str, List[str]] = {}
    for key, job in explained.items():
        heatmaps = job.heatmaps if same_rows else job.heatmaps[rows]
        if len(differ):
            heatmaps = heatmaps.clone()
            heatmaps[differ] = extra[key].to(heatmaps.dtype)
        views[key] = dataclasses.replace(
            job, batch=view_batch, heatmaps=heatmaps, targets=classes,
            inputs=job.inputs if same_rows else job.inputs[rows],
            logits=job.logits if same_rows else job.logits[rows])
        if len(differ):
            view_flags[key] = map_flags(heatmaps)
        else:
            view_flags[key] = [flags[key][i] for i in rows.tolist()]
    return views, view_flags, rows


def _evaluate_batch(cfg, batch, bundle, explainers, metrics, gallery, state, rows: ScoreRows) -> None:
    """Explain one batch with every method (shared passes where possible) and score it with every
    metric (rows appended, method-major)."""
    inputs = bundle.normalize(batch.images)
    if cfg.get("channels_last", False):
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    device = inputs.device
    explain = functools.partial(explain_all, explainers, inputs, shared=cfg.get("shared_passes", True),
                                stopwatch=functools.partial(Stopwatch, device, memory=True))
    if cfg.target == "label":
        # the targets are known: the shared pass's forward gives the clean logits (bit-identical
        # to an inference forward), the separate forward runs only when no pass was shared
        targets, pass_logits = batch.labels, []
        heatmaps, costs = explain(targets, clean_logits=pass_logits)
        if pass_logits:
            logits = pass_logits[0]
        else:
            with torch.inference_mode():
                logits = bundle.module(inputs)
        predicted = logits.argmax(1)
    else:
        with torch.inference_mode():
            logits = bundle.module(inputs)
        predicted = targets = logits.argmax(1)
        heatmaps, costs = explain(targets)
    need = max(0, cfg.gallery_images - len(gallery["images"]))
    if need:
        gallery["images"] += list(batch.images[:need].cpu())
        gallery["boxes"] += [b.cpu() for b in batch.boxes[:need]]
        gallery["labels"] += batch.labels[:need].tolist()
    common = {
        "image_id": batch.image_ids, "image_index": batch.indices.cpu().numpy(),
        "model": bundle.name, "dataset": cfg.dataset.name, "target_rule": cfg.target,
        "target": targets.cpu().numpy(), "label": batch.labels.cpu().numpy(),
        "predicted": predicted.cpu().numpy(),
    }
    explained: Dict[str, ExplainedBatch] = {}
    flags: Dict[str, List[str]] = {}
    for key, explainer in explainers.items():
        flags[key] = map_flags(heatmaps[key])
        state["flagged"] += sum(bool(f) for f in flags[key])
        if need:
            gallery[key] += list(heatmaps[key][:need].cpu())
        timing = {**costs[key], "metric_seconds": {},
                  "device": device_name(device), "clock": "cuda_events" if device.type == "cuda" else "perf_counter"}
        explained[key] = ExplainedBatch(batch, inputs, heatmaps[key], targets, logits, bundle, explainer, key,
                                        timing=timing)
    all_rows = torch.arange(len(batch))
    by_target = {cfg.target: (explained, flags, all_rows)}
    first = next(iter(metrics.values()), {})
    view_keys = {mkey: _view_key(metric, batch, cfg.target) for mkey, metric in first.items()}
    for mkey, metric in first.items():
        if view_keys[mkey] not in by_target:
            by_target[view_keys[mkey]] = _explain_for(cfg, view_keys[mkey], batch, predicted, explained, flags,
                                                      explainers)
    views = {mkey: by_target[view_keys[mkey]] for mkey in first}
    results = _update_metrics(cfg, {mkey: view[0] for mkey, view in views.items()}, metrics, device)
    for key, explainer in explainers.items():
        method_options = json.dumps(explainer.options(), default=str)
        for mkey, metric in metrics[key].items():
            view, view_flags, view_rows = views[mkey]
            view_rows = view_rows.cpu().numpy()
            view_common = common if len(view_rows) == len(batch) and (view_rows == np.arange(len(batch))).all() \
                else {name: ([value[i] for i in view_rows] if isinstance(value, list) else value[view_rows])
                      if not isinstance(value, str) else value for name, value in common.items()}
            invalid = torch.tensor([bool(f) for f in view_flags[key]])
            protocol = json.dumps(metric.protocol(), default=str)
            for score, values in results[key][mkey].items():
                values = values.detach().float().cpu()
                values = torch.where(invalid, torch.full_like(values, float("nan")), values)
                info = metric.score_info(score)
                rows.add({**view_common, "target_rule": metric.map_target or cfg.target,
                          "target": view[key].targets.cpu().numpy(),
                          "method": key, "metric": mkey, "score": score,
                          "value": values.numpy().astype(np.float64),
                          "category": info.category if info else metric.category,
                          "higher_is_better": info.higher_is_better if info else None,
                          "scope": "image", "flag": view_flags[key], "preset": metric.preset,
                          "protocol": protocol, "method_options": method_options})
