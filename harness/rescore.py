"""``salbench rescore RUN_DIR metric=[...]``: add metrics to a finished run from its saved maps.

A job run with ``save_maps=float32`` (or ``float16``) keeps every method's maps
(:mod:`salbench.harness.maps`). ``rescore`` scores them with more metrics without explaining
again: it runs the job loop on the run's model, dataset, target rule and seed with one
``precomputed`` method per saved method (same key, so the new rows carry the method's name and
recorded options), in a working folder ``RUN_DIR/.rescore`` (resumable: a killed rescore
continues there), then merges the new rows into the run's ``scores.parquet`` and side tables,
adds the metrics' declarations to ``run.json`` (``components``; the rescore itself under
``rescored``) and rewrites ``summary.md``. The run keeps its job id, so report and check read it
as before, with the new metrics.

Refused with a clear error: a run without saved maps, an incomplete run, a metric key the run
already has, metrics that re-run the explainers (``Needs(explainers=True)``: randomization,
sensitivity, local_lipschitz, random_logit) or time them (``Needs(costs=True)``), and overrides
of anything but the metrics, the plugins and how the loop runs (device, batch_size, num_workers,
progress, forward_chunk is the run's). With float32 maps the new scores are those a job running
the metrics from the start gives; float16 maps round each map to float16 first.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from salbench.harness import store
from salbench.harness.maps import MAPS

# top-level keys an override may set: how the loop runs, not what it computes
LOOP_KEYS = ("device", "batch_size", "num_workers", "progress")


def _compose_metrics(overrides: Sequence[str]) -> DictConfig:
    """The ``metric`` nodes the overrides select, composed as the command line composes them."""
    from hydra import compose, initialize_config_dir

    from salbench.harness.cli import config_dir
    from salbench.harness.schema import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def rescore_config(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The config of the rescore job of ``run_dir`` (module docstring)."""
    from salbench.harness.plugins import load_plugins, plugins_in_overrides

    info = _run_info(run_dir)
    config = OmegaConf.create(info["config"])
    metric_overrides = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "metric"]
    loop = [o for o in overrides if o.lstrip("+~").split("=")[0] in LOOP_KEYS]
    plugins = plugins_in_overrides(overrides)
    other = [o for o in overrides if o not in metric_overrides and o not in loop
             and not o.lstrip("+~").startswith("plugins=")]
    if other:
        raise ValueError(f"rescore adds metrics to the run as it was; it cannot change {', '.join(other)} "
                         f"(it takes metric=[...], metric.<name>.<option>=..., plugins=[...] and {', '.join(LOOP_KEYS)})")
    if not any(o.lstrip("+~").startswith("metric=") for o in metric_overrides):
        raise ValueError("rescore needs the metrics to add: metric=[name,...]")
    load_plugins([*(config.get("plugins") or []), *plugins])
    composed = _compose_metrics([*metric_overrides, *loop])
    metrics = composed.metric
    done = set(config.metric) | {key for entry in info.get("rescored", []) for key in entry.get("metrics", {})}
    again = sorted(set(metrics) & done)
    if again:
        raise ValueError(f"the run already has metric(s) {', '.join(again)}; rescore adds new ones (a finished "
                         "metric is not scored twice)")
    for key, node in metrics.items():
        needs = _needs_of(node)
        if needs.explainers:
            raise ValueError(f"metric {key!r} re-runs the explainers (Needs(explainers=True)); saved maps cannot be "
                             "recomputed on perturbed inputs or a changed model, so rescore cannot add it")
        if needs.costs:
            raise ValueError(f"metric {key!r} measures the explainers' costs (Needs(costs=True)); rescore runs none")
    methods = (info.get("components") or {}).get("methods") or {}
    saved = set((info.get("maps") or {}).get("methods") or {})
    missing = [m for m in methods if m not in saved]
    if missing:
        raise ValueError(f"{run_dir} saved no maps of method(s) {', '.join(missing)}")
    with open_dict(config):
        config.metric = metrics
        config.method = {key: {"name": "precomputed", "root": str(run_dir.resolve()), "saved_method": key,
                               "classes": None} for key in methods}
        config.plugins = sorted(set(config.get("plugins") or []) | set(plugins))
        config.save_maps = None
        config.gallery_images = 0
        config.resume = True
        for key in LOOP_KEYS:
            config[key] = composed[key]
    return config


