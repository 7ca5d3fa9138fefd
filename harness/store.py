"""Results on disk: atomic writes of tidy tables and JSON, run metadata, summary tables.

Every file is written to a temporary file in the same folder and renamed into place, so a
reader (or a resumed sweep) never sees half a file.
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


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


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
