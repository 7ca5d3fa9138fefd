"""Publication tables from :func:`salbench.reports.stats.summarize`: method x score per (model,
dataset, category), ``mean [ci_low, ci_high]``, arrows from ``higher_is_better``, best in bold,
the baselines (the methods that declare themselves baselines: random, center) always present as
the last rows.

Formats: Markdown (GitHub), LaTeX (booktabs: ``\\usepackage{booktabs}``), HTML (the report page)
and a tidy CSV (one row per cell, every statistic).
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd


CATEGORY_ORDER = ("localization", "faithfulness", "robustness", "complexity", "sanity", "cost", "parameter")
# categories whose values are settings chosen by a metric (e.g. MaxBoxAcc's best tau): no best, no arrow
UNORIENTED_CATEGORIES = ("parameter",)
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass
class Cell:
    mean: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    n: int = 0
    n_flagged: int = 0
    n_images: int = 0
    scope: str = "image"
    best: bool = False


@dataclass
class Table:
    """One summary table: rows (methods, baselines last) x columns (metric, score)."""

    model: str
    dataset: str
    category: str
    columns: List[Tuple[str, str]]  # (metric, score)
    directions: List[Optional[bool]]  # higher_is_better per column
    rows: List[str]
    cells: Dict[Tuple[str, Tuple[str, str]], Cell] = field(default_factory=dict)
    n: Dict[str, int] = field(default_factory=dict)  # images per method (max over columns)
    flagged: Dict[str, int] = field(default_factory=dict)  # flagged maps per method
    missing: List[str] = field(default_factory=list)  # baselines absent from the runs
    baselines: List[str] = field(default_factory=list)  # the rows that are baselines
    part: str = ""  # the metrics of this table when a category is split over several

    @property
    def title(self) -> str:
        return f"{self.model} on {self.dataset}: {self.category}" + (f" ({self.part})" if self.part else "")


def arrow(higher_is_better: Optional[bool]) -> str:
    return "" if higher_is_better is None else ("↑" if higher_is_better else "↓")


def fmt(value: float, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _direction(value) -> Optional[bool]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _chunks(columns: List[Tuple[str, str]], max_columns: int) -> List[List[Tuple[str, str]]]:
    """Consecutive metric groups packed into tables of at most ``max_columns`` score columns
    (a metric with more scores than that stays whole)."""
    groups: List[List[Tuple[str, str]]] = []
    for column in columns:
        if groups and groups[-1][-1][0] == column[0]:
            groups[-1].append(column)
        else:
            groups.append([column])
    chunks: List[List[Tuple[str, str]]] = []
    for group in groups:
        if chunks and len(chunks[-1]) + len(group) <= max_columns:
            chunks[-1] += group
        else:
            chunks.append(list(group))
    return chunks


def build_tables(summary: pd.DataFrame, digits: int = 3, expected_baselines: Optional[Sequence[str]] = None,
                 max_columns: int = 6) -> List[Table]:
    """Tables per (model, dataset, category) in first-seen order of model/dataset and
    :data:`CATEGORY_ORDER` for categories. Rows: the methods, then the baselines (the summary's
    ``baseline`` column), then the ``expected_baselines`` (default: every registered baseline
    method) absent from the runs, listed as missing. Best: the top mean in the column's
    direction (ties at ``digits`` precision all bold); columns without a direction get no bold."""
    from salbench.reports.load import expected_baselines as registered_baselines

    expected = list(registered_baselines() if expected_baselines is None else expected_baselines)
    tables: List[Table] = []
    if summary.empty:
        return tables
    summary = summary.assign(category=summary["category"].fillna("other"))
    order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    for (model, dataset), pair in summary.groupby(["model", "dataset"], sort=False):
        # a score with no value for this (model, dataset) (e.g. the difficult-subset pointing game
        # on a dataset without difficult objects) is left out instead of filling a column with dashes
        valued = pair.groupby(["metric", "score"], sort=False)["mean"].transform(
            lambda means: bool(np.isfinite(pd.to_numeric(means, errors="coerce").to_numpy(dtype=float)).any()))
        pair = pair[valued.astype(bool)]
        if pair.empty:
            continue
        methods = list(dict.fromkeys(pair["method"]))
        flagged = set(pair.loc[pair["baseline"].fillna(False).astype(bool), "method"]) if "baseline" in pair else set()
        present = [m for m in methods if m in flagged]
        baselines = present + [b for b in expected if b not in methods]
        rows = [m for m in methods if m not in flagged] + baselines
        categories = sorted(dict.fromkeys(pair["category"]), key=lambda c: (order.get(c, len(order)), c))
        chunked = {c: _chunks(list(dict.fromkeys(zip(pair.loc[pair["category"] == c, "metric"],
                                                      pair.loc[pair["category"] == c, "score"]))), max_columns)
                   for c in categories}
        for category, columns in ((c, chunk) for c in categories for chunk in chunked[c]):
            metrics = {m for m, _ in columns}
            part = pair[(pair["category"] == category) & pair["metric"].isin(metrics)]
            part = part[[(m, s) in set(columns) for m, s in zip(part["metric"], part["score"])]]
            directions = [None if category in UNORIENTED_CATEGORIES else
                          _direction(part[(part["metric"] == m) & (part["score"] == s)]["higher_is_better"].iloc[0])
                          for m, s in columns]
            table = Table(model, dataset, category, columns, directions, rows,
                          missing=[b for b in baselines if b not in set(part["method"])], baselines=baselines,
                          part=", ".join(dict.fromkeys(m for m, _ in columns)) if len(chunked[category]) > 1 else "")
            for record in part.itertuples(index=False):
                table.cells[(record.method, (record.metric, record.score))] = Cell(
                    record.mean, record.ci_low, record.ci_high, int(record.n), int(record.n_flagged),
                    int(record.n_images), str(record.scope))
            for method in rows:
                present = [c for (m, _), c in table.cells.items() if m == method]
                table.n[method] = max((c.n_images for c in present), default=0)
                table.flagged[method] = max((c.n_flagged for c in present), default=0)
            for column, higher in zip(columns, directions):
                if higher is None:
                    continue
                means = {m: table.cells[(m, column)].mean for m in rows if (m, column) in table.cells}
                finite = {m: v for m, v in means.items() if math.isfinite(v)}
                if not finite:
                    continue
                best = fmt(max(finite.values()) if higher else min(finite.values()), digits)
                for method, value in finite.items():
                    table.cells[(method, column)].best = fmt(value, digits) == best
            tables.append(table)
    return tables


def _notes(table: Table, confidence: float, resamples: int) -> List[str]:
    if table.category in UNORIENTED_CATEGORIES:
        notes = ["settings chosen by the metric (e.g. the best threshold): no direction, no best."]
    else:
        notes = [f"mean [{confidence:.0%} percentile-bootstrap CI, {resamples} resamples over images]; "
                 "↑ higher is better, ↓ lower is better; best in bold; n = images (flagged included)."]
    if any(c.scope == "dataset" for c in table.cells.values()):
        notes.append("dataset-level scores: one value per run; an interval over several runs, or by resampling "
                     "images where the run kept its per-image table (MaxBoxAcc, PxAP).")
    if any(table.flagged.values()):
        notes.append("flagged = maps that were constant or non-finite: their values are excluded from the means.")
    if table.missing:
        notes.append(f"baseline(s) not in these runs: {', '.join(table.missing)}.")
    return notes


def _count_note(table: Table, method: str, cell: Cell) -> str:
    if cell.scope == "dataset":
        return f" ({cell.n} run{'s' if cell.n != 1 else ''})" if cell.n != 1 or not math.isfinite(cell.low) else ""
    return f" (n={cell.n})" if cell.n != table.n[method] - table.flagged[method] else ""


# --------------------------------------------------------------------------- Markdown
def to_markdown(table: Table, digits: int = 3, confidence: float = 0.95, resamples: int = 1000) -> str:
    header = ["method", *(f"{m}/{s} {arrow(d)}".strip() for (m, s), d in zip(table.columns, table.directions)),
              "n", "flagged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in table.rows:
        cells = []
        for column in table.columns:
            cell = table.cells.get((method, column))
            if cell is None:
                cells.append("–")
                continue
            text = fmt(cell.mean, digits)
            if math.isfinite(cell.low):
                text += f" [{fmt(cell.low, digits)}, {fmt(cell.high, digits)}]"
            text += _count_note(table, method, cell)
            cells.append(f"**{text}**" if cell.best else text)
        name = f"*{method}*" if method in table.baselines else method
        lines.append("| " + " | ".join([name, *cells, str(table.n[method]), str(table.flagged[method])]) + " |")
    notes = "\n".join(f"> {n}" for n in _notes(table, confidence, resamples))
    return f"### {table.title}\n\n" + "\n".join(lines) + "\n\n" + notes + "\n"


def metric_spans(table: Table) -> List[Tuple[str, int]]:
    """(metric, number of adjacent score columns) for the two-row headers of LaTeX and HTML."""
    spans: List[Tuple[str, int]] = []
    for metric, _ in table.columns:
        if spans and spans[-1][0] == metric:
            spans[-1] = (metric, spans[-1][1] + 1)
        else:
            spans.append((metric, 1))
    return spans


# --------------------------------------------------------------------------- LaTeX
def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_number(value: float, digits: int) -> str:
    return "--" if not math.isfinite(value) else f"{value:.{digits}f}"


def to_latex(table: Table, digits: int = 3, confidence: float = 0.95, resamples: int = 1000,
             label: Optional[str] = None) -> str:
    """A ``table`` float with a booktabs ``tabular``: a metric header row (``\\multicolumn`` +
    ``\\cmidrule``) above a score row with arrows; baselines below a ``\\midrule``."""
    k = len(table.columns)
    spec = "l" + "r" * k + "rr"
    metric_cells, rules, start = [""], [], 2
    for metric, span in metric_spans(table):
        metric_cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(metric)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    metric_cells += ["", ""]
    arrows = {True: r" $\uparrow$", False: r" $\downarrow$", None: ""}
    score_cells = ["Method", *(latex_escape(s) + arrows[d] for (_, s), d in zip(table.columns, table.directions)),
                   "$n$", "flagged"]
    body = []
    for i, method in enumerate(table.rows):
        if i and method == next((r for r in table.rows if r in table.baselines), None):
            body.append(r"\midrule")
        cells = [latex_escape(method)]
        for column in table.columns:
            cell = table.cells.get((method, column))
            if cell is None:
                cells.append("--")
                continue
            mean = _latex_number(cell.mean, digits)
            mean = rf"\textbf{{{mean}}}" if cell.best else mean
            if math.isfinite(cell.low):
                mean += rf"~{{\scriptsize[{_latex_number(cell.low, digits)}, {_latex_number(cell.high, digits)}]}}"
            cells.append(mean)
        cells += [str(table.n[method]), str(table.flagged[method])]
        body.append(" & ".join(cells) + r" \\")
    label = label or f"tab:{table.model}-{table.dataset}-{table.category}" + (f"-{table.part}" if table.part else "")
    caption = latex_escape(f"{table.title}. " + " ".join(_notes(table, confidence, resamples)))
    caption = caption.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
    return "\n".join([
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(metric_cells) + r" \\",
        " ".join(rules),
        " & ".join(score_cells) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{caption}}}",
        rf"\label{{{re.sub(r'[^A-Za-z0-9:.-]+', '-', label)}}}",
        r"\end{table}",
    ]) + "\n"


# --------------------------------------------------------------------------- HTML
def to_html(table: Table, digits: int = 3, confidence: float = 0.95, resamples: int = 1000) -> str:
    esc = html.escape
    head_metric = ['<th rowspan="2">method</th>']
    head_metric += [f'<th colspan="{span}">{esc(metric)}</th>' for metric, span in metric_spans(table)]
    head_metric += ['<th rowspan="2">n</th>', '<th rowspan="2">flagged</th>']
    head_score = [f"<th>{esc(s)} {arrow(d)}</th>" for (_, s), d in zip(table.columns, table.directions)]
    body = []
    for method in table.rows:
        cls = ' class="baseline"' if method in table.baselines else ""
        cells = [f"<th>{esc(method)}</th>"]
        for column in table.columns:
            cell = table.cells.get((method, column))
            if cell is None:
                cells.append("<td>–</td>")
                continue
            mean = fmt(cell.mean, digits)
            mean = f"<b>{mean}</b>" if cell.best else mean
            note = _count_note(table, method, cell)
            extra = f" <small>{esc(note.strip())}</small>" if note else ""
            ci = (f' <span class="ci">[{fmt(cell.low, digits)}, {fmt(cell.high, digits)}]</span>'
                  if math.isfinite(cell.low) else "")
            cells.append(f"<td>{mean}{ci}{extra}</td>")
        cells += [f"<td>{table.n[method]}</td>", f"<td>{table.flagged[method]}</td>"]
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in _notes(table, confidence, resamples))
    return (f"<h3>{esc(table.title)}</h3>\n<table>\n<thead><tr>{''.join(head_metric)}</tr>"
            f"<tr>{''.join(head_score)}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>\n" + notes)


def tidy_csv_frame(summary: pd.DataFrame, tables: Sequence[Table]) -> pd.DataFrame:
    """The summary with a ``best`` column (as bolded in the tables) and ``arrow``."""
    best = {(t.model, t.dataset, m, *c): cell.best for t in tables for (m, c), cell in t.cells.items()}
    frame = summary.copy()
    frame["best"] = [best.get(k, False) for k in zip(frame["model"], frame["dataset"], frame["method"],
                                                     frame["metric"], frame["score"])]
    frame["arrow"] = [arrow(None if c in UNORIENTED_CATEGORIES else _direction(v))
                      for c, v in zip(frame["category"], frame["higher_is_better"])]
    return frame
