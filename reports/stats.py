"""Summary statistics of tidy score frames: means with seeded percentile-bootstrap intervals.

Bootstrap protocol (what :func:`bootstrap_ci` and :func:`summarize` compute, so a reader can
reproduce every interval):

* the finite, unflagged values of one cell (model, dataset, method, metric, score) are sorted by
  ``image_index`` then ``image_id`` (so methods scored on the same images draw the same resampled
  image sets: a paired bootstrap);
* ``rng = numpy.random.default_rng(seed)`` — the same seed for every cell;
* resample indices are drawn in blocks of ``block = max(1, BLOCK_ELEMENTS // n)`` rows, each
  block ``rng.integers(0, n, size=(min(block, left), n))`` (one block when ``resamples * n <=
  BLOCK_ELEMENTS``: the whole matrix in one call);
* each row's mean is one bootstrap mean; the interval is ``numpy.quantile(means, [a/2, 1-a/2])``
  with ``a = 1 - confidence`` and numpy's default linear interpolation (percentile method).

n = 0 gives NaN everywhere; n = 1 gives the value as both bounds.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import pandas as pd

BLOCK_ELEMENTS = 4_000_000
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
CELL_KEYS = ["model", "dataset", "method", "metric", "score"]


def bootstrap_means(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """values [n] (or [n, k]: one bootstrap over rows, e.g. curves) -> bootstrap means [R] ([R, k])."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // n)
    means = []
    left = resamples
    while left > 0:
        rows = min(block, left)
        index = rng.integers(0, n, size=(rows, n))
        means.append(values[index].mean(axis=1))
        left -= rows
    return np.concatenate(means, axis=0)


