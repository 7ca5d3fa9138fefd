"""Write a report directory from run / multirun directories.

Files (``REPORT_DIR/``):

* ``summary.csv`` (one row per model, dataset, method, metric, score: mean, ci_low, ci_high,
  std, n, n_flagged, n_undefined, best, arrow, ...), ``summary.md``, ``summary.tex`` (booktabs);
* ``scores.{png,pdf}`` (means with intervals), ``curves-<model>-<dataset>[-<metric>].{png,pdf}``,
  ``tau_curves-<model>-<dataset>.{png,pdf}``, ``randomization-<model>-<dataset>.{png,pdf}``,
  ``timing.{png,pdf}`` and ``gallery-<i>.{png,pdf}`` when the runs hold the data;
* ``compare/``: paired tests, rankings, critical-difference diagrams, metric agreement and
  reliability, protocol sensitivity (:mod:`salbench.reports.comparisons`);

What the figures need to know of a method or metric (which methods are baselines, how each
kind of curve is summarized and oriented) comes from the declarations the runs recorded
(:func:`salbench.reports.load.components`), never from names.
* ``index.html``: everything above on one self-contained page (images embedded as base64), with
  a per-image viewer of the jobs' map thumbnails (:mod:`salbench.reports.viewer`).
"""
from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from salbench.harness import store
from salbench.reports import html as page
from salbench.reports import compare, plots, stats, tables, viewer
from salbench.reports.comparisons import write_comparisons
from salbench.reports.gallery import DEFAULT_CLIP_PERCENTILE, clip_caption
from salbench.reports.inspection import inspection_links
from salbench.reports.load import components, find_runs, galleries, load, load_table, run_info, skipped_runs



@dataclass
class ReportOptions:
    resamples: int = stats.DEFAULT_RESAMPLES
    confidence: float = stats.DEFAULT_CONFIDENCE
    seed: int = 0
    digits: int = 3
    allow_incomplete: bool = False  # report the completed jobs when others are incomplete / failed / superseded
    alpha: float = 0.05  # significance level of the comparisons (after correction)
    correction: str = "holm"  # holm | bh | none: over the method pairs of each score
    cd_test: str = "nemenyi"  # nemenyi | wilcoxon-holm: the bars of the critical-difference diagrams
    tie_tolerance: float = 1e-6  # paired differences within +-this count as zero (float32 rounding)
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE  # pixel-space maps drawn clipped at this percentile
    viewer_images: int = viewer.VIEWER_IMAGES  # images per (model, dataset) in the per-image viewer

    def compare_options(self) -> compare.CompareOptions:
        return compare.CompareOptions(alpha=self.alpha, correction=self.correction, cd_test=self.cd_test,
                                      tie_tolerance=self.tie_tolerance, resamples=self.resamples,
                                      confidence=self.confidence, seed=self.seed)


def _with_images(section: List[str], paths: List[Path], caption: str) -> None:
    png = next((p for p in paths if p.suffix == ".png"), None)
    if png is not None:
        pdf = png.with_suffix(".pdf")
        section.append(page.figure(png, f"{caption} (files: {png.name}, {pdf.name})"))


def randomization_bands(paths: Sequence[str], options: ReportOptions) -> Tuple[pd.DataFrame, Dict]:
    """Mean and bootstrap band of each similarity per (model, dataset, method, mode, depth) from
    ``randomization.parquet``, and the layer name of each depth per (model, dataset)."""
    keys = ["model", "dataset", "method", "mode", "similarity"]
    table = load_table(paths, "randomization", options.allow_incomplete)
    layers: Dict = {}
    if table.empty or not {"method", "mode", "depth", "similarity", "value"} <= set(table.columns):
        return pd.DataFrame(), layers
    if "image_id" not in table.columns:
        table["image_id"] = np.arange(len(table))
    long = table.assign(step=table["depth"], fraction=table["depth"])
    bands = stats.curve_bands(long, options.resamples, options.confidence, options.seed, keys=keys)
    bands = bands.rename(columns={"step": "depth"}).drop(columns="fraction")
    if "layer" in table.columns:
        for (model, dataset), part in table.groupby(["model", "dataset"], sort=False):
            layers[(model, dataset)] = part.groupby("depth")["layer"].first()
    return bands, layers


