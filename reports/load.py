"""Load every score of any set of run or multirun directories into one tidy frame.

A job directory holds ``scores.parquet`` (columns :data:`salbench.harness.store.SCORE_COLUMNS`), its
``run.json`` (with the components' declarations: which methods are baselines, each metric's
curve kinds), one table per kind of side output (``curves.parquet``, ``tau_curves.parquet``,
``randomization.parquet``, ``timing.parquet``: each with ``method`` and ``metric`` columns) and
``gallery.png``. :func:`load` reads the scores, :func:`load_table` one kind of side table,
:func:`components` the declarations; nothing is read from file names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import pandas as pd

from salbench.harness.store import SCORE_COLUMNS

PathLike = Union[str, Path]
# what a column holds when a run predates it
COLUMN_DEFAULTS = {"flag": "", "target_rule": None, "preset": None, "protocol": "{}", "method_options": "{}",
                   "higher_is_better": None, "category": None, "scope": "image"}


def _as_list(paths: Union[PathLike, Iterable[PathLike]]) -> List[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


class IncompleteRunsError(ValueError):
    """Some jobs under the given paths are not usable results: incomplete (interrupted or still
    running), failed, or holding the scores of an earlier config (superseded)."""


def is_evaluation_job(info: Dict) -> bool:
    """Whether a run.json is an evaluation job's (its config selects methods; an inspection's
    run.json, ``salbench inspect``, does not)."""
    return "method" in (info.get("config") or {})


def _job_dirs(path: Path) -> List[Path]:
    """Every evaluation job directory under ``path``: a folder holding ``scores.parquet`` or an
    evaluation job's ``run.json`` (a job killed before writing its scores has only the latter)."""
    if not path.is_dir():
        return []
    found = {p.parent for p in path.rglob("scores.parquet")}
    found |= {p.parent for p in path.rglob("run.json") if is_evaluation_job(run_info(p.parent))}
    # hidden folders are work in progress inside a job (salbench rescore's .rescore/)
    return sorted(f for f in found if not any(part.startswith(".") for part in f.relative_to(path).parts))


def job_problem(run: Path) -> Optional[str]:
    """Why the job in ``run`` is not a usable result (None when it is): its run.json status is not
    ``completed`` (running / interrupted, failed), it has no scores, or its ``scores.parquet``
    was written by another job than the one run.json describes (a later config started there
    and did not finish: the table is an earlier config's)."""
    from salbench.harness.store import parquet_job_id

    info = run_info(run)
    status = info.get("status")
    if status == "failed":
        return f"failed ({str(info.get('error', 'no error recorded'))[:160]})"
    if status not in (None, "completed"):
        return f"incomplete (status {status!r}: interrupted, or still running)"
    scores = Path(run) / "scores.parquet"
    if not scores.exists():
        return "incomplete (no scores.parquet)"
    if info.get("job_id"):
        try:
            written_by = parquet_job_id(scores)
        except Exception as error:
            return f"unreadable scores.parquet ({type(error).__name__})"
        if written_by != info["job_id"]:
            return f"superseded (scores.parquet of job {written_by}, run.json describes job {info['job_id']})"
    return None


def find_runs(paths: Union[PathLike, Iterable[PathLike]], allow_incomplete: bool = False) -> List[Path]:
    """The usable job directories under each path, each once, in path order. A path that holds
    no job is an error; so is a job that is incomplete, failed or superseded
    (:func:`job_problem`): an :class:`IncompleteRunsError` listing them, unless
    ``allow_incomplete``, which leaves them out (see :func:`skipped_runs`)."""
    runs: List[Path] = []
    problems: List[str] = []
    seen = set()
    for path in _as_list(paths):
        if not path.exists():
            raise FileNotFoundError(f"results directory {path} does not exist")
        found = _job_dirs(path)
        if not found:
            raise ValueError(f"{path} is not a salbench results directory: no scores.parquet under it")
        for run in found:
            if run.resolve() in seen:
                continue
            seen.add(run.resolve())
            problem = job_problem(run)
            if problem is None:
                runs.append(run)
            else:
                problems.append(f"{run}: {problem}")
    if problems and not allow_incomplete:
        raise IncompleteRunsError(f"{len(problems)} job(s) are not complete results:\n  " + "\n  ".join(problems)
                                  + "\n(re-run them to complete them, or pass --allow-incomplete to use the "
                                  "completed jobs only)")
    if not runs:
        raise IncompleteRunsError("no completed job under " + ", ".join(map(str, _as_list(paths)))
                                  + ("" if not problems else ":\n  " + "\n  ".join(problems)))
    return runs


def skipped_runs(paths: Union[PathLike, Iterable[PathLike]]) -> List[str]:
    """``"<dir>: <problem>"`` for every job under ``paths`` that :func:`find_runs` leaves out."""
    out = []
    for path in _as_list(paths):
        for run in _job_dirs(path) if path.exists() else []:
            problem = job_problem(run)
            if problem is not None:
                out.append(f"{run}: {problem}")
    return out