def bootstrap_ci(values: Sequence[float], resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` [n] (module docstring: the protocol)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low, high = np.quantile(bootstrap_means(values, resamples, seed), [alpha / 2, 1 - alpha / 2], axis=0)
    return float(low), float(high)


def _variant_labels(frame: pd.DataFrame, name: str, options: str) -> pd.Series:
    """``name`` where one set of ``options`` (JSON) goes with it, else ``name[key=value,...]`` with
    the keys whose values differ between the variants (e.g. a sweep over Grad-CAM layers)."""
    import json

    labels = frame[name].astype(str).copy()
    if options not in frame.columns:
        return labels
    for value, part in frame.groupby(name, sort=False):
        variants = part[options].fillna("{}").unique()
        if len(variants) < 2:
            continue
        parsed = {v: (json.loads(v) if v else {}) for v in variants}
        keys = sorted({k for p in parsed.values() for k in p}, key=str)
        differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in parsed.values()}) > 1]
        for variant, options_dict in parsed.items():
            suffix = ",".join(f"{k}={options_dict.get(k)}" for k in differing)
            labels[(frame[name] == value) & (frame[options].fillna("{}") == variant)] = f"{value}[{suffix}]"
    return labels


def _protocol_with_target(frame: pd.DataFrame) -> pd.Series:
    """The ``protocol`` JSON with the explained classes' rule added as ``target`` for the metrics
    that runs scored under different rules (a job run with ``target=label`` and one with
    ``target=predicted`` score different maps). A (metric, run)'s rule is the set of
    ``target_rule`` values of its image-scope rows (its dataset-level rows take the same), so a
    metric that fixes the class itself (``present``) is never split."""
    import json

    protocol = frame["protocol"].fillna("{}") if "protocol" in frame.columns else pd.Series("{}", index=frame.index)
    if "target_rule" not in frame.columns or "run" not in frame.columns:
        return protocol
    scope = frame["scope"] if "scope" in frame.columns else pd.Series("image", index=frame.index)
    rules: Dict[Tuple[str, str], str] = {}
    for (metric, run), part in frame.groupby(["metric", "run"], sort=False):
        image_rules = part.loc[scope[part.index] == "image", "target_rule"]
        chosen = image_rules if len(image_rules) else part["target_rule"]
        rules[(metric, run)] = "+".join(sorted({str(r) for r in chosen}))
    varied = {metric for metric in frame["metric"].unique()
              if len({rule for (m, _), rule in rules.items() if m == metric}) > 1}
    if not varied:
        return protocol
    merged = protocol.copy()
    for index in frame.index[frame["metric"].isin(varied)]:
        rule = rules[(frame.at[index, "metric"], frame.at[index, "run"])]
        merged[index] = json.dumps({**json.loads(protocol[index] or "{}"), "target": rule}, sort_keys=True)
    return merged


def label_variants(scores: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``method`` and ``metric`` relabelled where runs used different options of
    the same method (``method_options``) or metric (``protocol``, and the explained class's rule
    ``target_rule`` when it differs between runs), so they are never pooled."""
    scores = scores.copy()
    for (model, dataset), part in scores.groupby(["model", "dataset"], sort=False):
        index = part.index
        scores.loc[index, "method"] = _variant_labels(part, "method", "method_options").to_numpy()
        variants = part.assign(_variant=_protocol_with_target(part))
        scores.loc[index, "metric"] = _variant_labels(variants, "metric", "_variant").to_numpy()
    return scores


def _first(series: pd.Series):
    values = series.dropna()
    return values.iloc[0] if len(values) else None


def summarize(scores: pd.DataFrame, resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
              seed: int = 0) -> pd.DataFrame:
    """One row per (model, dataset, method, metric, score): ``mean``, ``ci_low``, ``ci_high``,
    ``std``, ``n`` (bootstrap units: images with a usable value; an image scored by several runs
    counts once, with the mean of its values), ``n_flagged`` (maps flagged nonfinite/constant),
    ``n_undefined`` (other NaN/inf values), ``n_images`` (distinct images, flagged included),
    ``n_runs``, plus ``category``, ``higher_is_better``, ``scope``,
    ``preset`` and ``baseline`` (the method declares itself a baseline). Flagged and non-finite values are excluded from every statistic;
    a cell with fewer than 2 units has no interval (NaN bounds).
    """
    columns = [*CELL_KEYS, "category", "higher_is_better", "scope", "preset", "baseline", "mean", "ci_low", "ci_high", "std",
               "n", "n_flagged", "n_undefined", "n_images", "n_runs"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    frame = scores.copy()
    if "flag" not in frame.columns:
        frame["flag"] = ""
    frame["flag"] = frame["flag"].fillna("").astype(str)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(np.float64)
    for key in ("image_index", "image_id"):
        if key not in frame.columns:
            frame[key] = None
    if "run" not in frame.columns:
        frame["run"] = ""
    if "baseline" not in frame.columns:
        from salbench.reports.load import baseline_column

        frame["baseline"] = baseline_column(frame)
    rows: List[Dict[str, object]] = []
    for keys, cell in frame.groupby(CELL_KEYS, sort=False, dropna=False):
        flagged = (cell["flag"] != "").to_numpy()
        finite = np.isfinite(cell["value"].to_numpy())
        used = cell[~flagged & finite]
        # one unit per image: an image scored by several runs counts once (the mean of its values);
        # rows without an image id (dataset-scope scores) are one unit per row
        per_image = used[used["image_id"].notna()].groupby(["image_index", "image_id"], sort=True, dropna=False)
        values = np.concatenate([per_image["value"].mean().to_numpy(dtype=np.float64),
                                 used.loc[used["image_id"].isna(), "value"].to_numpy(dtype=np.float64)])
        # a single unit (e.g. one run's dataset-level score) has no interval
        low, high = bootstrap_ci(values, resamples, confidence, seed) if len(values) > 1 else (np.nan, np.nan)
        images = cell["image_id"].dropna()
        rows.append({
            **dict(zip(CELL_KEYS, keys)),
            "category": _first(cell["category"]) if "category" in cell else None,
            "higher_is_better": _first(cell["higher_is_better"]) if "higher_is_better" in cell else None,
            "scope": _first(cell["scope"]) if "scope" in cell else "image",
            "preset": _first(cell["preset"]) if "preset" in cell else None,
            "baseline": bool(cell["baseline"].any()),
            "mean": float(values.mean()) if len(values) else float("nan"),
            "ci_low": low, "ci_high": high,
            "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "n": int(len(values)), "n_flagged": int(flagged.sum()),
            "n_undefined": int((~flagged & ~finite).sum()),
            "n_images": int(images.nunique()) if len(images) else int(len(cell)),
            "n_runs": int(cell["run"].nunique()),
        })
    return pd.DataFrame(rows, columns=columns)


def fill_intervals(summary: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``ci_low`` / ``ci_high`` taken from ``intervals`` (rows keyed like the
    summary's cells, e.g. the dataset-level scores' intervals that
    :func:`salbench.metrics.wsoleval.dataset_intervals` resamples from the per-image table)
    where a cell has none (``n`` stays the number of runs)."""
    if summary.empty or intervals is None or intervals.empty:
        return summary
    keys = [k for k in CELL_KEYS if k in intervals.columns]
    merged = summary.merge(intervals[keys + ["ci_low", "ci_high"]].drop_duplicates(keys), on=keys, how="left",
                           suffixes=("", "_boot"))
    missing = merged["ci_low"].isna() & merged["ci_low_boot"].notna()
    for column in ("ci_low", "ci_high"):
        merged.loc[missing, column] = merged.loc[missing, f"{column}_boot"]
    return merged.drop(columns=["ci_low_boot", "ci_high_boot"])[summary.columns]


def curve_bands(curves: pd.DataFrame, resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                seed: int = 0, keys: Iterable[str] = ("model", "dataset", "method", "curve")) -> pd.DataFrame:
    """Mean curve and pointwise percentile-bootstrap band over images, per ``keys``.

    curves: tidy rows (image_id, ..., step, fraction, value). Images with any non-finite point
    are dropped from their curve. Returns keys + step, fraction, mean, ci_low, ci_high, n.
    """
    keys = [k for k in keys if k in curves.columns]
    out = []
    alpha = 1.0 - confidence
    for group_keys, part in curves.groupby(keys, sort=False):
        group_keys = group_keys if isinstance(group_keys, tuple) else (group_keys,)
        wide = part.pivot_table(index="image_id", columns="step", values="value", aggfunc="mean", sort=True)
        wide = wide[np.isfinite(wide.to_numpy()).all(axis=1)]
        fraction = part.groupby("step")["fraction"].first().reindex(wide.columns)
        if wide.empty:
            continue
        matrix = wide.to_numpy()
        means = bootstrap_means(matrix, resamples, seed)
        low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
        frame = pd.DataFrame({"step": wide.columns.to_numpy(), "fraction": fraction.to_numpy(),
                              "mean": matrix.mean(axis=0), "ci_low": low, "ci_high": high, "n": len(matrix)})
        for key, value in zip(keys, group_keys):
            frame[key] = value
        out.append(frame[[*keys, "step", "fraction", "mean", "ci_low", "ci_high", "n"]])
    if not out:
        return pd.DataFrame(columns=[*keys, "step", "fraction", "mean", "ci_low", "ci_high", "n"])
    return pd.concat(out, ignore_index=True)
