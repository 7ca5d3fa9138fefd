"""Comparisons against their references on fixed fixtures: scipy.stats (wilcoxon,
friedmanchisquare, kendalltau, spearmanr), statsmodels and hand-computed Holm / Benjamini-Hochberg
cases, the krippendorff package and Krippendorff's textbook example, Demsar's Nemenyi table; the
files and the page; the per-image viewer's data; the percentile clip of the maps."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from salbench.harness.store import SCORE_COLUMNS
from salbench.reports import compare
from salbench.reports.stats import bootstrap_ci, label_variants, summarize


def rows(method, metric, score, values, *, higher=True, category="localization", ids=None, run="r0",
         protocol=None, target_rule="label", model="toy_net", dataset="toy_set"):
    n = len(values)
    return pd.DataFrame({
        "image_id": ids or [f"img{i:03d}" for i in range(n)], "image_index": list(range(n)), "method": method,
        "model": model, "dataset": dataset, "target_rule": target_rule, "target": 0, "label": 0, "predicted": 0,
        "metric": metric, "score": score, "value": np.asarray(values, dtype=float), "category": category,
        "higher_is_better": higher, "scope": "image", "flag": "", "preset": "toy",
        "protocol": json.dumps(protocol or {"threshold": 0.2}), "method_options": "{}", "run": run,
        "baseline": method in ("random", "center"),
    })[SCORE_COLUMNS + ["run", "baseline"]]


RNG = np.random.default_rng(7)
N = 40
TRUE = RNG.uniform(0.2, 0.9, N)
FIXTURE = {
    "good": TRUE + RNG.normal(0, 0.05, N),
    "same": TRUE + RNG.normal(0, 0.05, N),
    "worse": TRUE - 0.15 + RNG.normal(0, 0.05, N),
    "random": RNG.uniform(0.0, 0.4, N),
}


@pytest.fixture
def scores() -> pd.DataFrame:
    frames = [rows(m, "loc", "iou", v) for m, v in FIXTURE.items()]
    frames += [rows(m, "loc", "energy", np.clip(v + RNG.normal(0, 0.05, N), 0, 1)) for m, v in FIXTURE.items()]
    frames += [rows(m, "rise", "deletion_auc", 1 - v + RNG.normal(0, 0.1, N), higher=False, category="faithfulness")
               for m, v in FIXTURE.items()]
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- paired tests
def test_pairwise_matches_scipy_wilcoxon_and_the_paired_bootstrap(scores):
    pairs = compare.pairwise(scores, compare.CompareOptions(resamples=500, seed=3))
    assert list(pairs.columns[:13]) == ["model", "dataset", "score", "method_a", "method_b", "n", "mean_diff", "ci_low",
                                        "ci_high", "p_value", "p_adjusted", "significant", "effect_size"]
    iou = pairs[pairs["score"] == "loc/iou"].set_index(["method_a", "method_b"])
    assert len(iou) == 6  # every pair of the 4 methods
    for (a, b), row in iou.iterrows():
        d = FIXTURE[a] - FIXTURE[b]
        assert row["n"] == N and row["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert row["p_value"] == pytest.approx(scipy_stats.wilcoxon(FIXTURE[a], FIXTURE[b]).pvalue, rel=1e-12)
        # the paired bootstrap: one (R, n) index matrix from default_rng(seed), as every interval of the report
        index = np.random.default_rng(3).integers(0, N, size=(500, N))
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(np.percentile(d[index].mean(1), [2.5, 97.5]), abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_ci(d, 500, 0.95, 3), abs=1e-15)
    assert iou.loc[("good", "worse"), "significant"] and iou.loc[("good", "worse"), "better"] == "good"
    assert not iou.loc[("good", "same"), "significant"] and iou.loc[("good", "same"), "better"] == ""
    # lower is better: the smaller deletion AUC wins
    deletion = pairs[pairs["score"] == "rise/deletion_auc"].set_index(["method_a", "method_b"])
    assert deletion.loc[("good", "random"), "better"] == "good" and deletion.loc[("good", "random"), "mean_diff"] < 0


def test_rank_biserial_by_hand():
    # |d| ranks 1..5; positive: 1, 3, 4 -> R+ = 8; negative: 2, 5 -> R- = 7; r = (8 - 7) / 15
    assert compare.rank_biserial([0.1, -0.2, 0.3, 0.4, -0.5]) == pytest.approx(1 / 15)
    # zeros dropped; ties of |d| share their average rank: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3
    assert compare.rank_biserial([1.0, -1.0, 2.0, 0.0]) == pytest.approx((1.5 + 3 - 1.5) / 6)
    assert compare.rank_biserial([0.0, 0.0]) == 0.0 and compare.rank_biserial([2.0, 3.0]) == 1.0


def test_identical_methods_and_float_rounding_are_no_difference():
    base = np.linspace(0.1, 0.9, 30)
    frame = pd.concat([rows("a", "m", "s", base), rows("b", "m", "s", base + np.where(np.arange(30) % 2, 1e-7, -2e-7)),
                       rows("c", "m", "s", base)])
    pairs = compare.pairwise(frame).set_index(["method_a", "method_b"])
    for pair in (("a", "b"), ("a", "c")):
        assert pairs.loc[pair, "p_value"] == 1.0 and pairs.loc[pair, "n_nonzero"] == 0
        assert not pairs.loc[pair, "significant"] and pairs.loc[pair, "effect_size"] == 0.0
    strict = compare.pairwise(frame, compare.CompareOptions(tie_tolerance=0.0)).set_index(["method_a", "method_b"])
    assert strict.loc[("a", "b"), "n_nonzero"] == 30


@pytest.mark.parametrize("correction, expected", [
    pytest.param("holm", [0.03, 0.06, 0.06, 0.02], id="holm"),  # sorted .005,.01,.03,.04 x 4,3,2,1, running max
    pytest.param("bh", [0.02, 0.04, 0.04, 0.02], id="bh"),  # x 4/1, 4/2, 4/3, 4/4, running min from the top
    pytest.param("none", [0.01, 0.04, 0.03, 0.005], id="none"),
])
def test_corrections_hand_computed(correction, expected):
    p = [0.01, 0.04, 0.03, 0.005]
    assert compare.adjust(p, correction) == pytest.approx(expected)
    assert np.isnan(compare.adjust([np.nan, 0.1], correction)[0])


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_corrections_match_statsmodels(method):
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(0).uniform(0, 0.2, 37) ** 2
    reference = multipletests(p, method={"holm": "holm", "bh": "fdr_bh"}[method])[1]
    assert compare.adjust(p, method) == pytest.approx(reference, abs=1e-15)
    with_nan = np.concatenate([p[:5], [np.nan], p[5:]])  # NaN entries do not count in m
    assert np.isnan(compare.adjust(with_nan, method)[5])
    assert np.delete(compare.adjust(with_nan, method), 5) == pytest.approx(reference, abs=1e-15)
    with pytest.raises(ValueError, match="correction must be one of holm, bh, none"):
        compare.adjust(p, "bonferroni")


# --------------------------------------------------------------------------- rankings
def test_rankings_friedman_and_bootstrap_rank_intervals(scores):
    options = compare.CompareOptions(resamples=400, seed=1)
    cells = compare.cells(scores)
    ranks = compare.rankings(cells, options)
    iou = ranks[ranks["score"] == "loc/iou"].set_index("method")
    matrix = np.column_stack([FIXTURE[m] for m in FIXTURE])
    expected = scipy_stats.friedmanchisquare(*matrix.T)
    assert iou["friedman_chi2"].iloc[0] == pytest.approx(expected.statistic) and iou["friedman_p"].iloc[0] == pytest.approx(
        expected.pvalue)
    per_image = scipy_stats.rankdata(-matrix, axis=1)
    assert iou.loc[list(FIXTURE), "mean_rank"].to_numpy() == pytest.approx(per_image.mean(0))
    index = np.random.default_rng(1).integers(0, N, size=(400, N))
    boot = per_image[index].mean(1)
    assert iou.loc[list(FIXTURE), "rank_ci_low"].to_numpy() == pytest.approx(np.percentile(boot, 2.5, axis=0))
    assert iou.loc[list(FIXTURE), "rank_ci_high"].to_numpy() == pytest.approx(np.percentile(boot, 97.5, axis=0))
    assert iou.loc["random", "position"] == 4 and iou.loc["random", "position_ci_low"] == 4
    # lower is better: ranks of the negated values
    deletion = ranks[ranks["score"] == "rise/deletion_auc"].set_index("method")
    assert deletion.loc["random", "mean_rank"] == deletion["mean_rank"].max()
    assert iou["cd"].iloc[0] == pytest.approx(compare.critical_difference(4, N, 0.05))


DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


@pytest.mark.parametrize("k", sorted(DEMSAR_Q05))
def test_nemenyi_critical_difference_matches_demsar_table(k):
    n = 14
    assert compare.critical_difference(k, n, 0.05) == pytest.approx(DEMSAR_Q05[k] * np.sqrt(k * (k + 1) / (6 * n)),
                                                                  rel=5e-4)


def test_cliques_by_hand():
    ranks = {"a": 1.0, "b": 1.4, "c": 2.2, "d": 3.5}
    assert compare.cliques(ranks, cd=1.0) == [["a", "b"], ["b", "c"]]
    assert compare.cliques(ranks, cd=3.0) == [["a", "b", "c", "d"]]
    assert compare.cliques(ranks, not_separated=[("a", "b"), ("b", "c"), ("a", "c")]) == [["a", "b", "c"]]
    assert compare.cliques(ranks, not_separated=[("c", "d")]) == [["c", "d"]]


def test_rankings_across_scores_use_the_score_means(scores):
    summary = summarize(scores, 50)
    across = compare.rankings_across_scores(summary, compare.CompareOptions(resamples=50)).set_index("method")
    means = np.array([[FIXTURE[m].mean() for m in FIXTURE]])
    assert across["n"].iloc[0] == 3 and across.loc["random", "mean_rank"] == 4.0
    assert means.shape == (1, 4)


# --------------------------------------------------------------------------- agreement and reliability
def test_metric_agreement_matches_scipy(scores):
    summary = summarize(scores, 50)
    cells = compare.cells(scores)
    agreement = compare.metric_agreement(summary, cells)
    row = agreement[(agreement["score_a"] == "loc/iou") & (agreement["score_b"] == "rise/deletion_auc")].iloc[0]
    means = summary.set_index(["metric", "score", "method"])["mean"]
    iou = [means[("loc", "iou", m)] for m in FIXTURE]
    deletion = [-means[("rise", "deletion_auc", m)] for m in FIXTURE]  # oriented
    reference = scipy_stats.kendalltau(iou, deletion)
    assert row["kendall_tau"] == pytest.approx(reference.statistic) and row["kendall_p"] == pytest.approx(reference.pvalue)
    by_cell = {c.label: c for c in cells}
    rhos = [scipy_stats.spearmanr(by_cell["loc/iou"].values[m], -by_cell["rise/deletion_auc"].values[m]).statistic
            for m in FIXTURE]
    assert row["spearman_rho"] == pytest.approx(np.mean(rhos)) and row["spearman_methods"] == 4
    matrix = compare.agreement_matrix(agreement, "kendall_tau")[("toy_net", "toy_set")]
    assert matrix.loc["rise/deletion_auc", "loc/iou"] == row["kendall_tau"] and matrix.loc["loc/iou", "loc/iou"] == 1


# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units
KRIPPENDORFF_C = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
])


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                               ("ratio", 0.797)])
def test_krippendorff_alpha_textbook_example(level, published):
    assert compare.krippendorff_alpha(KRIPPENDORFF_C, level) == pytest.approx(published, abs=5e-4)


def test_metric_reliability_definitions(scores):
    import krippendorff

    cells = {c.label: c for c in compare.cells(scores)}
    table = compare.metric_reliability(list(cells.values())).set_index("score")
    iou = cells["loc/iou"]
    ranks = scipy_stats.rankdata(-iou.values.to_numpy(), axis=1)  # images rate the methods
    assert table.loc["loc/iou", "inter_rater_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=ranks, level_of_measurement="ordinal"))
    pair_rhos = [scipy_stats.spearmanr(FIXTURE[a], FIXTURE[b]).statistic
                 for i, a in enumerate(FIXTURE) for b in list(FIXTURE)[i + 1:]]
    assert table.loc["loc/iou", "inter_method_rho"] == pytest.approx(np.mean(pair_rhos))
    # internal consistency: the other localization score (energy), per method, averaged
    energy = cells["loc/energy"]
    rhos = [scipy_stats.spearmanr(iou.values[m], energy.values[m]).statistic for m in FIXTURE]
    assert table.loc["loc/iou", "internal_consistency_rho"] == pytest.approx(np.mean(rhos))
    assert np.isnan(table.loc["rise/deletion_auc", "internal_consistency_rho"])  # alone in its category
    # every image ranking the methods alike: perfect inter-rater reliability
    steady = pd.concat([rows(m, "x", "s", np.full(10, v) + np.linspace(0, 0.01, 10))
                        for m, v in (("a", 0.9), ("b", 0.5), ("c", 0.1))])
    assert compare.metric_reliability(compare.cells(steady))["inter_rater_alpha"].iloc[0] == pytest.approx(1.0)


def test_without_krippendorff_the_alpha_is_empty_with_a_note(scores, monkeypatch):
    monkeypatch.setitem(sys.modules, "krippendorff", None)
    compare.MISSING_NOTES.clear()
    table = compare.metric_reliability(compare.cells(scores))
    assert table["inter_rater_alpha"].isna().all() and table["inter_method_rho"].notna().all()
    assert "krippendorff" in compare.MISSING_NOTES["krippendorff"]


def test_protocol_sensitivity_kendall_between_variants():
    means_a = {"g": 0.9, "h": 0.6, "r": 0.1}
    means_b = {"g": 0.2, "h": 0.6, "r": 0.7}  # the ranking reverses under the other substrate
    frame = pd.concat([rows(m, "rise", "deletion_auc", [v, v + 0.01], protocol={"substrate": s}, run=s)
                       for s, means in (("blur", means_a), ("zero", means_b)) for m, v in means.items()],
                      ignore_index=True)
    frame["higher_is_better"] = False
    summary = summarize(label_variants(frame), 20)
    table = compare.protocol_sensitivity(summary)
    assert len(table) == 1
    row = table.iloc[0]
    assert {row["variant_a"], row["variant_b"]} == {"rise[substrate=blur]", "rise[substrate=zero]"}
    assert row["kendall_tau"] == pytest.approx(scipy_stats.kendalltau([0.905, 0.605, 0.105], [0.205, 0.605, 0.705])
                                               .statistic) == pytest.approx(-1.0)
    assert row["best_a"] == "r" and row["best_b"] == "g" and not row["same_best"]


def test_runs_with_another_target_rule_are_variants_but_a_fixed_rule_is_not():
    frame = pd.concat([rows("g", "loc", "iou", [0.5, 0.6], run="a", target_rule="label"),
                       rows("g", "loc", "iou", [0.1, 0.2], run="b", target_rule="predicted"),
                       rows("g", "pg", "hit", [1.0, 0.0], run="a", target_rule="present"),
                       rows("g", "pg", "hit", [1.0, 0.0], run="b", target_rule="present")], ignore_index=True)
    metrics = set(label_variants(frame)["metric"])
    assert metrics == {"loc[target=label]", "loc[target=predicted]", "pg"}


# --------------------------------------------------------------------------- tables
def test_a_score_without_values_is_left_out_of_the_tables():
    from salbench.reports.tables import build_tables, to_markdown

    frame = pd.concat([rows(m, "pg", s, v) for m in ("a", "random", "center")
                       for s, v in (("hit", [1.0, 0.0]), ("hit_difficult", [np.nan, np.nan]))])
    text = "\n".join(to_markdown(t) for t in build_tables(summarize(frame, 20)))
    assert "pg/hit ↑" in text and "hit_difficult" not in text


def test_the_report_works_without_the_optional_packages_and_says_so(tmp_path, monkeypatch):
    from test_reports import make_job, make_results

    from salbench.reports.report import ReportOptions, write_report

    monkeypatch.setitem(sys.modules, "krippendorff", None)
    make_job(tmp_path / "run", make_results(), side_tables=False)
    write_report([str(tmp_path / "run")], tmp_path / "report", ReportOptions(resamples=50))
    page = (tmp_path / "report" / "index.html").read_text()
    assert "the krippendorff package is not installed" in page
    reliability = pd.read_csv(tmp_path / "report" / "compare" / "metric_reliability.csv")
    assert reliability["inter_rater_alpha"].isna().all()
    assert (tmp_path / "report" / "compare" / "pairwise.csv").stat().st_size > 100


def test_report_options_are_checked_before_anything_is_written(tmp_path):
    from test_reports import make_job, make_results

    from salbench.reports.report import ReportOptions, write_report

    make_job(tmp_path / "run", make_results(), side_tables=False)
    with pytest.raises(ValueError, match="correction must be one of holm, bh, none; got 'bonferroni'"):
        write_report([str(tmp_path / "run")], tmp_path / "report", ReportOptions(correction="bonferroni"))
    with pytest.raises(ValueError, match="clip_percentile must be in"):
        write_report([str(tmp_path / "run")], tmp_path / "report", ReportOptions(clip_percentile=0))
    assert not (tmp_path / "report").exists()
