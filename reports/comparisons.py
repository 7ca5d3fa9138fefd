"""The report's ``compare/`` folder and its "Comparisons" section (statistics in
:mod:`salbench.reports.compare`).

Files (``REPORT_DIR/compare/``):

* ``pairwise.csv`` (:data:`salbench.reports.compare.PAIRWISE_COLUMNS`), ``pairwise.md``,
  ``pairwise.tex`` (booktabs, a table per (model, dataset, score));
* ``wins-MODEL-DATASET.{png,pdf}``: scores on which each method significantly beats each other one;
* ``rankings.csv``: mean ranks with bootstrap intervals and the Friedman test, per score and
  across scores (``score == "all scores"``);
* ``critical_difference-MODEL-DATASET.{png,pdf}`` (a panel per score, blocks = images) and
  ``critical_difference-MODEL-DATASET-across_scores.{png,pdf}`` (blocks = scores);
* ``metric_agreement.csv`` and ``metric_agreement-MODEL-DATASET.{png,pdf}``;
* ``metric_reliability.csv``, ``metric_reliability.md``;
* ``protocol_sensitivity.csv``, ``protocol_sensitivity.md`` (when runs varied a metric's protocol).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from salbench.harness import store
from salbench.reports import compare, plots
from salbench.reports import html as page
from salbench.reports.tables import fmt, latex_escape

CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no"}


def _p(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _method_text(options: compare.CompareOptions) -> str:
    return (f"Wilcoxon signed-rank test over images (two-sided, scipy, zero differences: {options.zero_method}, "
            f"differences within ±{options.tie_tolerance:g} counted as zero), {CORRECTION_NAMES[options.correction]} "
            f"correction over the method pairs of each score, significant at {options.alpha:g}; effect size: "
            "matched-pairs rank-biserial correlation r of (A - B) (+1: A larger on every image that differs); "
            f"interval: {options.confidence:.0%} paired percentile bootstrap of the mean difference "
            f"({options.resamples} resamples, seed {options.seed}, the summary's image resamples)")


# --------------------------------------------------------------------------- pairwise files
def pairwise_markdown(pairs: pd.DataFrame, options: compare.CompareOptions, digits: int) -> str:
    lines = ["# Pairwise comparisons", "", _method_text(options) + ".", ""]
    for (model, dataset, score), part in pairs.groupby(["model", "dataset", "score"], sort=False):
        lines += [f"### {model} on {dataset}: {score}", "",
                  "| A | B | n | mean(A - B) [CI] | p | p adj. | significant | r | better |",
                  "|:---|:---|---:|---:|---:|---:|:---:|---:|:---|"]
        for r in part.itertuples(index=False):
            interval = f" [{fmt(r.ci_low, digits)}, {fmt(r.ci_high, digits)}]" if np.isfinite(r.ci_low) else ""
            lines.append(f"| {r.method_a} | {r.method_b} | {r.n} | {fmt(r.mean_diff, digits)}{interval} | "
                         f"{_p(r.p_value)} | {_p(r.p_adjusted)} | {'yes' if r.significant else 'no'} | "
                         f"{fmt(r.effect_size, 2)} | {r.better} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def pairwise_latex(pairs: pd.DataFrame, options: compare.CompareOptions, digits: int) -> str:
    out = ["% salbench pairwise comparisons; requires \\usepackage{booktabs}", ""]
    for i, ((model, dataset, score), part) in enumerate(pairs.groupby(["model", "dataset", "score"], sort=False)):
        body = []
        for r in part.itertuples(index=False):
            interval = (rf"~{{\scriptsize[{fmt(r.ci_low, digits)}, {fmt(r.ci_high, digits)}]}}"
                        if np.isfinite(r.ci_low) else "")
            mean = fmt(r.mean_diff, digits).replace("–", "--")
            p_adj = _p(r.p_adjusted).replace("–", "--")
            body.append(" & ".join([latex_escape(r.method_a), latex_escape(r.method_b), str(r.n), mean + interval,
                                    _p(r.p_value).replace("–", "--"),
                                    rf"\textbf{{{p_adj}}}" if r.significant else p_adj,
                                    fmt(r.effect_size, 2).replace("–", "--"), latex_escape(r.better)]) + r" \\")
        caption = latex_escape(f"{model} on {dataset}: {score}. " + _method_text(options)
                               + ". Significant adjusted p-values in bold.")
        out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llrrrrrl}", r"\toprule",
                r"A & B & $n$ & mean($A-B$) & $p$ & $p_\mathrm{adj}$ & $r$ & better \\", r"\midrule", *body,
                r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:pairwise-{i}}}",
                r"\end{table}", ""]
    return "\n".join(out)


def _frame_markdown(frame: pd.DataFrame, title: str, note: str, digits: int) -> str:
    lines = [f"# {title}", "", note, "", "| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        cells = [fmt(v, digits) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML pieces
def _table(frame: pd.DataFrame, digits: int, classes: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, (bool, np.bool_)):
                text = "yes" if value else "no"
            elif isinstance(value, (float, np.floating)):
                text = fmt(float(value), digits)
            else:
                text = html.escape(str(value))
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{classes}"' if classes else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(paths: List[Path], caption: str, anchor: str = "") -> str:
    png = next((p for p in paths if p.suffix == ".png"), None)
    if png is None:
        return ""
    figure = page.figure(png, f"{caption} (files: compare/{png.name}, compare/{png.with_suffix('.pdf').name})")
    return figure.replace("<figure>", f'<figure id="{anchor}">', 1) if anchor else figure


def _pairwise_details(part: pd.DataFrame, digits: int) -> str:
    out = []
    for score, rows in part.groupby("score", sort=False):
        shown = rows[["method_a", "method_b", "n", "mean_diff", "ci_low", "ci_high", "p_value", "p_adjusted",
                      "significant", "effect_size", "better"]].copy()
        for column in ("p_value", "p_adjusted"):
            shown[column] = [_p(v) for v in shown[column]]
        count = int(rows["significant"].sum())
        out.append(f"<details><summary><code>{html.escape(score)}</code>: {count} of {len(rows)} pairs significant"
                   f"</summary>{_table(shown, digits, 'pairs')}</details>")
    return "\n".join(out)


def _ranking_table(part: pd.DataFrame, digits: int) -> str:
    """methods x scores: ``mean rank [low, high]``, the Friedman test in the last rows."""
    scores = list(dict.fromkeys(part["score"]))
    methods = list(dict.fromkeys(part["method"]))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in scores)
    body = []
    for method in methods:
        cells = []
        for score in scores:
            row = part[(part["method"] == method) & (part["score"] == score)]
            if row.empty:
                cells.append("<td>–</td>")
                continue
            r = row.iloc[0]
            cells.append(f"<td>{r['mean_rank']:.2f} <span class=\"ci\">[{r['rank_ci_low']:.2f}, "
                         f"{r['rank_ci_high']:.2f}]</span></td>")
        body.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    first = part.drop_duplicates("score").set_index("score")
    body.append("<tr><th>Friedman p</th>" + "".join(f"<td>{_p(first.loc[s, 'friedman_p'])}</td>" for s in scores)
                + "</tr>")
    body.append("<tr><th>blocks (n)</th>" + "".join(f"<td>{int(first.loc[s, 'n'])}</td>" for s in scores) + "</tr>")
    return (f'<table class="ranks"><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table>")


# --------------------------------------------------------------------------- everything
def write_comparisons(scores: pd.DataFrame, summary: pd.DataFrame, out: Path, options: compare.CompareOptions,
                      digits: int = 3, baselines: Sequence[str] = ()) -> Tuple[str, Dict[str, List[Path]]]:
    """Write ``out`` (the report's ``compare/`` folder) and return (the section's HTML,
    {"tables": [...], "figures": [...]})."""
    written: Dict[str, List[Path]] = {"tables": [], "figures": []}
    compare.MISSING_NOTES.clear()
    cell_list = compare.cells(scores)
    if not cell_list and summary.empty:
        return "", written
    out.mkdir(parents=True, exist_ok=True)

    def csv(frame: pd.DataFrame, name: str) -> None:
        with store.atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
        written["tables"].append(out / name)

    def text(content: str, name: str) -> None:
        store.write_text(out / name, content)
        written["tables"].append(out / name)

    pairs = compare.pairwise(scores, options, cell_list)
    csv(pairs, "pairwise.csv")
    text(pairwise_markdown(pairs, options, digits), "pairwise.md")
    text(pairwise_latex(pairs, options, digits), "pairwise.tex")
    ranks = pd.concat([compare.rankings(cell_list, options), compare.rankings_across_scores(summary, options)],
                      ignore_index=True)
    csv(ranks, "rankings.csv")
    agreement = compare.metric_agreement(summary, cell_list)
    csv(agreement, "metric_agreement.csv")
    reliability = compare.metric_reliability(cell_list, options)
    csv(reliability, "metric_reliability.csv")
    text(_frame_markdown(reliability, "Metric reliability (Tomsett et al. 2020)", RELIABILITY_NOTE, digits),
         "metric_reliability.md")
    sensitivity = compare.protocol_sensitivity(summary)
    if not sensitivity.empty:
        csv(sensitivity, "protocol_sensitivity.csv")
        text(_frame_markdown(sensitivity, "Protocol sensitivity", SENSITIVITY_NOTE, digits), "protocol_sensitivity.md")

    sections: List[str] = [f"<p>{html.escape(_method_text(options))}. Files in <code>compare/</code>: pairwise.csv "
                           "(.md, .tex), rankings.csv, metric_agreement.csv, metric_reliability.csv"
                           + (", protocol_sensitivity.csv" if not sensitivity.empty else "") + ".</p>"]
    for note in compare.MISSING_NOTES.values():
        sections.append(f'<p class="warning">{html.escape(note)}.</p>')
    pairs_by_cell = {key: part for key, part in pairs.groupby(["model", "dataset"], sort=False)}
    wins = compare.wins(pairs)
    kendall = compare.agreement_matrix(agreement, "kendall_tau")
    spearman = compare.agreement_matrix(agreement, "spearman_rho")
    cells_keys = list(dict.fromkeys([(c.model, c.dataset) for c in cell_list]
                                    + list(zip(summary["model"], summary["dataset"]))))
    for model, dataset in cells_keys:
        slug = plots.slug(model, dataset)
        parts: List[str] = [f"<h3>{html.escape(str(model))} on {html.escape(str(dataset))}</h3>"]
        part = pairs_by_cell.get((model, dataset), pd.DataFrame(columns=pairs.columns))
        # pairwise
        if not part.empty:
            made = plots.plot_wins(wins[(model, dataset)], out / f"wins-{slug}",
                                   f"{model} on {dataset}: significant wins (row beats column) over "
                                   f"{part['score'].nunique()} scores")
            written["figures"] += made
            parts.append("<h4>Pairwise comparisons</h4>")
            parts.append(_figure(made, "Number of scores on which the row method is significantly better than the "
                                 "column method (after correction) / scores on which the pair was tested.",
                                 anchor=f"wins-{slug}"))
            parts.append(_pairwise_details(part, digits))
        # rankings and CD diagrams
        cell_ranks = ranks[(ranks["model"] == model) & (ranks["dataset"] == dataset)]
        if not cell_ranks.empty:
            parts.append("<h4>Rankings</h4>")
            parts.append(_ranking_table(cell_ranks, digits))
            parts.append(f'<p class="note">Mean rank over images (1 = best; ties averaged) with its '
                         f"{options.confidence:.0%} bootstrap interval (images resampled as for every interval); "
                         "images that every method scored. Friedman test over the same blocks. Column "
                         "<i>all scores</i>: the methods ranked on each quality score's mean (the scores as "
                         "datasets, Demsar 2006).</p>")
            panels = _cd_panels(cell_ranks[cell_ranks["score"] != "all scores"], part, options)
            made = plots.plot_critical_difference(panels, out / f"critical_difference-{slug}", baselines,
                                                  suptitle=f"{model} on {dataset}: critical differences over images "
                                                           f"({_cd_text(options)})")
            written["figures"] += made
            parts.append(_figure(made, f"Critical-difference diagrams per score, blocks = images: mean rank "
                                 f"(1 = best, left); a bar joins methods that are not significantly different "
                                 f"({_cd_text(options)}).", anchor=f"cd-{slug}"))
            across = cell_ranks[cell_ranks["score"] == "all scores"]
            if not across.empty:
                block = compare.complete_block(compare.score_means(summary).loc[(model, dataset)])
                panel = _across_panel(across, block, options)
                made = plots.plot_critical_difference([panel], out / f"critical_difference-{slug}-across_scores",
                                                      baselines, columns=1)
                written["figures"] += made
                parts.append(_figure(made, f"Critical-difference diagram across scores (blocks = the "
                                     f"{int(across['n'].iloc[0])} quality scores' means; {_cd_text(options)}).",
                                     anchor=f"cd-across-{slug}"))
        # agreement
        if (model, dataset) in kendall:
            per_image = spearman[(model, dataset)]
            defined = [label for label in per_image.index if per_image.loc[label].drop(label).notna().any()]
            made = plots.plot_agreement([kendall[(model, dataset)], per_image.loc[defined, defined]],
                                        ["Kendall's tau of the method rankings", "Spearman's rho of per-image scores "
                                         "(mean over methods)"], out / f"metric_agreement-{slug}",
                                        suptitle=f"{model} on {dataset}: metric agreement")
            written["figures"] += made
            parts.append("<h4>Metric agreement and reliability</h4>")
            parts.append(_figure(made, "Left: Kendall's tau-b between the method rankings (means) of two scores; "
                                 "right: Spearman's rho between two scores' per-image values, per method, averaged "
                                 "over the methods (image-scope scores). Values oriented so that higher is better: "
                                 "+1 = full agreement.", anchor=f"agreement-{slug}"))
        rel = reliability[(reliability["model"] == model) & (reliability["dataset"] == dataset)]
        if not rel.empty:
            if (model, dataset) not in kendall:
                parts.append("<h4>Metric reliability</h4>")
            parts.append(_table(rel.drop(columns=["model", "dataset"]), digits, "reliability"))
            parts.append(f'<p class="note">{html.escape(RELIABILITY_NOTE)}</p>')
        sens = sensitivity[(sensitivity["model"] == model) & (sensitivity["dataset"] == dataset)]
        if not sens.empty:
            parts.append("<h4>Protocol sensitivity</h4>")
            parts.append(_table(sens.drop(columns=["model", "dataset"]), digits, "sensitivity"))
            parts.append(f'<p class="note">{html.escape(SENSITIVITY_NOTE)}</p>')
        sections.append("\n".join(p for p in parts if p))
    return "\n".join(sections), written


RELIABILITY_NOTE = ("Tomsett et al. 2020. inter_rater_alpha: Krippendorff's alpha (krippendorff package, "
                    "level in the last column) of the methods' ranks, each image a rater (1: every image ranks the "
                    "methods alike, 0: chance); inter_method_rho: mean Spearman correlation across images between "
                    "the scores of two methods (over method pairs); internal_consistency_rho: mean Spearman "
                    "correlation across images between this score and the other scores of its category, per method "
                    "(over methods and scores). Values oriented so that higher is better.")
SENSITIVITY_NOTE = ("Runs that scored a metric under different protocols (the variants in brackets): Kendall's "
                    "tau-b between the method rankings (means) under two variants, and whether the best method "
                    "stays the same. tau = 1: the ranking survives the protocol change.")


def _cd_text(options: compare.CompareOptions) -> str:
    if options.cd_test == "nemenyi":
        return f"Nemenyi, alpha {options.alpha:g}"
    return f"Wilcoxon signed-rank with {CORRECTION_NAMES[options.correction]} correction, alpha {options.alpha:g}"


def _cd_panels(ranks: pd.DataFrame, pairs: pd.DataFrame, options: compare.CompareOptions) -> List[Dict]:
    panels = []
    for score, part in ranks.groupby("score", sort=False):
        mean_ranks = dict(zip(part["method"], part["mean_rank"]))
        if len(mean_ranks) < 2:
            continue
        cd = float(part["cd"].iloc[0])
        if options.cd_test == "nemenyi":
            groups = compare.cliques(mean_ranks, cd=cd)
        else:
            groups = compare.cliques(mean_ranks, not_separated=compare.not_separated(pairs[pairs["score"] == score]))
        p = part["friedman_p"].iloc[0]
        panels.append({"title": f"{score} (n={int(part['n'].iloc[0])}, Friedman p={_p(p)})", "ranks": mean_ranks,
                       "cliques": groups, "cd": cd if options.cd_test == "nemenyi" else None})
    return panels


def _across_panel(across: pd.DataFrame, block: pd.DataFrame, options: compare.CompareOptions) -> Dict:
    mean_ranks = dict(zip(across["method"], across["mean_rank"]))
    cd = float(across["cd"].iloc[0])
    if options.cd_test == "nemenyi":
        groups = compare.cliques(mean_ranks, cd=cd)
    else:
        groups = compare.cliques(mean_ranks, not_separated=compare.not_separated(compare.block_pairwise(block, options)))
    return {"title": f"all quality scores (n={int(across['n'].iloc[0])} scores, Friedman p="
                     f"{_p(across['friedman_p'].iloc[0])})", "ranks": mean_ranks, "cliques": groups,
            "cd": cd if options.cd_test == "nemenyi" else None}


__all__ = ["write_comparisons", "pairwise_markdown", "pairwise_latex"]
