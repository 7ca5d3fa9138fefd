"""One job: one (method(s), model, dataset) cell, written into its output directory.

Outputs: ``scores.parquet`` (tidy: one row per image x method x metric score, plus dataset-level
rows with ``scope == "dataset"``), any extra metric tables (``<name>.parquet``), ``run.json``
(resolved config, versions, device, git commit, seed, times, status, counts), ``summary.md``
(method x score means) and ``gallery.png`` (heatmaps of the first images).
"""
from __future__ import annotations

import json
import random
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from salbench import store
from salbench.datasets import collate, create_dataset
from salbench.methods import create_method
from salbench.metrics import ExplainedBatch, create_metric
from salbench.models import ModelBundle, create_model
from salbench.schema import options_of, validate_config

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
    options = options_of(cfg.dataset)
    if options.get("image_size", "absent") is None:
        options["image_size"] = bundle.input_size[0]
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


def run_job(cfg: DictConfig, output_dir: Path) -> pd.DataFrame:
    """Run the job described by ``cfg`` and write its files into ``output_dir``; returns scores."""
    output_dir = Path(output_dir)
    validate_config(cfg)
    run_info: Dict[str, Any] = {
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": store.package_versions(),
        "git_commit": store.git_commit(PROJECT_ROOT),
    }
    store.write_json(output_dir / "run.json", run_info)
    clock = time.perf_counter()
    try:
        scores = _run(cfg, output_dir, run_info)
    except BaseException as error:
        run_info.update(status="failed", error=f"{type(error).__name__}: {error}",
                        traceback=traceback.format_exc(), ended=datetime.now(timezone.utc).isoformat())
        store.write_json(output_dir / "run.json", run_info)
        raise
    run_info.update(status="completed", ended=datetime.now(timezone.utc).isoformat(),
                    seconds=round(time.perf_counter() - clock, 3))
    store.write_json(output_dir / "run.json", run_info)
    return scores


def _run(cfg: DictConfig, output_dir: Path, run_info: Dict[str, Any]) -> pd.DataFrame:
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    run_info["device"] = store.device_info(device)
    bundle = create_model(cfg.model.name, **options_of(cfg.model)).to(device)
    run_info["model"] = bundle.describe()
    dataset = build_dataset(cfg, bundle)
    explainers = {key: create_method(node.name, bundle, **options_of(node)) for key, node in cfg.method.items()}
    metrics = {key: {mkey: create_metric(node.name, **options_of(node)) for mkey, node in cfg.metric.items()}
               for key in explainers}
    run_info["dataset"] = {"name": cfg.dataset.name, "num_images": len(dataset)}
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                        collate_fn=collate)
    rows = ScoreRows()
    gallery: Dict[str, List[torch.Tensor]] = {"images": [], "boxes": [], "labels": [], **{k: [] for k in explainers}}
    flagged = 0
    progress = tqdm(total=len(dataset), desc=f"{cfg.model.name}/{cfg.dataset.name}", unit="img",
                    disable=not cfg.progress, mininterval=1.0)
    for batch in loader:
        batch = batch.to(device)
        inputs = bundle.normalize(batch.images)
        with torch.inference_mode():
            logits = bundle.module(inputs)
        predicted = logits.argmax(1)
        targets = batch.labels if cfg.target == "label" else predicted
        need = max(0, cfg.gallery_images - len(gallery["images"]))
        if need:
            gallery["images"] += list(batch.images[:need].cpu())
            gallery["boxes"] += [b.cpu() for b in batch.boxes[:need]]
            gallery["labels"] += batch.labels[:need].tolist()
        common = {
            "image_id": batch.image_ids, "image_index": batch.indices.cpu().numpy(),
            "model": cfg.model.name, "dataset": cfg.dataset.name, "target_rule": cfg.target,
            "target": targets.cpu().numpy(), "label": batch.labels.cpu().numpy(),
            "predicted": predicted.cpu().numpy(),
        }
        for key, explainer in explainers.items():
            heatmaps = explainer(inputs.clone(), targets)
            flags = map_flags(heatmaps)
            flagged += sum(bool(f) for f in flags)
            invalid = torch.tensor([bool(f) for f in flags])
            if need:
                gallery[key] += list(heatmaps[:need].detach().cpu())
            explained = ExplainedBatch(batch, inputs, heatmaps.detach(), targets, logits, bundle, explainer, key)
            method_options = json.dumps(explainer.options(), default=str)
            for mkey, metric in metrics[key].items():
                protocol = json.dumps(metric.protocol(), default=str)
                for score, values in metric.update(explained).items():
                    values = values.detach().float().cpu()
                    values = torch.where(invalid, torch.full_like(values, float("nan")), values)
                    info = metric.score_info(score)
                    rows.add({**common, "method": key, "metric": mkey, "score": score,
                              "value": values.numpy().astype(np.float64),
                              "category": info.category if info else metric.category,
                              "higher_is_better": info.higher_is_better if info else None,
                              "scope": "image", "flag": flags, "preset": metric.preset,
                              "protocol": protocol, "method_options": method_options})
        progress.update(len(batch))
    progress.close()

    for key, by_metric in metrics.items():
        method_options = json.dumps(explainers[key].options(), default=str)
        for mkey, metric in by_metric.items():
            for score, value in metric.compute().items():
                info = metric.score_info(score)
                rows.add({"image_id": [None], "image_index": [-1], "method": key, "model": cfg.model.name,
                          "dataset": cfg.dataset.name, "target_rule": cfg.target, "target": [-1], "label": [-1],
                          "predicted": [-1], "metric": mkey, "score": score, "value": [float(value)],
                          "category": info.category if info else metric.category,
                          "higher_is_better": info.higher_is_better if info else None, "scope": "dataset",
                          "flag": "", "preset": metric.preset, "protocol": json.dumps(metric.protocol(), default=str),
                          "method_options": method_options})
            for name, table in metric.tables().items():
                store.write_parquet(output_dir / f"{name}.parquet", table.assign(method=key) if "method" not in table else table)

    scores = rows.frame()
    store.write_parquet(output_dir / "scores.parquet", scores)
    table = store.summary_table(scores)
    store.write_text(output_dir / "summary.md", f"# {cfg.model.name} on {cfg.dataset.name}\n\n"
                     f"Mean over {len(dataset)} images (target: {cfg.target}).\n\n" + store.markdown_table(table))
    if gallery["images"]:
        from salbench.reports.gallery import save_gallery

        save_gallery(output_dir / "gallery.png", gallery, list(explainers), bundle.class_names)
    run_info["counts"] = {"images": len(dataset), "flagged_maps": flagged, "rows": len(scores)}
    run_info["outputs"] = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("."))
    print(f"\n{cfg.model.name} on {cfg.dataset.name} ({len(dataset)} images), mean per method:\n")
    print(store.markdown_table(table))
    print(f"results: {output_dir.resolve()}")
    return scores
