"""Load every score of any set of run or multirun directories into one tidy frame."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Union

import pandas as pd

PathLike = Union[str, Path]


def find_runs(paths: Iterable[PathLike]) -> List[Path]:
    """Job directories (holding ``scores.parquet``) under each path; a path that holds none is an error."""
    runs: List[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"results directory {path} does not exist")
        found = sorted(p.parent for p in path.rglob("scores.parquet")) if path.is_dir() else []
        if not found:
            raise ValueError(f"{path} is not a salbench results directory: no scores.parquet under it")
        runs.extend(found)
    return runs


def load(paths: Union[PathLike, Iterable[PathLike]]) -> pd.DataFrame:
    """Every score under ``paths`` (run or multirun directories) as one tidy frame, with a ``run``
    column (the job directory) and the job's ``status`` from run.json."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for run in find_runs(paths):
        frame = pd.read_parquet(run / "scores.parquet")
        info_path = run / "run.json"
        status = json.loads(info_path.read_text()).get("status") if info_path.exists() else None
        frames.append(frame.assign(run=str(run), status=status))
    return pd.concat(frames, ignore_index=True)
