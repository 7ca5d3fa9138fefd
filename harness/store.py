"""Results on disk: atomic writes of tidy tables and JSON, the output-folder lock, run metadata,
plain-data state for checkpoints, summary tables.

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``) and renamed
into place, so a reader (or a resumed sweep) never sees half a file; the temporaries a killed
write leaves are removed by the next run in that folder (:func:`remove_temporaries`). One run at a
time writes into a folder (:func:`output_lock`).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pandas as pd

SCORE_COLUMNS = [
    "image_id", "image_index", "method", "model", "dataset", "target_rule", "target", "label",
    "predicted", "metric", "score", "value", "category", "higher_is_better", "scope", "flag",
    "preset", "protocol", "method_options",
]

PACKAGES = ["salbench", "torch", "torchvision", "captum", "hydra-core", "omegaconf", "numpy", "pandas",
            "scipy", "scikit-image", "opencv-python-headless", "grad-cam", "quantus"]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OutputLocked(RuntimeError):
    """Another salbench run holds the output folder's lock."""


LOCK_FILE = ".salbench.lock"


@contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold the lock of output folder ``folder`` for the block: one salbench run writes into a
    folder at a time. A second run raises :class:`OutputLocked` at once, naming the owner (pid,
    host, start time) and changing nothing. The lock is an ``fcntl.flock`` on ``.salbench.lock``,
    which the operating system releases when its process ends however it ends: a lock file left
    by a killed run is stale and is simply taken over (its owner line is rewritten)."""
    import fcntl
    import socket
    from datetime import datetime, timezone

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(handle, 4096).decode(errors="replace").strip() or "an unknown process"
        os.close(handle)
        raise OutputLocked(f"{folder} is in use by another salbench run ({owner}); wait for it to finish or "
                           "choose another output directory (hydra.run.dir=...)") from None
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on {socket.gethostname()}, since "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n".encode())
        yield path
    finally:
        os.ftruncate(handle, 0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def remove_temporaries(folder: Path) -> List[Path]:
    """Delete the temporaries that killed atomic writes left in ``folder``, its ``parts/`` and
    under its ``maps/`` (``.NAME.XXXX.tmp``); call it while holding :func:`output_lock`.
    Returns what was removed."""
    removed = []
    found = [p for d in (Path(folder), Path(folder) / "parts") if d.is_dir() for p in d.glob(".*.tmp")]
    if (Path(folder) / "maps").is_dir():
        found += list((Path(folder) / "maps").rglob(".*.tmp"))
    for path in found:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame, job_id: Optional[str] = None) -> None:
    """``frame`` as parquet; ``job_id`` is stored in the file's metadata (:func:`parquet_job_id`),
    so a reader can tell a job's table from one an earlier job left in the same folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if job_id is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"salbench_job_id": job_id.encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def parquet_job_id(path: Path) -> Optional[str]:
    """The job id stored in a parquet file's metadata by :func:`write_parquet` (None if absent)."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(b"salbench_job_id")
    return value.decode() if value is not None else None


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def package_versions(names: Sequence[str] = PACKAGES) -> Dict[str, Optional[str]]:
    versions: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(start: Path) -> Optional[str]:
    """The project's git commit (with ``-dirty`` when the tree has changes), or None."""
    try:
        commit = subprocess.run(["git", "-C", str(start), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(start), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: Any) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"device": str(device), "cuda_available": torch.cuda.is_available(),
                            "torch_cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
                            "num_threads": torch.get_num_threads(),
                            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                            "cudnn_benchmark": torch.backends.cudnn.benchmark,
                            "cudnn_deterministic": torch.backends.cudnn.deterministic}
    if str(device).startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index included)."""
    frame = frame.reset_index()
    header = [str(c) for c in frame.columns]
    rows: List[List[str]] = []
    for record in frame.itertuples(index=False):
        rows.append([floatfmt.format(v) if isinstance(v, float) else str(v) for v in record])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)]) + "\n"


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean of every (metric, score) per method: rows = methods, columns = ``metric/score``."""
    if scores.empty:
        return pd.DataFrame()
    frame = scores.assign(column=scores["metric"] + "/" + scores["score"])
    table = frame.pivot_table(index="method", columns="column", values="value", aggfunc="mean", sort=False)
    table.columns.name = None
    return table


