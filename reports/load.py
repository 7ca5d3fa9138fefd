"""Load every score of any set of run or multirun directories into one tidy frame.

A job directory holds ``scores.parquet`` (columns :data:`salbench.store.SCORE_COLUMNS`), its
``run.json`` and, beside them, optional tables written by metrics (``curves.parquet``: deletion /
insertion curves; ``randomization.parquet``: the sanity check; a localization threshold sweep)
and ``gallery.png``. :func:`load` reads the scores, :func:`load_table` one named side table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import pandas as pd

from salbench.store import SCORE_COLUMNS

PathLike = Union[str, Path]
# what a column holds when a run predates it
COLUMN_DEFAULTS = {"flag": "", "target_rule": None, "preset": None, "protocol": "{}", "method_options": "{}",
                   "higher_is_better": None, "category": None, "scope": "image"}


def _as_list(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def find_runs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    """Job directories (holding ``scores.parquet``) under each path, each once, in path order; a
    path that holds none is an error."""
    runs: List[Path] = []
    seen = set()
    for path in _as_list(paths):
        if not path.exists():
            raise FileNotFoundError(f"results directory {path} does not exist")
        found = sorted(p.parent for p in path.rglob("scores.parquet")) if path.is_dir() else []
        if not found:
            raise ValueError(f"{path} is not a salbench results directory: no scores.parquet under it")
        for run in found:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def run_info(run: Path) -> Dict:
    """The job's ``run.json`` (empty when absent or unreadable)."""
    try:
        return json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def load(paths: Union[PathLike, Iterable[PathLike]]) -> pd.DataFrame:
    """Every score under ``paths`` (run or multirun directories) as one tidy frame: the columns of
    ``scores.parquet`` plus ``run`` (the job directory) and ``status`` (from run.json)."""
    frames = []
    for run in find_runs(paths):
        frame = pd.read_parquet(run / "scores.parquet")
        for column, default in COLUMN_DEFAULTS.items():
            if column not in frame.columns:
                frame[column] = default
        frames.append(frame.assign(run=str(run), status=run_info(run).get("status")))
    scores = pd.concat(frames, ignore_index=True)
    scores["flag"] = scores["flag"].fillna("").astype(str)
    ordered = [c for c in SCORE_COLUMNS if c in scores.columns]
    return scores[ordered + [c for c in scores.columns if c not in ordered]]


def _identity(run: Path) -> Dict[str, Optional[str]]:
    """(model, dataset) of a job: from run.json's config, else its scores."""
    config = run_info(run).get("config", {})
    model = (config.get("model") or {}).get("name")
    dataset = (config.get("dataset") or {}).get("name")
    if model is None or dataset is None:
        scores = pd.read_parquet(run / "scores.parquet", columns=["model", "dataset"])
        if len(scores):
            model, dataset = model or scores["model"].iloc[0], dataset or scores["dataset"].iloc[0]
    return {"model": model, "dataset": dataset}


def table_files(run: Path, name: str) -> List[Path]:
    """The job's files of side table ``name``: ``<name>.parquet`` and the runner's per-method,
    per-metric ``<name>-<method>-<metric>.parquet``."""
    run = Path(run)
    single = [run / f"{name}.parquet"] if (run / f"{name}.parquet").exists() else []
    return single + sorted(run.glob(f"{name}-*.parquet"))


def table_names(run: Path) -> List[str]:
    """Names of the side tables in a job directory (``scores`` left out)."""
    names = {p.stem.split("-", 1)[0] for p in Path(run).glob("*.parquet")}
    return sorted(names - {"scores"})


def load_table(paths: Union[PathLike, Iterable[PathLike]], name: str) -> pd.DataFrame:
    """The side table ``name`` of every job under ``paths``, concatenated, with ``run``, ``model``
    and ``dataset`` columns added where missing (and ``method``, ``metric`` taken from a
    ``<name>-<method>-<metric>.parquet`` file name); an empty frame when no job has one."""
    frames = []
    for run in find_runs(paths):
        files = table_files(run, name)
        identity = _identity(run) if files else {}
        for path in files:
            frame = pd.read_parquet(path)
            extra = dict(identity)
            if path.stem != name:
                method, _, metric = path.stem[len(name) + 1:].rpartition("-")
                extra.update({"method": method or metric, "metric": metric} if method else {"method": metric})
            for key, value in extra.items():
                if key not in frame.columns:
                    frame[key] = value
            frames.append(frame.assign(run=str(run)))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table.drop_duplicates(subset=[c for c in table.columns if c != "run"], ignore_index=True)


def galleries(paths: Union[PathLike, Iterable[PathLike]]) -> List[Dict]:
    """Every job's ``gallery.png`` with the job's model, dataset and methods."""
    out = []
    for run in find_runs(paths):
        path = run / "gallery.png"
        if path.exists():
            methods = list(dict.fromkeys(pd.read_parquet(run / "scores.parquet", columns=["method"])["method"]))
            out.append({"run": str(run), "path": path, "methods": methods, **_identity(run)})
    return out
