"""``salbench check RESULTS --baseline FILE [--update]``: a regression gate for explainer scores.

A baseline file (YAML, or JSON when its name ends in ``.json``) lists entries::

    entries:
      - model: synthetic_cnn
        dataset: synthetic
        method: gradcam
        metric: cam_paper
        score: gt_known_loc
        value: 0.62          # the accepted score
        tolerance: 0.05      # absolute; a change within it is OK
        direction: higher    # higher | lower is better (default: the score's higher_is_better)
        images: 64           # images scored (per-image scores) when the baseline was taken
        protocol: {threshold: 0.2, ...}       # the metric's protocol then (every choice)
        method_options: {layer: features, ...}  # the method's options then

The current value of an entry is the mean over images of its ``scope == "image"`` rows (NaN
values skipped, as in the summary tables; the count of NaN images is shown) or the value of its
``scope == "dataset"`` row, over every run under RESULTS (a run or multirun directory; shards of
one dataset merge). Status per entry: OK (within tolerance), IMPROVED, REGRESSED (worse by more
than the tolerance, or the current value is NaN), MISSING (no current rows) or CHANGED (the
metric's protocol, the method's options or the number of images differ from the baseline's: the
numbers are not comparable; ``--allow-protocol-change`` compares them anyway, and says so). Exit
status: 0 when nothing regressed, is missing or changed, 1 otherwise, 2 for unusable input (no
results, an incomplete / failed / superseded job, a malformed baseline). ``--update`` writes the baseline from the current values (atomic write): entries
already in the file keep their tolerance and direction, new ones get ``--tolerance``.

Paired gate (``--paired``): ``--update`` also writes the baseline's per-image scores next to it
(:func:`companion_path`: ``<baseline>.scores.parquet``); ``--paired`` pairs every image-scope
entry's current per-image values with those (by image id and class), and an entry also
REGRESSES when the paired drop is significant: the one-sided Wilcoxon signed-rank test of the
oriented differences (scipy; differences within ``--paired-atol`` count as zero, so a GPU
rerun's rounding is no drop) has a p-value, corrected over the paired entries (Holm by default),
below ``--alpha`` (0.01) AND the matched-pairs rank-biserial correlation is at most
``-min_effect`` (0.3); a significant gain of that size makes it IMPROVED. The absolute tolerance
still applies; dataset-level entries are compared by it alone. ``--junit FILE`` writes the
entries as JUnit XML test cases (one per entry; REGRESSED / MISSING / CHANGED are failures).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import pandas as pd

from salbench.harness import store

KEY = ["model", "dataset", "method", "metric", "score"]
DIRECTIONS = ("higher", "lower")
STATUSES = ("OK", "IMPROVED", "REGRESSED", "MISSING", "CHANGED")
RECORDED = ("images", "protocol", "method_options")  # what a baseline entry pins beside the value
DEFAULT_TOLERANCE = 0.02
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_EFFECT = 0.3
DEFAULT_PAIRED_ATOL = 1e-5
PER_IMAGE_COLUMNS = KEY + ["image_id", "target", "value"]


class BaselineError(ValueError):
    """A baseline file that cannot be used (unreadable, malformed entry)."""


# --------------------------------------------------------------------------- aggregation
def aggregate(scores: pd.DataFrame) -> pd.DataFrame:
    """Tidy scores (``scores.parquet`` rows of one or more runs) -> one row per
    (model, dataset, method, metric, score) with ``value`` (mean over images, NaN skipped; or the
    dataset-level value), ``images`` (images scored), ``nan`` (images whose value is NaN),
    ``higher_is_better``, ``scope``, ``protocol`` and ``method_options`` (parsed JSON).

    The same image scored twice for one key (two runs of the same cell, e.g. a sweep over a
    method's options under one method name), or one key under two protocols, is ambiguous and
    raises ``ValueError``.
    """
    missing = set(KEY + ["value", "scope"]) - set(scores.columns)
    if missing:
        raise ValueError(f"scores lack the columns {sorted(missing)}")
    rows: List[Dict[str, Any]] = []
    per_image = scores[scores["scope"] == "image"]
    if len(per_image):
        # one row per image, or per (image, class) pair for metrics scoring every class present
        repeated = per_image.duplicated(KEY + ["image_id"] + (["target"] if "target" in per_image else []))
        if repeated.any():
            first = per_image[repeated].iloc[0]
            raise ValueError(
                f"image {first['image_id']!r} is scored more than once for "
                f"{'/'.join(str(first[k]) for k in KEY)} (several runs of the same cell under RESULTS?); "
                "check one run, or runs that split the dataset into shards"
            )
        for key, group in per_image.groupby(KEY, sort=False):
            values = group["value"].astype(float)
            rows.append({**dict(zip(KEY, key)), "value": values.mean(), "images": int(len(values)),
                         "nan": int(values.isna().sum()), "higher_is_better": _first_bool(group),
                         "scope": "image", **_recorded(group, key)})
    per_dataset = scores[scores["scope"] == "dataset"]
    for key, group in per_dataset.groupby(KEY, sort=False):
        if len(group) > 1:
            raise ValueError(
                f"{len(group)} dataset-level values for {'/'.join(map(str, key))} (several runs or shards); "
                "a dataset-level score of shards needs the merged run: check one run"
            )
        value = float(group["value"].iloc[0])
        same_cell = per_image[(per_image[KEY[:4]] == pd.Series(dict(zip(KEY[:4], key[:4])))).all(axis=1)]
        images = int(same_cell["image_id"].nunique()) if len(same_cell) else None
        rows.append({**dict(zip(KEY, key)), "value": value, "images": images, "nan": int(math.isnan(value)),
                     "higher_is_better": _first_bool(group), "scope": "dataset", **_recorded(group, key)})
    return pd.DataFrame(rows, columns=KEY + ["value", "images", "nan", "higher_is_better", "scope", "protocol",
                                             "method_options"])


def _recorded(group: pd.DataFrame, key: Sequence[Any]) -> Dict[str, Any]:
    """The protocol and method options of one key's rows (parsed); two of either is ambiguous."""
    out = {}
    for column in ("protocol", "method_options"):
        values = group[column].dropna().unique() if column in group else []
        if len(values) > 1:
            raise ValueError(f"{'/'.join(map(str, key))} was scored with {len(values)} different {column} values "
                             "(runs of different configs under RESULTS); check them apart")
        out[column] = json.loads(values[0]) if len(values) else None
    return out


def _first_bool(group: pd.DataFrame) -> Optional[bool]:
    if "higher_is_better" not in group:
        return None
    values = group["higher_is_better"].dropna()
    return bool(values.iloc[0]) if len(values) else None


def select(frame: pd.DataFrame, **patterns: Optional[Sequence[str]]) -> pd.DataFrame:
    """Rows whose columns match any of the glob ``patterns[column]`` (None: no filter)."""
    keep = pd.Series(True, index=frame.index)
    for column, globs in patterns.items():
        if globs:
            keep &= frame[column].astype(str).map(lambda v: any(fnmatch.fnmatchcase(v, g) for g in globs))
    return frame[keep]


# --------------------------------------------------------------------------- baseline file
def _entry(raw: Any, where: str) -> Dict[str, Any]:
    if not isinstance(raw, dict):
        raise BaselineError(f"{where}: an entry must be a mapping; got {raw!r}")
    absent = [k for k in KEY + ["value"] if raw.get(k) is None]
    if absent:
        raise BaselineError(f"{where}: entry {raw} lacks {', '.join(absent)} (need {', '.join(KEY)}, value)")
    unknown = sorted(set(raw) - set(KEY) - {"value", "tolerance", "direction", *RECORDED})
    if unknown:
        raise BaselineError(f"{where}: entry {raw} has unknown keys {unknown}; valid: "
                            f"{', '.join(KEY)}, value, tolerance, direction, {', '.join(RECORDED)}")
    entry = {k: str(raw[k]) for k in KEY}
    try:
        entry["value"] = float(raw["value"])
        entry["tolerance"] = float(raw.get("tolerance", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise BaselineError(f"{where}: value and tolerance must be numbers in {raw}") from None
    if entry["tolerance"] < 0:
        raise BaselineError(f"{where}: tolerance must be >= 0 in {raw}")
    direction = raw.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise BaselineError(f"{where}: direction must be one of {DIRECTIONS}; got {direction!r}")
    entry["direction"] = direction
    for name in RECORDED:
        entry[name] = raw.get(name)
    return entry


def read_baseline(path: Path) -> List[Dict[str, Any]]:
    """Entries of a baseline file (YAML or JSON: ``{entries: [...]}`` or a bare list)."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline file {path} does not exist (write one with --update)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            payload = json.loads(text) if text.strip() else None
        else:
            import yaml

            payload = yaml.safe_load(text)
    except Exception as error:  # json.JSONDecodeError / yaml.YAMLError
        raise BaselineError(f"baseline file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if payload is None:
        return []
    entries = payload.get("entries") if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise BaselineError(f"baseline file {path}: expected a list of entries or a mapping with 'entries'")
    parsed = [_entry(raw, f"{path} entry {i}") for i, raw in enumerate(entries)]
    keys = [tuple(e[k] for k in KEY) for e in parsed]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise BaselineError(f"baseline file {path}: entry {'/'.join(twice)} appears more than once")
    return parsed


def write_baseline(path: Path, entries: Iterable[Dict[str, Any]]) -> None:
    """Write ``entries`` atomically as YAML (JSON when ``path`` ends in ``.json``)."""
    path = Path(path)
    clean = []
    for e in entries:
        item = {k: e[k] for k in KEY}
        # full precision (YAML and JSON write a float's shortest round-trip form): a value rounded to
        # 6 decimals made `--tolerance 0` fail a run against its own baseline
        item.update(value=float(e["value"]), tolerance=float(e["tolerance"]))
        if e.get("direction"):
            item["direction"] = e["direction"]
        for name in RECORDED:
            if e.get(name) is not None:
                item[name] = int(e[name]) if name == "images" else e[name]
        clean.append(item)
    if path.suffix.lower() == ".json":
        store.write_text(path, json.dumps({"entries": clean}, indent=2) + "\n")
        return
    import yaml

    header = ("# salbench regression baseline: `salbench check RESULTS --baseline THIS_FILE`\n"
              "# value: accepted score; tolerance: allowed absolute change; direction: higher | lower is better\n")
    store.write_text(path, header + yaml.safe_dump({"entries": clean}, sort_keys=False))


# --------------------------------------------------------------------------- comparison
def changes(entry: Dict[str, Any], found: Any) -> List[str]:
    """What differs between a baseline entry's recorded protocol, method options and image count
    and the current rows' (a name per difference, e.g. ``protocol.threshold 0.2 -> 0.5``); an
    entry that recorded nothing (an older baseline) has no differences."""
    out = []
    if entry.get("images") is not None and found["images"] is not None and int(entry["images"]) != int(found["images"]):
        out.append(f"images {int(entry['images'])} -> {int(found['images'])}")
    for name in ("protocol", "method_options"):
        old, new = entry.get(name), found[name]
        if old is None or new is None or old == new:
            continue
        keys = sorted(set(old) | set(new), key=str)
        out += [f"{name}.{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return out


def compare(current: pd.DataFrame, entries: Sequence[Dict[str, Any]], allow_protocol_change: bool = False) -> pd.DataFrame:
    """Baseline ``entries`` against ``current`` (from :func:`aggregate`) -> one row per entry:
    the key, ``baseline``, ``current``, ``delta`` (current - baseline), ``tolerance``,
    ``direction``, ``images``, ``nan``, ``changed`` (:func:`changes`) and ``status`` (OK /
    IMPROVED / REGRESSED / MISSING / CHANGED; CHANGED when the protocol, method options or image
    count differ, unless ``allow_protocol_change``)."""
    index = {tuple(str(v) for v in row[KEY]): row for _, row in current.iterrows()}
    rows = []
    for entry in entries:
        key = tuple(entry[k] for k in KEY)
        found = index.get(key)
        direction = entry.get("direction")
        if direction is None and found is not None and found["higher_is_better"] is not None:
            direction = "higher" if found["higher_is_better"] else "lower"
        direction = direction or "higher"
        row = {**dict(zip(KEY, key)), "baseline": entry["value"], "tolerance": entry["tolerance"],
               "direction": direction, "current": float("nan"), "delta": float("nan"), "images": None, "nan": None,
               "changed": ""}
        if found is None:
            row["status"] = "MISSING"
        else:
            row["changed"] = "; ".join(changes(entry, found))
            value = float(found["value"])
            row.update(current=value, delta=value - entry["value"], images=found["images"], nan=found["nan"])
            gain = row["delta"] if direction == "higher" else -row["delta"]
            if math.isnan(value):
                row["status"] = "REGRESSED"
            elif gain < -entry["tolerance"] - 1e-12:
                row["status"] = "REGRESSED"
            elif gain > entry["tolerance"] + 1e-12:
                row["status"] = "IMPROVED"
            else:
                row["status"] = "OK"
            if row["changed"] and not allow_protocol_change:
                row["status"] = "CHANGED"
        rows.append(row)
    columns = KEY + ["baseline", "current", "delta", "tolerance", "direction", "images", "nan", "changed", "status"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- paired gate
def companion_path(baseline: Path) -> Path:
    """Where a baseline keeps its per-image scores: ``<baseline>.scores.parquet`` beside it."""
    baseline = Path(baseline)
    return baseline.with_name(baseline.name + ".scores.parquet")


def per_image(scores: pd.DataFrame) -> pd.DataFrame:
    """The image-scope rows of tidy scores as :data:`PER_IMAGE_COLUMNS` (``target`` -1 when
    the scores have no such column; flagged rows keep their NaN)."""
    rows = scores[scores["scope"] == "image"] if "scope" in scores.columns else scores
    rows = rows.assign(target=rows["target"] if "target" in rows.columns else -1)
    rows = rows[PER_IMAGE_COLUMNS].copy()
    for column in KEY + ["image_id"]:
        rows[column] = rows[column].astype(str)
    rows["target"] = pd.to_numeric(rows["target"], errors="coerce").fillna(-1).astype("int64")
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce").astype("float64")
    return rows.reset_index(drop=True)


def write_companion(baseline: Path, scores: pd.DataFrame, entries: Sequence[Dict[str, Any]],
                    kept: Optional[pd.DataFrame] = None) -> Path:
    """Write the per-image scores of ``entries`` (from ``scores``; an entry with no current rows
    keeps its rows of ``kept``, the previous companion) next to the baseline."""
    wanted = {tuple(e[k] for k in KEY) for e in entries}
    rows = per_image(scores)
    keys = pd.Series(list(zip(*(rows[k] for k in KEY))), index=rows.index, dtype=object) if len(rows) else pd.Series(
        [], dtype=object)
    chosen = rows[keys.isin(wanted)] if len(rows) else rows
    if kept is not None and len(kept):
        have = set(zip(*(chosen[k] for k in KEY))) if len(chosen) else set()
        old_keys = pd.Series(list(zip(*(kept[k] for k in KEY))), index=kept.index, dtype=object)
        chosen = pd.concat([chosen, kept[old_keys.isin(wanted - have)]], ignore_index=True)
    path = companion_path(baseline)
    store.write_parquet(path, chosen[PER_IMAGE_COLUMNS])
    return path


def read_companion(baseline: Path) -> pd.DataFrame:
    path = companion_path(baseline)
    if not path.is_file():
        raise BaselineError(f"--paired needs the baseline's per-image scores {path}; write them with "
                            f"`salbench check RESULTS --baseline {baseline} --update`")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:
        raise BaselineError(f"{path} is not readable ({type(error).__name__}: {error})") from None
    missing = set(PER_IMAGE_COLUMNS) - set(frame.columns)
    if missing:
        raise BaselineError(f"{path} lacks the columns {sorted(missing)}")
    return per_image(frame.assign(scope="image"))


def paired_tests(current: pd.DataFrame, baseline: pd.DataFrame, diff: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA,
                 min_effect: float = DEFAULT_MIN_EFFECT, atol: float = DEFAULT_PAIRED_ATOL,
                 correction: str = "holm") -> pd.DataFrame:
    """``diff`` (from :func:`compare`) with the paired test of every entry that has per-image
    values on both sides (``current``, ``baseline``: :func:`per_image` frames): ``paired_n``
    (images paired by id and class, both values finite), ``p_worse`` / ``p_better`` (one-sided
    Wilcoxon signed-rank of the oriented differences current - baseline, ties within ``atol``
    counted as zero), their ``correction`` over the tested entries, ``effect`` (matched-pairs
    rank-biserial of the oriented differences: -1 = every differing image worse) and the status
    updated: REGRESSED when the absolute rule says so or the corrected ``p_worse < alpha`` and
    ``effect <= -min_effect``; IMPROVED when not regressed and the absolute rule or the mirrored
    test says so; MISSING and CHANGED stay."""
    from salbench.reports.compare import adjust, rank_biserial, signed_rank_test, ties_to_zero

    out = diff.copy()
    for column in ("paired_n", "p_worse", "p_better", "effect"):
        out[column] = float("nan")
    out["paired"] = ""
    index_current = {key: part for key, part in current.groupby(KEY, sort=False)} if len(current) else {}
    index_base = {key: part for key, part in baseline.groupby(KEY, sort=False)} if len(baseline) else {}
    tested = []
    for i, row in out.iterrows():
        key = tuple(str(row[k]) for k in KEY)
        if row["status"] == "MISSING":
            continue
        now, then = index_current.get(key), index_base.get(key)
        if now is None or then is None:
            out.at[i, "paired"] = ("no per-image baseline: absolute tolerance only" if now is not None
                                   else "dataset-level: absolute tolerance only")
            continue
        pairs = now.merge(then, on=["image_id", "target"], suffixes=("_now", "_then"))
        pairs = pairs[np_isfinite(pairs["value_now"]) & np_isfinite(pairs["value_then"])]
        sign = 1.0 if row["direction"] == "higher" else -1.0
        gains = ties_to_zero(sign * (pairs["value_now"] - pairs["value_then"]).to_numpy(dtype="float64"), atol)
        out.at[i, "paired_n"] = len(gains)
        if len(gains) == 0:
            out.at[i, "paired"] = "no common images: absolute tolerance only"
            continue
        out.at[i, "p_worse"] = signed_rank_test(gains, "wilcox", "less")[1]
        out.at[i, "p_better"] = signed_rank_test(gains, "wilcox", "greater")[1]
        out.at[i, "effect"] = rank_biserial(gains)
        tested.append(i)
    if tested:
        out.loc[tested, "p_worse"] = adjust(out.loc[tested, "p_worse"].to_numpy(dtype=float), correction)
        out.loc[tested, "p_better"] = adjust(out.loc[tested, "p_better"].to_numpy(dtype=float), correction)
    for i in tested:
        row = out.loc[i]
        worse = row["p_worse"] < alpha and row["effect"] <= -min_effect
        better = row["p_better"] < alpha and row["effect"] >= min_effect
        out.at[i, "paired"] = ("significant drop" if worse else "significant gain" if better else "no significant change")
        if row["status"] == "CHANGED":
            continue
        if row["status"] == "REGRESSED" or worse:
            out.at[i, "status"] = "REGRESSED"
        elif row["status"] == "IMPROVED" or better:
            out.at[i, "status"] = "IMPROVED"
        else:
            out.at[i, "status"] = "OK"
    return out


def np_isfinite(series: pd.Series) -> pd.Series:
    return series.astype(float).map(math.isfinite)


# --------------------------------------------------------------------------- JUnit XML
def junit_xml(diff: pd.DataFrame, name: str = "salbench check") -> str:
    """The entries as a JUnit XML ``testsuites`` document (the schema CI systems read: one
    ``testcase`` per entry, classname ``salbench.MODEL.DATASET.METHOD``, name ``METRIC/SCORE``;
    REGRESSED / MISSING / CHANGED entries hold a ``failure`` whose ``type`` is the status)."""
    failures = int(diff["status"].isin(FAILING).sum())
    suites = ElementTree.Element("testsuites", name=name, tests=str(len(diff)), failures=str(failures), errors="0",
                                 time="0")
    suite = ElementTree.SubElement(suites, "testsuite", name=name, tests=str(len(diff)), failures=str(failures),
                                   errors="0", skipped="0", time="0")
    for _, row in diff.iterrows():
        case = ElementTree.SubElement(suite, "testcase", classname=f"salbench.{row['model']}.{row['dataset']}."
                                      f"{row['method']}", name=f"{row['metric']}/{row['score']}", time="0")
        detail = (f"baseline {row['baseline']:.6g}, current {_num(row['current'])}, delta {_num(row['delta'], True)}, "
                  f"tolerance {row['tolerance']:g} ({row['direction']} is better)")
        if "paired" in diff.columns and row.get("paired"):
            detail += (f"; paired: {row['paired']}" + (f" (n={int(row['paired_n'])}, p_worse={row['p_worse']:.3g}, "
                       f"p_better={row['p_better']:.3g}, effect={row['effect']:+.3f})"
                       if isinstance(row.get("paired_n"), float) and math.isfinite(row["paired_n"])
                       and math.isfinite(row["p_worse"]) else ""))
        if row["changed"]:
            detail += f"; changed: {row['changed']}"
        if row["status"] in FAILING:
            failure = ElementTree.SubElement(case, "failure", type=str(row["status"]),
                                             message=f"{row['status']}: {row['method']} {row['metric']}/{row['score']}")
            failure.text = detail
        ElementTree.SubElement(case, "system-out").text = f"{row['status']}: {detail}"
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


FAILING = ("REGRESSED", "MISSING", "CHANGED")


def failed(diff: pd.DataFrame) -> bool:
    """Whether the gate fails: any entry REGRESSED, MISSING or CHANGED."""
    return bool(diff["status"].isin(FAILING).any())


def format_diff(diff: pd.DataFrame) -> str:
    """A plain-text table of :func:`compare`'s rows and a one-line tally."""
    paired = "paired" in diff.columns
    header = ["model", "dataset", "method", "metric/score", "baseline", "current", "delta", "tol", "better",
              "images", *(["p (drop)", "effect"] if paired else []), "status"]
    lines = []
    for _, r in diff.iterrows():
        images = "-" if r["images"] is None or pd.isna(r["images"]) else str(int(r["images"]))
        if r["nan"] and not pd.isna(r["nan"]) and r["images"] is not None and not pd.isna(r["images"]):
            images += f" ({int(r['nan'])} NaN)"
        extra = []
        if paired:
            tested = not pd.isna(r["p_worse"])
            extra = [f"{r['p_worse']:.2g}" if tested else "-", f"{r['effect']:+.2f}" if tested else "-"]
        lines.append([r["model"], r["dataset"], r["method"], f"{r['metric']}/{r['score']}", f"{r['baseline']:.4f}",
                      _num(r["current"]), _num(r["delta"], signed=True), f"{r['tolerance']:.4f}", r["direction"],
                      images, *extra, r["status"]])
    widths = [max([len(h)] + [len(row[i]) for row in lines]) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    counts = diff["status"].value_counts()
    tally = ", ".join(f"{int(counts.get(s, 0))} {s.lower()}" for s in ("REGRESSED", "MISSING", "CHANGED", "IMPROVED",
                                                                         "OK"))
    notes = [f"{r['method']} {r['metric']}/{r['score']}: {r['changed']}" for _, r in diff.iterrows() if r["changed"]]
    if notes:
        notes = ["", "not comparable (protocol, method options or images changed; --allow-protocol-change compares "
                     "anyway):", *[f"  {n}" for n in notes]]
    if paired:
        notes += ["", "paired test (per-image values against the baseline's):",
                  *[f"  {r['method']} {r['metric']}/{r['score']}: {r['paired']}"
                    + (f" (n={int(r['paired_n'])})" if not pd.isna(r["paired_n"]) else "")
                    for _, r in diff.iterrows() if r["paired"]]]
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines), "", tally, *notes]) + "\n"


def _num(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    value = 0.0 if abs(value) < 5e-5 else value  # no "-0.0000"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def updated_entries(current: pd.DataFrame, entries: Sequence[Dict[str, Any]], tolerance: float) -> List[Dict[str, Any]]:
    """The baseline refreshed from ``current``: existing entries take the current value (keeping
    tolerance and direction; an entry with no current value is kept as is), every other current
    key is appended with ``tolerance``. NaN current values are never written."""
    values = {tuple(str(v) for v in row[KEY]): row for _, row in current.iterrows()}
    out, seen = [], set()
    for entry in entries:
        key = tuple(entry[k] for k in KEY)
        seen.add(key)
        row = values.get(key)
        fresh = dict(entry)
        if row is not None and not math.isnan(float(row["value"])):
            fresh["value"] = float(row["value"])
            fresh.update({name: row[name] for name in RECORDED})
        out.append(fresh)
    for key, row in values.items():
        if key in seen or math.isnan(float(row["value"])):
            continue
        direction = None if row["higher_is_better"] is None else ("higher" if row["higher_is_better"] else "lower")
        out.append({**dict(zip(KEY, key)), "value": float(row["value"]), "tolerance": tolerance, "direction": direction,
                    **{name: row[name] for name in RECORDED}})
    return out


# --------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="salbench check",
        description="Compare the scores of a run (or multirun) with a baseline file; exit 1 on a regression.",
    )
    parser.add_argument("results", nargs="+", help="run or multirun directories (holding scores.parquet)")
    parser.add_argument("--baseline", type=Path, required=True, help="baseline file (.yaml/.yml or .json)")
    parser.add_argument("--update", action="store_true",
                        help="write or refresh the baseline from these results (exit 0)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"tolerance of entries that --update adds (default {DEFAULT_TOLERANCE})")
    for column in ("method", "metric", "score"):
        parser.add_argument(f"--{column}", action="append", default=None, metavar="GLOB",
                            help=f"with --update: only {column}s matching GLOB (repeatable)")
    parser.add_argument("--allow-protocol-change", action="store_true",
                        help="compare values even when a metric's protocol, a method's options or the number of "
                             "images differ from the baseline's (said in the output); without it that fails")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="check the completed jobs when others are incomplete, failed or superseded (listed); "
                             "without it such jobs are an error (exit 2)")
    parser.add_argument("--paired", action="store_true",
                        help="also fail on a significant paired drop against the baseline's per-image scores "
                             "(BASELINE.scores.parquet, written by --update): one-sided Wilcoxon signed-rank test")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"--paired: significance level after correction (default {DEFAULT_ALPHA})")
    parser.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                        help="--paired: smallest matched-pairs rank-biserial correlation of a drop or gain "
                             f"(default {DEFAULT_MIN_EFFECT})")
    parser.add_argument("--paired-atol", type=float, default=DEFAULT_PAIRED_ATOL,
                        help="--paired: per-image differences within +-this count as no change (default "
                             f"{DEFAULT_PAIRED_ATOL:g}: rounding of a GPU rerun)")
    parser.add_argument("--correction", choices=("holm", "bh", "none"), default="holm",
                        help="--paired: multiplicity correction over the tested entries (default holm)")
    parser.add_argument("--junit", type=Path, default=None, metavar="FILE",
                        help="write the entries as JUnit XML test cases to FILE (CI test reports)")
    args = parser.parse_args(argv)
    if not 0 < args.alpha < 1 or not 0 <= args.min_effect <= 1 or args.paired_atol < 0:
        parser.error("--alpha must be in (0, 1), --min-effect in [0, 1] and --paired-atol >= 0")
    from salbench.reports.load import load, skipped_runs

    try:
        scores = load(args.results, args.allow_incomplete)
        current = aggregate(scores)
        entries = read_baseline(args.baseline) if (args.baseline.exists() or not args.update) else []
        per_image_baseline = read_companion(args.baseline) if (args.paired and entries and not args.update) else None
    except (FileNotFoundError, ValueError) as error:  # BaselineError is a ValueError
        print(f"salbench check: error: {error}", file=sys.stderr)
        return 2
    print(f"baseline: {args.baseline}\nresults:  {', '.join(args.results)}\n")
    for skipped in skipped_runs(args.results):
        print(f"left out (--allow-incomplete): {skipped}")
    if entries:
        diff = compare(current, entries, args.allow_protocol_change)
        if per_image_baseline is not None:
            diff = paired_tests(per_image(scores), per_image_baseline, diff, alpha=args.alpha,
                                min_effect=args.min_effect, atol=args.paired_atol, correction=args.correction)
        print(format_diff(diff))
        if args.junit is not None and not args.update:
            store.write_text(args.junit, junit_xml(diff))
            print(f"JUnit XML: {args.junit}")
    if args.update:
        chosen = select(current, method=args.method, metric=args.metric, score=args.score)
        fresh = updated_entries(chosen, entries, args.tolerance)
        write_baseline(args.baseline, fresh)
        try:
            previous = read_companion(args.baseline) if companion_path(args.baseline).is_file() else None
        except BaselineError as error:  # an unreadable companion is rewritten from the current scores
            print(f"note: {error}; rewritten")
            previous = None
        companion = write_companion(args.baseline, scores, fresh, previous)
        print(f"baseline {'refreshed' if entries else 'written'}: {args.baseline} ({len(fresh)} entries; per-image "
              f"scores for --paired: {companion})")
        return 0
    if not entries:
        print("salbench check: error: the baseline has no entries (write them with --update)", file=sys.stderr)
        return 2
    if failed(diff):
        bad = diff[diff["status"].isin(FAILING)]
        print(f"FAILED: {len(bad)} of {len(diff)} baseline entries regressed, are missing or changed protocol",
              file=sys.stderr)
        return 1
    print(f"passed: {len(diff)} baseline entries within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