def _runs_table(runs: List[Path]) -> str:
    rows = []
    for run in runs:
        info = run_info(run)
        config = info.get("config", {})
        counts = info.get("counts", {})
        methods = ", ".join((config.get("method") or {}).keys())
        metrics = ", ".join((config.get("metric") or {}).keys())
        cells = [str(run), (config.get("model") or {}).get("name", "?"), (config.get("dataset") or {}).get("name", "?"),
                 methods, metrics, str(info.get("status", "?")), str(counts.get("images", "?")),
                 str(counts.get("flagged_maps", "?")), str(info.get("git_commit", "?"))[:12]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("job", "model", "dataset", "methods", "metrics", "status", "images",
                                              "flagged maps", "commit"))
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _pretty_json(text: object) -> str:
    try:
        return json.dumps(json.loads(text), indent=1)
    except (TypeError, ValueError):
        return str(text)


def _protocols(scores: pd.DataFrame) -> str:
    parts = []
    for metric, part in scores.groupby("metric", sort=False):
        for (preset, protocol), _ in part.groupby(["preset", "protocol"], sort=False, dropna=False):
            parts.append(f"<details><summary>metric <code>{html.escape(str(metric))}</code>, preset "
                         f"<code>{html.escape(str(preset))}</code></summary>"
                         f"<pre>{html.escape(_pretty_json(protocol))}</pre></details>")
    for method, part in scores.groupby("method", sort=False):
        for options in part["method_options"].dropna().unique():
            parts.append(f"<details><summary>method <code>{html.escape(str(method))}</code></summary>"
                         f"<pre>{html.escape(_pretty_json(options))}</pre></details>")
    return "\n".join(parts)