def run_info(run: Path) -> Dict:
    """The job's ``run.json`` (empty when absent or unreadable)."""
    try:
        return json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _declared_methods(run: Path) -> Dict[str, Dict]:
    return (run_info(run).get("components") or {}).get("methods") or {}


def is_baseline_method(name: Optional[str]) -> bool:
    """Whether the registered method ``name`` declares itself a baseline (False when unknown)."""
    from salbench.methods import METHODS

    try:
        return bool(getattr(METHODS.get(str(name)), "baseline", False))
    except KeyError:
        return False


def expected_baselines() -> List[str]:
    """The registered methods that declare themselves baselines (every table shows them)."""
    from salbench.methods import METHODS

    return [name for name in METHODS.names() if is_baseline_method(name)]


def baseline_column(frame: pd.DataFrame, run: Optional[Path] = None) -> pd.Series:
    """Per row: the method is a baseline, as the run's recorded components declare (else as its
    registered class declares; the registered name is read from ``method_options``)."""
    declared = {key: bool(info.get("baseline", False)) for key, info in _declared_methods(run).items()} if run else {}
    if "method_options" not in frame.columns:
        frame = frame.assign(method_options="{}")
    flags = {}
    for method, options in frame[["method", "method_options"]].drop_duplicates().itertuples(index=False):
        if method in declared:
            flags[method] = declared[method]
        else:
            try:
                name = json.loads(options or "{}").get("method", method)
            except ValueError:
                name = method
            flags[method] = is_baseline_method(name)
    return frame["method"].map(flags).fillna(False).astype(bool)


def load(paths: Union[PathLike, Iterable[PathLike]], allow_incomplete: bool = False) -> pd.DataFrame:
    """Every score of the completed jobs under ``paths`` (run or multirun directories) as one tidy
    frame: the columns of ``scores.parquet`` plus ``run`` (the job directory), ``status`` (from
    run.json) and ``baseline`` (the method declares itself a baseline). Incomplete, failed or
    superseded jobs are an error unless ``allow_incomplete`` (then they are left out)."""
    frames = []
    for run in find_runs(paths, allow_incomplete):
        frame = pd.read_parquet(run / "scores.parquet")
        for column, default in COLUMN_DEFAULTS.items():
            if column not in frame.columns:
                frame[column] = default
        frames.append(frame.assign(run=str(run), status=run_info(run).get("status"),
                                   baseline=baseline_column(frame, run)))
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


def table_names(run: Path) -> List[str]:
    """Kinds of side table in a job directory (``scores`` left out)."""
    return sorted({p.stem for p in Path(run).glob("*.parquet")} - {"scores"})


def load_table(paths: Union[PathLike, Iterable[PathLike]], kind: str, allow_incomplete: bool = False) -> pd.DataFrame:
    """The side table ``kind`` (``<kind>.parquet``) of every completed job under ``paths``,
    concatenated, with ``run``, ``model`` and ``dataset`` columns added where missing; an empty
    frame when no job has one. A table that another job than the run.json's wrote is ignored."""
    from salbench.harness.store import parquet_job_id

    frames = []
    for run in find_runs(paths, allow_incomplete):
        path = run / f"{kind}.parquet"
        if not path.exists():
            continue
        identity = run_info(run).get("job_id")
        if identity and parquet_job_id(path) not in (None, identity):
            continue
        frame = pd.read_parquet(path)
        for key, value in _identity(run).items():
            if key not in frame.columns:
                frame[key] = value
        frames.append(frame.assign(run=str(run)))
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    # the same rows read through two paths count once (list / array cells cannot be compared: left out)
    comparable = [c for c in table.columns if c != "run" and not table[c].map(
        lambda v: isinstance(v, (list, dict, np.ndarray))).any()]
    return table.drop_duplicates(subset=comparable, ignore_index=True)


def components(paths: Union[PathLike, Iterable[PathLike]], allow_incomplete: bool = False) -> Dict[str, Dict]:
    """The declarations the runs recorded (run.json ``components``): ``{"methods": {key: {...}},
    "metrics": {key: {...}}}``, the first run's entry where runs repeat a key."""
    merged: Dict[str, Dict] = {"methods": {}, "metrics": {}}
    for run in find_runs(paths, allow_incomplete):
        declared = run_info(run).get("components") or {}
        for kind in merged:
            for key, value in (declared.get(kind) or {}).items():
                merged[kind].setdefault(key, value)
    return merged


def galleries(paths: Union[PathLike, Iterable[PathLike]], allow_incomplete: bool = False) -> List[Dict]:
    """Every job's ``gallery.png`` with the job's model, dataset and methods."""
    out = []
    for run in find_runs(paths, allow_incomplete):
        path = run / "gallery.png"
        if path.exists():
            methods = list(dict.fromkeys(pd.read_parquet(run / "scores.parquet", columns=["method"])["method"]))
            out.append({"run": str(run), "path": path, "methods": methods, **_identity(run)})
    return out