def summary_markdown(scores: pd.DataFrame, max_columns: int = 5) -> str:
    """The mean per method of every score as Markdown, one table per category (per-image scores
    first, then dataset-level ones), at most ``max_columns`` score columns per table, so a job
    with many scores stays readable on a terminal."""
    if scores.empty:
        return "(no scores)\n"
    parts = []
    category = scores["category"].fillna("other")
    for scope in ("image", "dataset"):
        for name in dict.fromkeys(category[scores["scope"] == scope]):
            part = scores[(category == name) & (scores["scope"] == scope)]
            table = summary_table(part)
            for start in range(0, len(table.columns), max_columns):
                chunk = table.iloc[:, start:start + max_columns]
                title = f"{name}{' (dataset level)' if scope == 'dataset' else ''}"
                parts.append(f"**{title}**\n\n" + markdown_table(chunk))
    return "\n".join(parts)


# --------------------------------------------------------------------------- plain state
PLAIN_SCALARS = (str, int, float, bool, type(None))


def to_plain(value: Any) -> Any:
    """``value`` as tensors and plain data only, loadable by ``torch.load(weights_only=True)``:
    dicts, lists, tuples, scalars and tensors pass; numpy arrays and scalars, pandas frames and
    the objects of salbench's own classes (e.g. a metric's accumulators) are tagged dicts that
    :func:`from_plain` turns back. Anything else is a TypeError naming its type."""
    import numpy as np
    import torch

    if isinstance(value, np.generic):  # before the scalars: numpy.float64 is a float subclass
        return value.item()
    if type(value) in PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return value
    for plain in (bool, int, float, str):  # a subclass of a plain scalar (e.g. an IntEnum)
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, pd.DataFrame):
        return {"__frame__": {"columns": [str(c) for c in value.columns],
                              "data": {str(c): to_plain(value[c].tolist()) for c in value.columns}}}
    if isinstance(value, dict):
        if any(not isinstance(k, (str, int)) for k in value):
            raise TypeError(f"cannot store a dict with keys of type {sorted({type(k).__name__ for k in value})}")
        return {"__dict__": [[k, to_plain(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [to_plain(v) for v in value]}
    module = type(value).__module__
    if _rebuildable(module) and hasattr(value, "__dict__"):
        return {"__object__": f"{module}:{type(value).__qualname__}", "state": to_plain(vars(value))}
    raise TypeError(f"cannot store a {type(value).__module__}.{type(value).__name__} in a checkpoint")


def _rebuildable(module: str) -> bool:
    """Classes a checkpoint may hold objects of: salbench's own, and those of loaded plugins
    (:func:`salbench.harness.plugins.is_plugin_module`: a plugin module, a module inside a
    plugin package, or a module that registered a component)."""
    from salbench.harness.plugins import is_plugin_module

    return module.startswith("salbench.") or is_plugin_module(module)


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain`. Objects are rebuilt only for salbench's own classes and
    those of loaded plugins (already imported: a checkpoint never imports a module)."""
    import importlib

    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        return value["__ndarray__"].numpy()
    if "__frame__" in value:
        frame = value["__frame__"]
        return pd.DataFrame({c: frame["data"][c] for c in frame["columns"]}, columns=frame["columns"])
    if "__dict__" in value:
        return {k: from_plain(v) for k, v in value["__dict__"]}
    if "__tuple__" in value:
        return tuple(from_plain(v) for v in value["__tuple__"])
    if "__object__" in value:
        import sys

        module, name = value["__object__"].split(":")
        if module.startswith("salbench."):
            cls = importlib.import_module(module)
        elif _rebuildable(module) and module in sys.modules:
            cls = sys.modules[module]
        else:
            raise ValueError(f"refusing to rebuild {value['__object__']}: not a salbench class nor one of a loaded "
                             "plugin (load the plugin that wrote this checkpoint: plugins=[...])")
        for part in name.split("."):
            cls = getattr(cls, part)
        if not isinstance(cls, type) or cls.__module__ != module:
            raise ValueError(f"refusing to rebuild {value['__object__']}: not a class of {module}")
        obj = cls.__new__(cls)
        obj.__dict__.update(from_plain(value["state"]))
        return obj
    return {k: from_plain(v) for k, v in value.items()}