def write_report(paths: Sequence[str], out: Path, options: Optional[ReportOptions] = None) -> Dict[str, List[Path]]:
    """Write every table, figure and ``index.html`` into ``out``; returns {kind: [paths]}."""
    options = options or ReportOptions()
    comparison_options = options.compare_options()  # a bad choice is an error before anything is written
    if not 0 < options.clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100]; got {options.clip_percentile}")
    paths = [str(p) for p in paths]
    out = Path(out)
    allow = options.allow_incomplete
    runs = find_runs(paths, allow)  # before anything is written: a wrong path creates nothing
    skipped = skipped_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    raw_scores = load(paths, allow)
    scores = stats.label_variants(raw_scores)
    declared = components(paths, allow)
    baselines = plots.summary_baselines(scores)
    summary = stats.summarize(scores, options.resamples, options.confidence, options.seed)
    # dataset-level scores (MaxBoxAcc, PxAP) get intervals by resampling the per-image table
    from salbench.metrics.wsoleval import dataset_intervals

    summary = stats.fill_intervals(summary, dataset_intervals(load_table(paths, "tau_images", allow), options.resamples,
                                                              options.confidence, options.seed))
    built = tables.build_tables(summary, options.digits)
    written: Dict[str, List[Path]] = {"tables": [], "figures": [], "page": []}
    fmt = dict(digits=options.digits, confidence=options.confidence, resamples=options.resamples)

    # tables
    with store.atomic_path(out / "summary.csv") as tmp:
        tables.tidy_csv_frame(summary, built).to_csv(tmp, index=False)
    markdown = "# salbench report\n\n" + "\n".join(tables.to_markdown(t, **fmt) for t in built)
    store.write_text(out / "summary.md", markdown)
    latex = ("% salbench summary tables; requires \\usepackage{booktabs}\n\n"
             + "\n".join(tables.to_latex(t, **fmt) for t in built))
    store.write_text(out / "summary.tex", latex)
    written["tables"] += [out / "summary.csv", out / "summary.md", out / "summary.tex"]

    # figures
    sections: List[Tuple[str, str]] = []
    table_html = "\n".join(tables.to_html(t, **fmt) for t in built)
    figures: List[str] = []
    score_paths = plots.plot_scores(summary, out / "scores", confidence=options.confidence)
    _with_images(figures, score_paths, f"Score means with {options.confidence:.0%} bootstrap intervals "
                 "(baselines in grey).")
    written["figures"] += score_paths

    curves = load_table(paths, "curves", allow)
    curve_html: List[str] = []
    if not curves.empty and {"method", "curve", "step", "value"} <= set(curves.columns):
        if "fraction" not in curves.columns:
            curves["fraction"] = curves["step"] / curves.groupby(["method", "curve"])["step"].transform("max")
        if "metric" not in curves.columns:
            curves["metric"] = "curves"
        for (model, dataset, metric), part in curves.groupby(["model", "dataset", "metric"], sort=False):
            bands = stats.curve_bands(part, options.resamples, options.confidence, options.seed)
            several = curves["metric"].nunique() > 1
            stem = out / ("curves-" + plots.slug(model, dataset, *([metric] if several else [])))
            kinds = (declared["metrics"].get(metric) or {}).get("curve_kinds") or {}
            made = plots.plot_curves(bands, stem, options.confidence, curve_kinds=kinds, baselines=baselines)
            _with_images(curve_html, made, f"{model} on {dataset} ({metric}): perturbation curves, mean "
                         f"over images with a {options.confidence:.0%} pointwise bootstrap band.")
            written["figures"] += made

    compare_html, compare_written = write_comparisons(scores, summary, out / "compare", comparison_options,
                                                      options.digits, baselines)
    for kind, made in compare_written.items():
        written[kind] += made

    views = viewer.labelled_views(load_table(paths, "viewer", allow), raw_scores, scores)
    viewer_html = viewer.viewer_html(
        views, scores, viewer.method_spaces(declared, list(dict.fromkeys(views["method"])) if len(views) else []),
        clip_percentile=options.clip_percentile, max_images=options.viewer_images, digits=options.digits,
        baselines=baselines)

    box_html: List[str] = []
    tau_curves = load_table(paths, "tau_curves", allow)
    if not tau_curves.empty:
        for (model, dataset), part in tau_curves.groupby(["model", "dataset"], sort=False):
            made = plots.plot_box_accuracy(part, out / f"tau_curves-{plots.slug(model, dataset)}", baselines=baselines)
            _with_images(box_html, made, f"{model} on {dataset}: box accuracy vs map threshold.")
            written["figures"] += made

    random_html: List[str] = []
    bands, layers = randomization_bands(paths, options)
    if not bands.empty:
        for (model, dataset), part in bands.groupby(["model", "dataset"], sort=False):
            made = plots.plot_randomization(part, out / f"randomization-{plots.slug(model, dataset)}",
                                            layers.get((model, dataset)), options.confidence, baselines)
            _with_images(random_html, made, f"{model} on {dataset}: similarity between maps of the trained model "
                         "and of randomized copies (Adebayo et al. 2018); lower = the map depends on the weights.")
            written["figures"] += made

    timing_html: List[str] = []
    made = plots.plot_timing(summary, out / "timing")
    _with_images(timing_html, made, "Cost per method (category 'cost').")
    written["figures"] += made

    gallery_html: List[str] = []
    for i, item in enumerate(galleries(paths, allow)):
        png = out / f"gallery-{i}.png"
        shutil.copyfile(item["path"], png)
        title = f"{item['model']} on {item['dataset']}: {', '.join(item['methods'])}"
        made = [png, plots.image_to_pdf(png, out / f"gallery-{i}.pdf", title)]
        _with_images(gallery_html, made, f"{title} — heatmaps of the first images (job {item['run']}; as the job "
                     f"drew them: {clip_caption(DEFAULT_CLIP_PERCENTILE)}).")
        written["figures"] += made

    # page
    intro = (f"<p>{len(runs)} job(s) from {', '.join(html.escape(p) for p in paths)}; generated "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Intervals: "
             f"{options.confidence:.0%} percentile bootstrap over images, {options.resamples} resamples, seed "
             f"{options.seed}, paired across methods (same resampled images). Flagged maps (constant or "
             "non-finite) are excluded from means and counted.</p>")
    if skipped:
        intro += ('<p class="warning"><b>Left out (--allow-incomplete): ' + str(len(skipped)) + " job(s) that are not "
                  "complete results</b>:<br>" + "<br>".join(html.escape(s) for s in skipped) + "</p>")
    sections += [("Summary tables", table_html), ("Scores", "\n".join(figures)), ("Comparisons", compare_html),
                 ("Per-image viewer", viewer_html),
                 ("Perturbation curves", "\n".join(curve_html)),
                 ("Box accuracy vs threshold", "\n".join(box_html)),
                 ("Model-randomization check", "\n".join(random_html)), ("Timing", "\n".join(timing_html)),
                 ("Heatmap gallery", "\n".join(gallery_html)),
                 ("Inspections (salbench inspect)", inspection_links(paths, out)), ("Jobs", _runs_table(runs)),
                 ("Protocols", _protocols(scores))]
    store.write_text(out / "index.html", page.page("salbench report", sections, intro))
    written["page"].append(out / "index.html")
    for path in (p for paths_ in written.values() for p in paths_):
        os.chmod(path, 0o644)  # atomic writes create 0600 temporaries; a report is meant to be shared
    return written
