"""Report figures, each written as PNG and PDF (``<stem>.png``, ``<stem>.pdf``).

* :func:`plot_scores`: per-image score means with bootstrap intervals (dot plots), a grid of
  (model, dataset) rows x score columns; baselines in grey;
* :func:`plot_curves`: mean deletion / insertion curves per method with pointwise bootstrap bands;
* :func:`plot_randomization`: similarity of original and randomized maps vs randomized depth;
* :func:`plot_box_accuracy`: box accuracy vs map threshold (MaxBoxAcc's sweep);
* :func:`plot_timing`: the ``cost`` category scores per method;
* :func:`plot_critical_difference`: critical-difference diagrams (Demsar 2006), a panel per score;
* :func:`plot_wins`: how many scores each method significantly wins against each other one;
* :func:`plot_agreement`: Kendall's tau of method rankings and Spearman's rho of per-image scores
  between every pair of scores;
* :func:`image_to_pdf`: a raster (the runner's gallery) as a PDF page.

Each returns the written paths (empty when there is nothing to draw).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from salbench.harness import store
from salbench.reports.tables import arrow

BASELINE_GREYS = ("0.55", "0.3", "0.7", "0.15")
FORMATS = ("png", "pdf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_colours(methods: Sequence[str], baselines: Collection[str] = ()) -> dict:
    """A fixed colour per method (tab10 in order for up to 9 methods, else tab20 then tab20b:
    38 distinct colours; greys for the ``baselines``)."""
    plt = _pyplot()
    ordered = list(dict.fromkeys(methods))
    others = [m for m in ordered if m not in baselines]
    if len(others) <= 9:
        palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # tab10's grey is the baselines'
    else:
        palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]  # without its greys
        palette += list(plt.get_cmap("tab20b").colors)
    colours = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colours.update({b: BASELINE_GREYS[i % len(BASELINE_GREYS)] for i, b in enumerate(m for m in ordered if m in baselines)})
    return colours


def method_order(methods: Sequence[str], baselines: Collection[str] = ()) -> List[str]:
    """Methods in first-seen order, ``baselines`` last."""
    methods = list(dict.fromkeys(methods))
    return [m for m in methods if m not in baselines] + [m for m in methods if m in baselines]


def summary_baselines(frame: pd.DataFrame) -> List[str]:
    """The methods of a summary (or scores) frame whose ``baseline`` column is set."""
    if "baseline" not in frame.columns:
        return []
    return list(dict.fromkeys(frame.loc[frame["baseline"].fillna(False).astype(bool), "method"]))


def save_figure(fig, stem: Path, dpi: int = 110) -> List[Path]:
    plt = _pyplot()
    paths = []
    for fmt in FORMATS:
        path = Path(f"{stem}.{fmt}")
        with store.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _pairs(frame: pd.DataFrame) -> List[tuple]:
    return list(dict.fromkeys(zip(frame["model"], frame["dataset"])))


def slug(*parts: str) -> str:
    import re

    return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", str(p)) for p in parts)


# --------------------------------------------------------------------------- scores
def plot_scores(summary: pd.DataFrame, stem: Path, exclude_categories: Sequence[str] = ("cost", "parameter"),
                confidence: float = 0.95) -> List[Path]:
    """Dot plot of every (metric, score) mean with its interval, methods on the y axis."""
    part = summary[~summary["category"].isin(exclude_categories)]
    if part.empty:
        return []
    plt = _pyplot()
    pairs = _pairs(part)
    columns = list(dict.fromkeys(zip(part["metric"], part["score"])))
    ncols = min(4, len(columns))
    # each (model, dataset) gets the rows its own scores need (not every pair's union)
    pair_columns = [list(dict.fromkeys(zip(p_["metric"], p_["score"])))
                    for p_ in (part[(part["model"] == m) & (part["dataset"] == d)] for m, d in pairs)]
    pair_rows = [math.ceil(len(c) / ncols) for c in pair_columns]
    first_row = np.cumsum([0, *pair_rows[:-1]])
    nrows = int(sum(pair_rows))
    baselines = summary_baselines(part)
    methods = method_order(part["method"], baselines)
    colours = method_colours(part["method"], baselines)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, (0.35 * len(methods) + 1.1) * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for p, (model, dataset) in enumerate(pairs):
        pair = part[(part["model"] == model) & (part["dataset"] == dataset)]
        for c, (metric, score) in enumerate(pair_columns[p]):
            cell = pair[(pair["metric"] == metric) & (pair["score"] == score)].set_index("method")
            if cell.empty or not np.isfinite(cell["mean"].to_numpy(dtype=float)).any():
                continue  # nothing to draw (e.g. a dataset without difficult boxes)
            ax = axes[first_row[p] + c // ncols, c % ncols]
            ax.set_visible(True)
            shown = [m for m in methods if m in cell.index]
            y = np.arange(len(shown))[::-1]
            for yi, method in zip(y, shown):
                row = cell.loc[method]
                low, high = row["ci_low"], row["ci_high"]
                err = [[max(0.0, row["mean"] - low)], [max(0.0, high - row["mean"])]] if np.isfinite(low) else None
                ax.errorbar(row["mean"], yi, xerr=err, fmt="o", color=colours[method], capsize=3, ms=5)
            ax.set_yticks(y, shown, fontsize=8)
            ax.set_ylim(-0.7, len(shown) - 0.3)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize=8)
            direction = arrow(cell["higher_is_better"].iloc[0])
            title = f"{metric}/{score} {direction}".strip()
            if len(pairs) > 1:
                title = f"{model}/{dataset}\n{title}"
            ax.set_title(title, fontsize=9)
    fig.suptitle(f"mean and {confidence:.0%} bootstrap interval per method", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- curves
def _auc(fraction: np.ndarray, values: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(fraction)))


def _mean(fraction: np.ndarray, values: np.ndarray) -> float:
    return float(np.mean(values))


# a curve kind's summary (:class:`salbench.metrics.base.CurveKind`) -> (legend label, rule)
SUMMARY_RULES = {"auc": ("AUC", _auc), "mean": ("mean", _mean)}
DEFAULT_KIND = {"lower_is_better": False, "x_label": "fraction of pixels", "summary": "auc"}


def plot_curves(bands: pd.DataFrame, stem: Path, confidence: float = 0.95,
                curve_kinds: Optional[Dict[str, Dict]] = None, baselines: Collection[str] = ()) -> List[Path]:
    """bands: :func:`salbench.reports.stats.curve_bands` rows for one (model, dataset);
    ``curve_kinds``: ``{curve: {"lower_is_better", "x_label", "summary"}}`` as the metric declares
    them (:class:`salbench.metrics.base.CurveKind`), in the order drawn; ``baselines`` dashed."""
    if bands.empty:
        return []
    plt = _pyplot()
    declared = dict(curve_kinds or {})
    kinds = [k for k in declared if k in set(bands["curve"])] + sorted(set(bands["curve"]) - set(declared))
    colours = method_colours(bands["method"], baselines)
    many = bands["method"].nunique() > 8  # the legend goes under the axes instead of over the curves
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        part = bands[bands["curve"] == kind]
        info = {**DEFAULT_KIND, **declared.get(kind, {})}
        lower, xlabel = info["lower_is_better"], info["x_label"]
        summary, rule = SUMMARY_RULES[info["summary"]]
        for method in method_order(part["method"], baselines):
            line = part[part["method"] == method].sort_values("step")
            x = line["fraction"].to_numpy(dtype=float)
            mean = line["mean"].to_numpy(dtype=float)
            label = f"{method} ({summary} {rule(x, mean):.3f}, n={int(line['n'].iloc[0])})"
            style = "--" if method in baselines else "-"
            ax.plot(x, mean, style, color=colours[method], label=label, lw=1.6)
            ax.fill_between(x, line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float),
                            color=colours[method], alpha=0.18, lw=0)
        ax.set_title(f"{kind} ({'lower' if lower else 'higher'} {summary} is better)", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tracked class score")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if not many:
            ax.legend(fontsize=7, loc="best")
    model, dataset = bands["model"].iloc[0], bands["dataset"].iloc[0]
    fig.suptitle(f"{model} on {dataset}: mean curve, {confidence:.0%} pointwise bootstrap band", fontsize=10)
    fig.tight_layout()
    if many:  # after the layout, which would shrink the axes to fit them; the saved figure grows instead
        for ax in axes[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- randomization
def plot_randomization(bands: pd.DataFrame, stem: Path, layers: Optional[pd.Series] = None,
                       confidence: float = 0.95, baselines: Collection[str] = ()) -> List[Path]:
    """bands: mean/ci per (method, mode, similarity, depth) for one (model, dataset); ``layers``:
    depth -> layer name for the x ticks. Rows: modes; columns: similarities."""
    if bands.empty:
        return []
    plt = _pyplot()
    modes = [m for m in ("cascading", "independent") if m in set(bands["mode"])]
    similarities = list(dict.fromkeys(bands["similarity"]))
    colours = method_colours(bands["method"], baselines)
    fig, axes = plt.subplots(len(modes), len(similarities), figsize=(3.8 * len(similarities), 3.2 * len(modes)),
                             squeeze=False)
    for r, mode in enumerate(modes):
        for c, similarity in enumerate(similarities):
            ax = axes[r, c]
            part = bands[(bands["mode"] == mode) & (bands["similarity"] == similarity)]
            for method in method_order(part["method"], baselines):
                line = part[part["method"] == method].sort_values("depth")
                x = line["depth"].to_numpy(dtype=float)
                ax.plot(x, line["mean"], "o-" if method not in baselines else "o--", ms=3, color=colours[method],
                        label=method)
                ax.fill_between(x, line["ci_low"].to_numpy(dtype=float), line["ci_high"].to_numpy(dtype=float),
                                color=colours[method], alpha=0.18, lw=0)
            depths = sorted(set(part["depth"]))
            if layers is not None:
                ax.set_xticks(depths, [str(layers.get(d, d)) for d in depths], rotation=45, ha="right", fontsize=7)
            ax.axhline(0, color="0.5", lw=0.6)
            low = np.nanmin(part["ci_low"].to_numpy(dtype=float)) if len(part) else 0.0
            ax.set_ylim(min(-0.25, low - 0.05) if np.isfinite(low) else -0.25, 1.05)
            ax.grid(alpha=0.3)
            ax.set_title(f"{mode}: {similarity}", fontsize=9)
            if c == 0:
                ax.set_ylabel("similarity to original map")
            if r == len(modes) - 1:
                ax.set_xlabel("randomized from the top (depth)" if mode == "cascading" else "layer randomized")
    axes[0, -1].legend(fontsize=7, loc="best")
    model, dataset = bands["model"].iloc[0], bands["dataset"].iloc[0]
    fig.suptitle(f"{model} on {dataset}: model-randomization check (mean, {confidence:.0%} bootstrap band)",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- box accuracy
def plot_box_accuracy(table: pd.DataFrame, stem: Path, threshold: str = "tau", value: str = "box_accuracy",
                      baselines: Collection[str] = ()) -> List[Path]:
    """Box accuracy vs map threshold (one model, dataset): a line per method, a panel per
    (``variant``, ``iou_threshold``) when those columns exist; the max of each line is marked."""
    if table.empty:
        return []
    plt = _pyplot()
    table = table.copy()
    for column in ("variant", "iou_threshold"):
        if column not in table.columns:
            table[column] = None
    panels = list(dict.fromkeys(zip(table["variant"], table["iou_threshold"])))
    colours = method_colours(table["method"], baselines)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, (variant, level) in zip(axes[0], panels):
        part = table[(table["variant"].isna() if variant is None else table["variant"] == variant)
                     & (table["iou_threshold"].isna() if level is None else table["iou_threshold"] == level)]
        for method in method_order(part["method"], baselines):
            line = part[part["method"] == method].groupby(threshold)[value].mean().sort_index()
            if line.empty:
                continue
            best = line.idxmax()
            ax.plot(line.index, line.to_numpy(), "--" if method in baselines else "-", color=colours[method],
                    label=f"{method} (max {line.max():.3g} at {best:.3g})", lw=1.5)
            ax.plot([best], [line.max()], "o", color=colours[method], ms=4)
        title = " ".join(str(v) for v in (variant,) if v is not None)
        if level is not None:
            title += f" (IoU >= {level:g})"
        ax.set_title(title or "box accuracy vs threshold", fontsize=9)
        ax.set_xlabel(f"map threshold ({threshold})")
        ax.set_ylabel(value.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    model, dataset = table["model"].iloc[0], table["dataset"].iloc[0]
    fig.suptitle(f"{model} on {dataset}: box accuracy vs threshold", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- timing
def plot_timing(summary: pd.DataFrame, stem: Path) -> List[Path]:
    """Bars of every ``cost`` score per method with its interval (log axis when values span > 100x)."""
    part = summary[summary["category"] == "cost"]
    if part.empty:
        return []
    plt = _pyplot()
    columns = list(dict.fromkeys(zip(part["model"], part["dataset"], part["metric"], part["score"])))
    baselines = summary_baselines(part)
    colours = method_colours(part["method"], baselines)
    ncols = min(4, len(columns))  # a grid: one cost column per metric would make the figure metres wide
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, (0.4 * part["method"].nunique() + 1.4) * nrows),
                             squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    for ax, (model, dataset, metric, score) in zip(axes.flat, columns):
        cell = part[(part["model"] == model) & (part["dataset"] == dataset) & (part["metric"] == metric)
                    & (part["score"] == score)].set_index("method")
        shown = [m for m in method_order(cell.index, baselines) if m in cell.index]
        y = np.arange(len(shown))[::-1]
        means = cell.loc[shown, "mean"].to_numpy(dtype=float)
        low = np.clip(means - cell.loc[shown, "ci_low"].to_numpy(dtype=float), 0, None)
        high = np.clip(cell.loc[shown, "ci_high"].to_numpy(dtype=float) - means, 0, None)
        ax.barh(y, means, xerr=[np.nan_to_num(low), np.nan_to_num(high)], color=[colours[m] for m in shown],
                capsize=3)
        ax.set_yticks(y, shown, fontsize=8)
        positive = means[np.isfinite(means) & (means > 0)]
        if len(positive) > 1 and positive.max() / positive.min() > 100:
            ax.set_xscale("log")
        ax.set_title(f"{model}/{dataset}\n{metric}/{score} {arrow(cell['higher_is_better'].iloc[0])}".strip(), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- comparisons
def _cd_panel(ax, ranks: Dict[str, float], cliques: Sequence[Sequence[str]], cd: Optional[float], title: str,
              colours: dict) -> None:
    """One critical-difference diagram on ``ax``: the rank axis on top (1 = best, on the left),
    each method joined to its mean rank by an elbow line (best half labelled on the left, the rest
    on the right), a thick bar under the methods that are not significantly different, and the
    critical difference as a bracket above the axis when there is one (Nemenyi)."""
    order = sorted(ranks, key=lambda m: (ranks[m], m))
    k = len(order)
    low, high = 1, max(k, 2)
    margin = 0.08 * (high - low) + 0.2  # the labels lie outside the axes: the layout makes room for them
    ax.set_xlim(low - margin, high + margin)
    half = (k + 1) // 2
    rows = max(half, k - half)
    ax.set_ylim(-(rows + 1.3) - 0.45 * len(cliques), 1.6)
    ax.axis("off")
    ax.plot([low, high], [0, 0], color="black", lw=1.2)
    for tick in range(low, high + 1):
        ax.plot([tick, tick], [0, 0.18], color="black", lw=1.0)
        ax.text(tick, 0.3, str(tick), ha="center", va="bottom", fontsize=8)
    if cd is not None and np.isfinite(cd) and cd > 0:
        ax.plot([low, low + cd], [1.05, 1.05], color="black", lw=1.6)
        for x in (low, low + cd):
            ax.plot([x, x], [0.95, 1.15], color="black", lw=1.0)
        ax.text(low + cd / 2, 1.2, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=7)
    for i, method in enumerate(order):
        left = i < half
        y = -(i + 1) if left else -(k - i)
        x_label = low - margin if left else high + margin
        colour = colours.get(method, "black")
        ax.plot([ranks[method], ranks[method], x_label], [0, y, y], color=colour, lw=1.1)
        ax.text(x_label + (-0.05 if left else 0.05), y, f"{method} ({ranks[method]:.2f})", fontsize=8,
                ha="right" if left else "left", va="center", color=colour)
    for j, clique in enumerate(cliques):
        xs = [ranks[m] for m in clique]
        y = -0.45 - 0.35 * j
        ax.plot([min(xs) - 0.04, max(xs) + 0.04], [y, y], color="black", lw=3.2, solid_capstyle="round")
    ax.set_title(title, fontsize=9)


def plot_critical_difference(panels: Sequence[Dict], stem: Path, baselines: Collection[str] = (),
                             suptitle: Optional[str] = None, columns: int = 2) -> List[Path]:
    """Critical-difference diagrams (Demsar 2006), a panel per entry of ``panels``: dicts with
    ``title``, ``ranks`` ({method: mean rank}), ``cliques`` (lists of methods not significantly
    different: bars) and ``cd`` (Nemenyi's critical difference or None)."""
    if not panels:
        return []
    plt = _pyplot()
    methods = [m for p in panels for m in p["ranks"]]
    colours = method_colours(methods, baselines)
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    k = max(len(p["ranks"]) for p in panels)
    height = 0.32 * ((k + 1) // 2) + 0.25 * max(len(p["cliques"]) for p in panels) + 1.3
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, height * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        ax.set_visible(True)
        _cd_panel(ax, panel["ranks"], panel["cliques"], panel.get("cd"), panel["title"], colours)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if suptitle else None)
    return save_figure(fig, stem)


def plot_wins(won: pd.DataFrame, stem: Path, title: str) -> List[Path]:
    """Heatmap of ``won`` (methods x methods: scores on which the row method is significantly
    better than the column method); cells say ``wins/tested``."""
    if won.empty:
        return []
    plt = _pyplot()
    tested = won.attrs.get("tested", pd.DataFrame(np.nan, index=won.index, columns=won.columns))
    k = len(won)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * k, 0.8 + 0.5 * k))
    image = ax.imshow(won.to_numpy(dtype=float), cmap="Greens", vmin=0, vmax=max(1, int(tested.to_numpy().max())))
    for i in range(k):
        for j in range(k):
            if i != j:
                value = int(won.iat[i, j])
                ax.text(j, i, f"{value}/{int(tested.iat[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 * max(1, tested.to_numpy().max()) else "black")
    ax.set_xticks(range(k), won.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), won.index, fontsize=8)
    ax.set_xlabel("loses (column)")
    ax.set_ylabel("wins (row)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="scores won")
    fig.tight_layout()
    return save_figure(fig, stem)


def plot_agreement(matrices: Sequence[pd.DataFrame], titles: Sequence[str], stem: Path,
                   suptitle: Optional[str] = None) -> List[Path]:
    """Symmetric scores x scores matrices in [-1, 1] side by side (diverging colours, values
    written in the cells; blank = undefined)."""
    matrices = [m for m in matrices if not m.empty]
    if not matrices:
        return []
    plt = _pyplot()
    k = max(len(m) for m in matrices)
    fig, axes = plt.subplots(1, len(matrices), figsize=(len(matrices) * (2.2 + 0.48 * k), 1.6 + 0.45 * k),
                             squeeze=False)
    for ax, matrix, title in zip(axes[0], matrices, titles):
        values = matrix.to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-1, vmax=1)
        for i in range(len(matrix)):
            for j in range(len(matrix)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if abs(values[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(matrix)), matrix.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(matrix)), matrix.index, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, stem)


# --------------------------------------------------------------------------- rasters
def image_to_pdf(png: Path, pdf: Path, title: Optional[str] = None) -> Path:
    """Embed a raster image as one PDF page (the gallery's PDF version)."""
    plt = _pyplot()
    image = plt.imread(str(png))
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(width / 100, height / 100 + (0.3 if title else 0)))
    ax = fig.add_axes((0, 0, 1, height / (height + (30 if title else 0))))
    ax.imshow(image)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    with store.atomic_path(Path(pdf)) as tmp:
        fig.savefig(tmp, format="pdf", dpi=100)
    plt.close(fig)
    return Path(pdf)
