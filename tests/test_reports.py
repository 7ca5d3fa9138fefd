"""Reports: statistics against hand-computed references, table formats, every figure, the page."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
import pytest

from salbench.reports import load, summarize
from salbench.reports.stats import bootstrap_ci, curve_bands
from salbench.reports.tables import build_tables, to_html, to_latex, to_markdown
from salbench.harness.store import SCORE_COLUMNS

LOC = {"iou": [0.9, 0.5, 0.7, 0.6, np.nan, 0.8], "random": [0.1, 0.3, 0.2, 0.2, 0.4, 0.1],
       "center": [0.3, 0.2, 0.25, 0.35, 0.3, 0.2]}


def rows(method, metric, score, values, *, higher=True, category="localization", flags=None, scope="image",
         model="toy_net", dataset="toy_set", options=None, protocol=None):
    n = len(values)
    flags = flags or [""] * n
    ids = [f"img{i}" for i in range(n)] if scope == "image" else [None] * n
    return pd.DataFrame({
        "image_id": ids, "image_index": list(range(n)) if scope == "image" else [-1] * n, "method": method,
        "model": model, "dataset": dataset, "target_rule": "label", "target": 0, "label": 0, "predicted": 0,
        "metric": metric, "score": score, "value": np.asarray(values, dtype=float), "category": category,
        "higher_is_better": higher, "scope": scope, "flag": flags, "preset": "toy",
        "protocol": json.dumps(protocol or {"threshold": 0.2}), "method_options": json.dumps(options or {}),
    })[SCORE_COLUMNS]


def make_results() -> pd.DataFrame:
    """gradcam (one flagged map, one undefined value), guided_gc, random, center; a lower-is-better
    score; a dataset-level score; a cost score."""
    return pd.concat([
        rows("gradcam", "loc", "iou", [0.9, 0.5, 0.7, np.nan, np.nan, 0.8], flags=["", "", "", "constant_map", "", ""]),
        rows("guided_gc", "loc", "iou", [0.4, 0.6, 0.5, 0.55, 0.45, 0.5]),
        rows("random", "loc", "iou", LOC["random"]),
        rows("center", "loc", "iou", LOC["center"]),
        rows("gradcam", "rise", "deletion_auc", [0.2, 0.1, 0.3, 0.25, 0.15, 0.2], higher=False, category="faithfulness"),
        rows("guided_gc", "rise", "deletion_auc", [0.3, 0.35, 0.2, 0.4, 0.3, 0.25], higher=False,
             category="faithfulness"),
        rows("random", "rise", "deletion_auc", [0.5, 0.4, 0.45, 0.6, 0.5, 0.55], higher=False, category="faithfulness"),
        rows("gradcam", "wsol", "maxboxacc", [0.61], scope="dataset"),
        rows("random", "wsol", "maxboxacc", [0.2], scope="dataset"),
        rows("gradcam", "time", "seconds", [0.01, 0.012, 0.011, 0.01, 0.013, 0.01], higher=False, category="cost"),
        rows("guided_gc", "time", "seconds", [0.03, 0.031, 0.029, 0.03, 0.032, 0.03], higher=False, category="cost"),
    ], ignore_index=True)


@pytest.fixture
def results() -> pd.DataFrame:
    return make_results()


def reference_ci(values, resamples, confidence, seed):
    """Independent percentile bootstrap: one (R, n) index matrix from default_rng(seed)."""
    values = np.asarray(values, dtype=float)
    index = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[index].mean(axis=1)
    alpha = 1 - confidence
    return np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])


def cell(summary, method, score):
    return summary[(summary["method"] == method) & (summary["score"] == score)].iloc[0]


# --------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("resamples,confidence,seed", [pytest.param(1000, 0.95, 0, id="default"),
                                                       pytest.param(400, 0.9, 7, id="other-settings")])
def test_summary_means_and_intervals_equal_hand_computed_ones(results, resamples, confidence, seed):
    summary = summarize(results, resamples, confidence, seed)
    grad = cell(summary, "gradcam", "iou")
    used = [0.9, 0.5, 0.7, 0.8]  # the flagged map (img3) and the NaN (img4) are left out
    assert grad["mean"] == pytest.approx(np.mean(used), abs=1e-12)
    assert (grad["n"], grad["n_flagged"], grad["n_undefined"], grad["n_images"]) == (4, 1, 1, 6)
    assert np.allclose([grad["ci_low"], grad["ci_high"]], reference_ci(used, resamples, confidence, seed), atol=1e-12)
    for method in ("random", "center"):
        row = cell(summary, method, "iou")
        assert row["mean"] == pytest.approx(np.mean(LOC[method]), abs=1e-12) and row["n"] == 6
        assert np.allclose([row["ci_low"], row["ci_high"]], reference_ci(LOC[method], resamples, confidence, seed))
    assert grad["ci_low"] < grad["mean"] < grad["ci_high"]
    # one run's dataset-level value: a mean, no interval
    assert cell(summary, "gradcam", "maxboxacc")["n"] == 1 and cell(summary, "gradcam", "maxboxacc")["mean"] == 0.61
    assert np.isnan(cell(summary, "gradcam", "maxboxacc")["ci_low"])


def test_hand_computed_percentile_interval_of_a_tiny_sample():
    # 2 values: bootstrap means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    low, high = bootstrap_ci([0.0, 1.0], resamples=20000, confidence=0.9, seed=1)
    assert (low, high) == (0.0, 1.0)
    low, high = bootstrap_ci([0.0, 1.0], resamples=20000, confidence=0.4, seed=1)
    assert (low, high) == (0.5, 0.5)
    assert bootstrap_ci([3.0], 100) == (3.0, 3.0)
    assert all(np.isnan(bootstrap_ci([], 100)))


def test_an_image_scored_by_two_runs_counts_once(results):
    twice = pd.concat([results.assign(run="a"), results.assign(run="b")], ignore_index=True)
    one, two = summarize(results.assign(run="a")), summarize(twice)
    image = (one["scope"] == "image").to_numpy()
    pd.testing.assert_frame_equal(one[image].drop(columns="n_runs"), two[image].drop(columns=["n_runs"]).assign(
        n_flagged=two["n_flagged"] // 2, n_undefined=two["n_undefined"] // 2))
    assert (two["n_runs"] == 2).all()
    # a dataset-level score has one value per run: two runs are two units
    assert (two.loc[~image, "n"] == 2).all() and (one.loc[~image, "n"] == 1).all()


def test_runs_with_different_options_are_never_pooled(results):
    from salbench.reports.stats import label_variants

    other = rows("gradcam", "loc", "iou", [0.1] * 6, options={"layer": "layer3"})
    frame = pd.concat([results.assign(method_options=json.dumps({"layer": "layer4"})), other], ignore_index=True)
    methods = set(label_variants(frame)["method"])
    assert {"gradcam[layer=layer4]", "gradcam[layer=layer3]"} <= methods and "gradcam" not in methods


def test_curve_bands_match_a_per_step_bootstrap():
    rng = np.random.default_rng(3)
    curves = rng.random((5, 4))
    frame = pd.DataFrame([{"model": "m", "dataset": "d", "method": "gc", "curve": "deletion", "image_id": f"i{i}",
                           "step": s, "fraction": s / 3, "value": curves[i, s]} for i in range(5) for s in range(4)])
    bands = curve_bands(frame, resamples=300, seed=2)
    index = np.random.default_rng(2).integers(0, 5, size=(300, 5))
    means = curves[index].mean(axis=1)  # [R, steps]
    assert np.allclose(bands["mean"], curves.mean(0))
    assert np.allclose(bands["ci_low"], np.percentile(means, 2.5, axis=0))
    assert np.allclose(bands["ci_high"], np.percentile(means, 97.5, axis=0))
    assert (bands["n"] == 5).all()


# --------------------------------------------------------------------------- tables
def test_markdown_bold_best_in_each_direction_and_baselines_always_shown(results):
    tables = build_tables(summarize(results, 200))
    by_category = {t.category: t for t in tables}
    assert list(by_category) == ["localization", "faithfulness", "cost"]
    loc = to_markdown(by_category["localization"])
    lines = {line.split("|")[1].strip(): line for line in loc.splitlines() if line.startswith("| ")}
    assert "iou ↑" in loc and "maxboxacc ↑" in loc
    assert "**0.725" in lines["gradcam"] and "**" not in lines["guided_gc"]  # higher is better
    assert lines["gradcam"].rstrip(" |").endswith("| 6 | 1")  # n images, flagged maps
    faith = to_markdown(by_category["faithfulness"])
    flines = {line.split("|")[1].strip(): line for line in faith.splitlines() if line.startswith("| ")}
    assert "deletion_auc ↓" in faith and "**0.200" in flines["gradcam"] and "**" not in flines["*random*"]
    # center never ran rise: its row is still there, empty, and the note says so
    assert "*center*" in flines and flines["*center*"].count("–") == 1
    assert "not in these runs: center" in faith
    order = [line.split("|")[1].strip() for line in loc.splitlines() if line.startswith("| ")][1:]
    assert order == ["gradcam", "guided_gc", "*random*", "*center*"]


def test_a_wide_category_is_split_into_tables_of_whole_metrics():
    frame = pd.concat([rows(m, metric, f"s{i}", [0.1, 0.2]) for m in ("a", "random", "center")
                       for metric, k in (("m1", 4), ("m2", 3), ("m3", 2)) for i in range(k)])
    tables = build_tables(summarize(frame, 20), max_columns=6)
    assert [len(t.columns) for t in tables] == [4, 5] and [t.part for t in tables] == ["m1", "m2, m3"]
    labels = [re.search(r"\\label\{([^}]*)\}", to_latex(t)).group(1) for t in tables]
    assert len(set(labels)) == 2


def test_ties_at_display_precision_are_all_bold():
    frame = pd.concat([rows("a", "m", "s", [0.5, 0.5]), rows("b", "m", "s", [0.5, 0.5004]), rows("random", "m", "s", [0.1, 0.2])])
    text = to_markdown(build_tables(summarize(frame, 50))[0])
    assert text.count("**0.500") == 2


def latex_problems(text: str) -> List[str]:
    """Structural check of LaTeX tables: balanced braces, matched environments, booktabs rule
    order, every row with as many cells as the tabular spec, no unescaped specials."""
    problems = []
    clean = re.sub(r"\\[{}%&$#_]", "", text)
    clean = "\n".join(line.split("%")[0] for line in clean.splitlines())  # comments
    depth = 0
    for ch in clean:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            problems.append("unbalanced }")
            depth = 0
    if depth:
        problems.append("unbalanced {")
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", clean):
        if kind == "begin":
            stack.append(name)
        elif not stack or stack.pop() != name:
            problems.append(f"\\end{{{name}}} without its \\begin")
    if stack:
        problems.append(f"unclosed environments {stack}")
    for match in re.finditer(r"\\begin\{tabular\}\{([^}]*)\}(.*?)\\end\{tabular\}", clean, re.S):
        columns = len(re.findall(r"[lrc]", match.group(1)))
        body = match.group(2)
        rules = re.findall(r"\\(toprule|midrule|bottomrule)", body)
        if not rules or rules[0] != "toprule" or rules[-1] != "bottomrule" or rules.count("toprule") != 1:
            problems.append(f"booktabs rules out of order: {rules}")
        for row in body.split(r"\\")[:-1]:
            row = re.sub(r"\\(toprule|midrule|bottomrule|cmidrule\(lr\)\{[\d-]+\})", "", row).strip()
            if not row:
                continue
            cells = row.split("&")
            width = sum(int(m) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c) and
                                   re.match(r"\s*\\multicolumn\{(\d+)\}", c).group(1)) else 1 for c in cells)
            if width != columns:
                problems.append(f"row has {width} columns, spec {columns}: {row[:60]}")
        if "\\\\" not in body:
            problems.append("tabular without rows")
    text_only = re.sub(r"\$[^$]*\$", "", re.sub(r"\\label\{[^}]*\}", "", clean))  # math and labels may hold _
    if re.search(r"[_#^]", text_only):
        problems.append("unescaped _ or # in text")
    return problems


def test_latex_tables_are_well_formed_booktabs(results):
    frame = pd.concat([results, rows("grad_cam++", "loc", "iou", [0.5] * 6)], ignore_index=True)
    tables = build_tables(summarize(frame, 200))
    latex = "\n".join(to_latex(t) for t in tables)
    assert latex_problems(latex) == []
    assert r"grad\_cam++" in latex and r"\textbf{0.725}" in latex and r"$\downarrow$" in latex
    assert latex.count(r"\begin{table}") == len(tables) == 3
    labels = re.findall(r"\\label\{([^}]*)\}", latex)
    assert len(set(labels)) == len(labels)
    # the checker itself catches broken tables
    broken = latex.replace(r"\bottomrule", "", 1).replace(r" \\", r" & extra \\", 1).replace("{tabular}", "{tabular", 1)
    assert len(latex_problems(broken)) >= 2
    assert latex_problems(latex.replace(r"\_", "_", 1))


def test_html_table_marks_best_and_baselines(results):
    table = build_tables(summarize(results, 100))[0]
    text = to_html(table)
    assert text.count("<tr") == 2 + 4 and "<b>0.725</b>" in text and 'class="baseline"' in text


# --------------------------------------------------------------------------- report directory
def make_job(job: Path, results: pd.DataFrame, side_tables: bool = True) -> Path:
    """A job directory as the runner writes it, with (``side_tables``) every side table a report
    can draw and a gallery."""
    from salbench.reports.gallery import save_gallery
    from salbench.harness.store import write_json

    import torch

    job.mkdir(parents=True)
    results.to_parquet(job / "scores.parquet", index=False)
    from salbench.metrics import create_metric

    write_json(job / "run.json", {"status": "completed", "config": {"model": {"name": "toy_net"},
                                  "dataset": {"name": "toy_set"}, "method": {"gradcam": {}}, "metric": {"loc": {}}},
                                  "counts": {"images": 6, "flagged_maps": 1},
                                  "components": {"methods": {m: {"name": m, "baseline": m in ("random", "center")}
                                                             for m in results["method"].unique()},
                                                 "metrics": {"rise": create_metric("rise").describe()}}})
    if not side_tables:
        return job
    rng = np.random.default_rng(0)
    curves = []
    for method, speed in (("gradcam", 8.0), ("guided_gc", 4.0), ("random", 1.5)):
        for kind in ("deletion", "insertion"):
            for i in range(6):
                x = np.linspace(0, 1, 21)
                y = np.exp(-speed * x) if kind == "deletion" else 1 - np.exp(-speed * x)
                y = np.clip(y + rng.normal(0, 0.05, x.size), 0, 1)
                curves += [{"image_id": f"img{i}", "method": method, "metric": "rise", "curve": kind, "step": s,
                            "fraction": x[s], "value": y[s]} for s in range(21)]
    pd.DataFrame(curves).to_parquet(job / "curves.parquet", index=False)
    randomization = [{"image_id": f"img{i}", "method": m, "mode": mode, "depth": d, "layer": f"layer{5 - d}",
                      "similarity": sim, "value": (0.9 ** d if m == "guided_gc" else 0.5 ** d) + rng.normal(0, 0.03)}
                     for m in ("gradcam", "guided_gc") for mode in ("cascading", "independent") for d in range(1, 5)
                     for sim in ("spearman_abs", "ssim") for i in range(6)]
    pd.DataFrame(randomization).to_parquet(job / "randomization.parquet", index=False)
    taus = np.arange(0, 1, 0.01)
    wsol = [pd.DataFrame({"variant": v, "iou_threshold": t, "tau": taus, "box_accuracy": 100 * a * np.sin(np.pi * taus),
                          "method": m}) for m, a in (("gradcam", 0.7), ("random", 0.2))
            for v, t in (("maxboxacc", 0.5), ("maxboxacc_v2", 0.3), ("maxboxacc_v2", 0.7))]
    pd.concat(wsol).assign(metric="wsol").to_parquet(job / "tau_curves.parquet", index=False)
    images = [torch.rand(3, 24, 24) for _ in range(2)]
    blob = torch.zeros(24, 24)
    blob[6:14, 8:18] = 1.0
    save_gallery(job / "gallery.png", {"images": images, "boxes": [torch.tensor([[8, 6, 17, 13]])] * 2, "labels": [0, 1],
                                       "maps": {"gradcam": [blob, blob], "random": [torch.rand(24, 24), torch.rand(24, 24)]}},
                 ["gradcam", "random"], ["zero", "one"])
    return job


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    from salbench.reports.report import ReportOptions, write_report

    tmp_path = tmp_path_factory.mktemp("report")
    make_job(tmp_path / "sweep" / "0", make_results())
    out = tmp_path / "report"
    written = write_report([str(tmp_path / "sweep")], out, ReportOptions(resamples=200))
    return out, written


def test_load_reads_every_job_once(tmp_path, results):
    make_job(tmp_path / "sweep" / "0", results, side_tables=False)
    make_job(tmp_path / "sweep" / "1", results.assign(model="other_net"), side_tables=False)
    scores = load([tmp_path / "sweep", tmp_path / "sweep" / "0"])
    assert len(scores) == 2 * len(results) and set(scores["model"]) == {"toy_net", "other_net"}
    assert list(scores.columns[: len(SCORE_COLUMNS)]) == SCORE_COLUMNS and {"run", "status"} <= set(scores.columns)
    assert (scores["status"] == "completed").all()


def test_report_writes_every_table_and_figure(report_dir):
    out, written = report_dir
    names = {p.name for p in written["figures"]}
    for stem in ("scores", "curves-toy_net-toy_set", "randomization-toy_net-toy_set",
                 "tau_curves-toy_net-toy_set", "timing", "gallery-0"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    for path in written["figures"] + written["tables"] + written["page"]:
        assert path.exists() and path.stat().st_size > (100 if path.parent.name == "compare" else 500), path
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
        if path.suffix == ".png":
            assert path.read_bytes().startswith(b"\x89PNG")
    csv = pd.read_csv(out / "summary.csv")
    assert {"mean", "ci_low", "ci_high", "n", "n_flagged", "best", "arrow"} <= set(csv.columns)
    assert csv.loc[(csv["method"] == "gradcam") & (csv["score"] == "iou"), "best"].item()
    assert latex_problems((out / "summary.tex").read_text()) == []


def test_index_html_is_self_contained(report_dir):
    out, written = report_dir
    text = (out / "index.html").read_text()
    assert text.count("<table") >= 4 and "<b>0.725</b>" in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == len([p for p in written["figures"] if p.suffix == ".png"])
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:|#)', text)  # nothing to fetch


def test_cli_writes_the_report_and_rejects_a_non_results_dir(tmp_path, results, capsys):
    from salbench.reports.cli import main

    make_job(tmp_path / "run", results[results["category"] == "localization"], side_tables=False)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--resamples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "gradcam" in printed and str((tmp_path / "rep" / "index.html").resolve()) in printed
    assert (tmp_path / "rep" / "index.html").exists()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2


def test_curve_plot_titles_and_legends_follow_each_curve_kind(tmp_path, monkeypatch):
    """ROAD's MoRF is lower-is-better and summarized by its mean (the metric's own score), rise's
    deletion by the trapezoid AUC over [0, 1]."""
    from salbench.reports import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem: figures.append(fig) or [])
    rows = []
    for curve, fractions, values in [("deletion", [0.0, 0.5, 1.0], [0.9, 0.3, 0.1]),
                                     ("morf", [0.1, 0.5, 0.9], [0.6, 0.2, 0.1]),
                                     ("lerf", [0.1, 0.5, 0.9], [0.9, 0.8, 0.4])]:
        for step, (fraction, value) in enumerate(zip(fractions, values)):
            rows.append({"model": "m", "dataset": "d", "method": "gradcam", "curve": curve, "step": step,
                         "fraction": fraction, "mean": value, "ci_low": value, "ci_high": value, "n": 4})
    from salbench.metrics import create_metric

    kinds = {**create_metric("rise").describe()["curve_kinds"], **create_metric("road").describe()["curve_kinds"]}
    plots.plot_curves(pd.DataFrame(rows), tmp_path / "curves", curve_kinds=kinds)
    axes = figures[0].axes
    titles = [ax.get_title() for ax in axes]
    assert titles == ["deletion (lower AUC is better)", "morf (lower mean is better)", "lerf (higher mean is better)"]
    legends = [ax.get_legend().get_texts()[0].get_text() for ax in axes]
    assert legends[0] == "gradcam (AUC 0.400, n=4)"  # (0.9 + 0.3) / 4 + (0.3 + 0.1) / 4
    assert legends[1] == "gradcam (mean 0.300, n=4)" and legends[2] == "gradcam (mean 0.700, n=4)"
    assert "least relevant first" in axes[2].get_xlabel()