def _needs_of(node: DictConfig) -> Any:
    """A metric's declared needs (built with its options: some depend on them)."""
    from salbench.harness.schema import options_of
    from salbench.metrics import create_metric

    return create_metric(node.name, **options_of(node)).needs


def _run_info(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a salbench job folder (no run.json)")
    info = json.loads(path.read_text())
    if info.get("status") != "completed":
        raise ValueError(f"{run_dir} holds a job that is not completed (status {info.get('status')!r}); finish it first")
    if not info.get("maps") or not (run_dir / MAPS).is_dir():
        raise ValueError(f"{run_dir} has no saved maps; run the job with save_maps=float32 to rescore it later")
    return info


def rescore(run_dir: Path, overrides: Sequence[str]) -> pd.DataFrame:
    """Add the metrics ``overrides`` select to the finished run in ``run_dir``; returns the
    new score rows."""
    from salbench.harness.runner import RESCORE_DIR, run_job

    run_dir = Path(run_dir)
    _run_info(run_dir)  # before the lock, which would create a missing folder
    with store.output_lock(run_dir):
        config = rescore_config(run_dir, overrides)
        work = run_dir / RESCORE_DIR
        new = run_job(config, work, overrides=list(overrides))
        _merge(run_dir, work, new, config, list(overrides))
        shutil.rmtree(work)
    return new


def _merge(run_dir: Path, work: Path, new: pd.DataFrame, config: DictConfig, overrides: List[str]) -> None:
    """The rescore job's rows, tables and declarations into the run (its job id kept)."""
    info = json.loads((run_dir / "run.json").read_text())
    work_info = json.loads((work / "run.json").read_text())
    identity = info["job_id"]
    options = {key: json.dumps(m["options"], default=str) for key, m in info["components"]["methods"].items()}
    new = new.assign(method_options=new["method"].map(options))  # the maps' method, not the reader
    scores = pd.concat([pd.read_parquet(run_dir / "scores.parquet"), new], ignore_index=True)[store.SCORE_COLUMNS]
    for kind in work_info.get("tables", []):
        table = pd.read_parquet(work / f"{kind}.parquet")
        if (run_dir / f"{kind}.parquet").exists():
            table = pd.concat([pd.read_parquet(run_dir / f"{kind}.parquet"), table], ignore_index=True)
        store.write_parquet(run_dir / f"{kind}.parquet", table, job_id=identity)
    store.write_parquet(run_dir / "scores.parquet", scores, job_id=identity)
    summary = (run_dir / "summary.md").read_text().split("\n\n")
    store.write_text(run_dir / "summary.md", "\n\n".join(summary[:2]) + "\n\n" + store.summary_markdown(scores))
    info["components"]["metrics"].update(work_info["components"]["metrics"])
    info["tables"] = sorted(set(info.get("tables", [])) | set(work_info.get("tables", [])))
    info.setdefault("counts", {})["rows"] = len(scores)
    info.setdefault("rescored", []).append({
        "metrics": OmegaConf.to_container(config.metric, resolve=True), "overrides": overrides,
        "maps_dtype": (info.get("maps") or {}).get("dtype"), "job_id": work_info["job_id"],
        "started": work_info.get("started"), "ended": datetime.now(timezone.utc).isoformat(),
        "versions": work_info.get("versions"), "plugins": work_info.get("plugins")})
    info["outputs"] = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    store.write_json(run_dir / "run.json", info)


def main(argv: Optional[List[str]] = None) -> int:
    """``salbench rescore RUN_DIR [overrides]``; a user error is one line and exit status 2."""
    from salbench.harness.cli import user_errors, verbose

    parser = argparse.ArgumentParser(prog="salbench rescore", description=(
        "Add metrics to a finished run from its saved maps (a job run with save_maps=float32), without "
        "explaining again. Overrides: metric=[...], metric.<name>.<option>=..., plugins=[...], "
        f"{', '.join(LOOP_KEYS)}."))
    parser.add_argument("run_dir", type=Path, help="the finished job's folder")
    parser.add_argument("overrides", nargs="*", help="e.g. metric=[rise] metric.rise.n_steps=32")
    args = parser.parse_args(argv)
    try:
        new = rescore(args.run_dir, args.overrides)
    except user_errors() as error:
        if verbose():
            raise
        print(f"salbench rescore: error: {error}", file=sys.stderr)
        return 2
    print(f"added {new['metric'].nunique()} metric(s), {len(new)} rows, to {args.run_dir}")
    return 0
