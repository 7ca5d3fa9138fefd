"""Comparisons that hold up: paired tests with multiplicity correction, rankings with bootstrap
intervals, the Friedman test and critical differences, metric agreement and reliability, and the
stability of rankings under protocol changes.

Every statistic reads the same per-image units as :func:`salbench.reports.stats.summarize`: per
(model, dataset, metric, score, method), the finite, unflagged values of ``scope == "image"``
rows, one unit per image (the mean of its rows: an image scored by several runs, or for several
classes present, counts once), sorted by ``image_index`` then ``image_id``. Two methods are
*paired* on the images both have. "Oriented" values are the values where higher is better
(``-value`` for a lower-is-better score), so that rank 1 is always the best method and a positive
correlation between two scores means that they agree.

Statistics come from scipy.stats (``wilcoxon``, ``friedmanchisquare``, ``kendalltau``,
``spearmanr``, ``rankdata``, ``studentized_range``) and krippendorff (``alpha``, optional: the
``stats`` extra; without it the alpha column is empty and :data:`MISSING_NOTES` says why); Holm
and Benjamini-Hochberg are the textbook step-down / step-up formulas (:func:`adjust`, vectorized;
tested equal to statsmodels' ``multipletests``, which costs ~50 ms a call: a demo report makes
hundreds).

* :func:`pairwise` -> ``compare/pairwise.csv``: per (model, dataset, score) and method pair, the
  mean paired difference with its paired bootstrap interval (the summary's seeded bootstrap of
  the per-image differences), the two-sided Wilcoxon signed-rank p-value over images, the
  p-value adjusted over every pair of the score (Holm by default, ``bh`` for Benjamini-Hochberg),
  and the matched-pairs rank-biserial correlation as the effect size.
* :func:`rankings` -> mean rank per method over images (rank 1 = best, ties averaged), its
  bootstrap interval, the rank of the method's mean score with its bootstrap interval, and the
  Friedman test; :func:`critical_difference` (Nemenyi, Demsar 2006) and :func:`cliques`.
* :func:`rankings_across_scores`: the same with the scores as "datasets" (Demsar 2006).
* :func:`metric_agreement`: Kendall's tau between the method rankings of two scores and the
  Spearman correlation of their per-image scores.
* :func:`metric_reliability`: Tomsett et al. 2020's inter-rater reliability (Krippendorff's
  alpha), inter-method reliability and internal consistency per score.
* :func:`protocol_sensitivity`: Kendall's tau between the method rankings of the variants of a
  metric (the protocol values a sweep changed).
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from salbench.reports import stats

CORRECTIONS = ("holm", "bh", "none")
ZERO_METHODS = ("wilcox", "pratt", "zsplit")
CD_TESTS = ("nemenyi", "wilcoxon-holm")
# scores that are settings chosen by a metric (no direction) are never compared
NEVER_COMPARED = ("parameter",)
# cost scores (time, memory) are compared pairwise and ranked per score, but not pooled with the
# quality scores in the rankings across scores, the agreement matrix or the reliability table
NOT_QUALITY = ("cost", "parameter")
PAIRWISE_COLUMNS = ["model", "dataset", "score", "method_a", "method_b", "n", "mean_diff", "ci_low", "ci_high",
                    "p_value", "p_adjusted", "significant", "effect_size", "metric", "higher_is_better", "better",
                    "n_nonzero", "statistic", "correction"]
MISSING_NOTES: Dict[str, str] = {}  # optional package -> what is missing without it (filled on first use)


@dataclass
class CompareOptions:
    """Choices of every comparison (recorded on the report page).

    ``alpha``: significance level after correction; ``correction``: ``holm`` (default), ``bh``
    (Benjamini-Hochberg) or ``none``, over every method pair of one (model, dataset, score);
    ``zero_method``: scipy.stats.wilcoxon's handling of zero differences (``wilcox``: dropped);
    ``tie_tolerance``: paired differences within +-this count as zero (float32 rounding of the
    stored scores: two methods computing the same map in another operation order must not differ);
    ``cd_test``: ``nemenyi`` (critical difference of mean ranks) or ``wilcoxon-holm`` (cliques
    of pairs that the corrected Wilcoxon tests do not separate); ``krippendorff_level``: the
    level of measurement of Krippendorff's alpha over the per-image ranks."""

    alpha: float = 0.05
    correction: str = "holm"
    zero_method: str = "wilcox"
    tie_tolerance: float = 1e-6
    cd_test: str = "nemenyi"
    krippendorff_level: str = "ordinal"
    resamples: int = stats.DEFAULT_RESAMPLES
    confidence: float = stats.DEFAULT_CONFIDENCE
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, valid in (("correction", self.correction, CORRECTIONS),
                                   ("zero_method", self.zero_method, ZERO_METHODS),
                                   ("cd_test", self.cd_test, CD_TESTS),
                                   ("krippendorff_level", self.krippendorff_level,
                                    ("nominal", "ordinal", "interval", "ratio"))):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}")
        if not self.tie_tolerance >= 0.0:
            raise ValueError(f"tie_tolerance must be >= 0; got {self.tie_tolerance}")


# --------------------------------------------------------------------------- units
def score_label(metric: str, score: str) -> str:
    return f"{metric}/{score}"


def units(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-image units of every image-scope cell: columns model, dataset, metric, score, method,
    image_index, image_id, value (the mean of the image's finite, unflagged values), category,
    higher_is_better, baseline; in first-seen order (:func:`cells` sorts the images by
    image_index, image_id, as the summary's bootstrap does)."""
    columns = ["model", "dataset", "metric", "score", "method", "image_index", "image_id", "value", "category",
               "higher_is_better", "baseline"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    frame = scores[scores["scope"] == "image"] if "scope" in scores.columns else scores
    frame = frame.assign(value=pd.to_numeric(frame["value"], errors="coerce").astype(np.float64))
    flag = frame["flag"].fillna("").astype(str) if "flag" in frame.columns else pd.Series("", index=frame.index)
    frame = frame[(flag == "") & np.isfinite(frame["value"].to_numpy()) & frame["image_id"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    if "baseline" not in frame.columns:
        frame = frame.assign(baseline=False)
    if "image_index" not in frame.columns:
        frame = frame.assign(image_index=-1)
    keys = ["model", "dataset", "metric", "score", "method", "image_index", "image_id"]
    out = frame.groupby(keys, sort=False, dropna=False).agg(
        value=("value", "mean"), category=("category", "first"), higher_is_better=("higher_is_better", "first"),
        baseline=("baseline", "any")).reset_index()
    return out[columns]


def method_order(methods: Iterable[str], baselines: Iterable[str] = ()) -> List[str]:
    """Methods in first-seen order, baselines last (the summary tables' row order)."""
    methods = list(dict.fromkeys(methods))
    baselines = set(baselines)
    return [m for m in methods if m not in baselines] + [m for m in methods if m in baselines]


@dataclass
class Cell:
    """The per-image units of one (model, dataset, metric, score): ``values`` images x methods
    (NaN where a method has no unit), methods in report order."""

    model: str
    dataset: str
    metric: str
    score: str
    category: Optional[str]
    higher_is_better: Optional[bool]
    values: pd.DataFrame
    baselines: Tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return score_label(self.metric, self.score)

    def oriented(self) -> pd.DataFrame:
        """The values with higher = better."""
        return self.values if self.higher_is_better is not False else -self.values

    def complete(self) -> pd.DataFrame:
        """Oriented values of the images that every method scored."""
        return self.oriented().dropna(axis=0, how="any")


def _direction(value) -> Optional[bool]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def cells(scores: pd.DataFrame, exclude_categories: Sequence[str] = NEVER_COMPARED) -> List[Cell]:
    """One :class:`Cell` per image-scope (model, dataset, metric, score) with a direction, in
    first-seen order; a score without any unit (e.g. the difficult-subset pointing game on a
    dataset without difficult objects) is left out."""
    table = units(scores)
    out: List[Cell] = []
    for (model, dataset, metric, score), part in table.groupby(["model", "dataset", "metric", "score"], sort=False):
        category = part["category"].iloc[0]
        higher = _direction(part["higher_is_better"].dropna().iloc[0] if part["higher_is_better"].notna().any()
                            else None)
        if category in exclude_categories or higher is None:
            continue
        baselines = tuple(dict.fromkeys(part.loc[part["baseline"].astype(bool), "method"]))
        wide = part.pivot_table(index=["image_index", "image_id"], columns="method", values="value", aggfunc="mean",
                                sort=True)
        wide = wide[method_order(part["method"], baselines)]
        out.append(Cell(model, dataset, metric, score, category, higher, wide, baselines))
    return out


# --------------------------------------------------------------------------- paired tests
def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation (King & Minium; Kerby 2014) of paired differences
    ``d`` [n]: ``(R+ - R-) / (R+ + R-)`` with R+- the sums of the ranks of |d| (average ranks for
    ties) over the positive / negative differences; zeros are dropped (as the Wilcoxon test's
    ``wilcox`` zero method). In [-1, 1]: 1 = every nonzero difference positive; 0 when all are zero."""
    from scipy.stats import rankdata

    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    positive, negative = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((positive - negative) / (positive + negative))


def ties_to_zero(differences: np.ndarray, tolerance: float) -> np.ndarray:
    """``differences`` with the values within +-``tolerance`` set to exactly 0."""
    d = np.asarray(differences, dtype=np.float64)
    return np.where(np.abs(d) <= tolerance, 0.0, d)


def signed_rank_test(differences: Sequence[float], zero_method: str = "wilcox", alternative: str = "two-sided",
                     tie_tolerance: float = 0.0) -> Tuple[float, float, int]:
    """scipy.stats.wilcoxon of paired differences [n] -> (statistic, p-value, nonzero count).
    Differences within +-``tie_tolerance`` are zeros; when every difference is zero there is no
    evidence of a shift: p = 1 (scipy refuses the case)."""
    from scipy.stats import wilcoxon

    d = ties_to_zero(differences, tie_tolerance)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return float("nan"), 1.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that n is small for the normal approximation
        result = wilcoxon(d, zero_method=zero_method, alternative=alternative)
    p = float(result.pvalue)
    return float(result.statistic), (1.0 if math.isnan(p) else p), nonzero


def adjust(p_values: Sequence[float], correction: str = "holm") -> np.ndarray:
    """p-values [m] adjusted for multiplicity: ``holm`` (Holm 1979, step-down), ``bh``
    (Benjamini & Hochberg 1995, step-up) or ``none``; NaN entries stay NaN and do not count.
    Holm ``max_{j<=i} min(1, (m - j + 1) p_(j))``, BH ``min_{j>=i} min(1, m p_(j) / j)`` (tested
    equal to statsmodels' ``multipletests``)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}; got {correction!r}")
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if not finite.any():
        return out
    out[finite] = p[finite] if correction == "none" else _adjust_textbook(p[finite], correction)
    return out


def _adjust_textbook(p: np.ndarray, correction: str) -> np.ndarray:
    m = len(p)
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if correction == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    else:
        adjusted = np.minimum.accumulate(np.minimum(1.0, m * ranked / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = adjusted
    return out


def pairwise(scores: pd.DataFrame, options: Optional[CompareOptions] = None,
             cell_list: Optional[List[Cell]] = None) -> pd.DataFrame:
    """Every method pair of every image-scope (model, dataset, score): :data:`PAIRWISE_COLUMNS`.

    ``mean_diff``: mean over the paired images of ``value_a - value_b`` (raw units, not
    oriented); ``ci_low``/``ci_high``: the seeded percentile bootstrap of that mean
    (:func:`salbench.reports.stats.bootstrap_ci`: the images resampled are the summary's);
    ``p_value``: two-sided Wilcoxon signed-rank (scipy, ``zero_method``), differences within
    ``tie_tolerance`` counted as zero; ``p_adjusted``: ``correction`` over every pair of the
    score; ``significant``: ``p_adjusted < alpha``; ``effect_size``: matched-pairs rank-biserial
    of ``a - b`` (:func:`rank_biserial`); ``better``: the significantly better method (by the
    effect's sign and the score's direction) or ""."""
    options = options or CompareOptions()
    rows: List[Dict[str, object]] = []
    for cell in (cells(scores) if cell_list is None else cell_list):
        start = len(rows)
        for a, b in itertools.combinations(list(cell.values.columns), 2):
            pair = cell.values[[a, b]].dropna()
            d = (pair[a] - pair[b]).to_numpy(dtype=np.float64)
            row = {"model": cell.model, "dataset": cell.dataset, "score": cell.label, "method_a": a, "method_b": b,
                   "n": int(len(d)), "metric": cell.metric, "higher_is_better": cell.higher_is_better,
                   "correction": options.correction}
            if len(d) == 0:
                row.update(mean_diff=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, effect_size=np.nan,
                           n_nonzero=0, statistic=np.nan)
            else:
                low, high = (stats.bootstrap_ci(d, options.resamples, options.confidence, options.seed)
                             if len(d) > 1 else (np.nan, np.nan))
                statistic, p, nonzero = signed_rank_test(d, options.zero_method, tie_tolerance=options.tie_tolerance)
                row.update(mean_diff=float(d.mean()), ci_low=low, ci_high=high, p_value=p, n_nonzero=nonzero,
                           statistic=statistic, effect_size=rank_biserial(ties_to_zero(d, options.tie_tolerance)))
            rows.append(row)
        block = rows[start:]
        adjusted = adjust([r["p_value"] for r in block], options.correction)
        for row, p_adj in zip(block, adjusted):
            row["p_adjusted"] = p_adj
            row["significant"] = bool(np.isfinite(p_adj) and p_adj < options.alpha)
            row["better"] = _better(row, cell.higher_is_better) if row["significant"] else ""
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def _better(row: Dict[str, object], higher_is_better: Optional[bool]) -> str:
    sign = np.sign(row["effect_size"]) or np.sign(row["mean_diff"])
    if not sign:
        return ""
    a_larger = sign > 0
    return str(row["method_a"] if a_larger == (higher_is_better is not False) else row["method_b"])


def wins(pairs: pd.DataFrame) -> Dict[Tuple[str, str], pd.DataFrame]:
    """Per (model, dataset): methods x methods, cell (A, B) = number of scores on which A is
    significantly better than B (the ``better`` column); the ``tested`` attribute holds the
    number of scores on which the pair was tested."""
    out = {}
    for (model, dataset), part in pairs.groupby(["model", "dataset"], sort=False):
        methods = list(dict.fromkeys(list(part["method_a"]) + list(part["method_b"])))
        won = pd.DataFrame(0, index=methods, columns=methods)
        tested = pd.DataFrame(0, index=methods, columns=methods)
        for row in part.itertuples(index=False):
            if row.n > 0:
                tested.loc[row.method_a, row.method_b] += 1
                tested.loc[row.method_b, row.method_a] += 1
            if row.better:
                loser = row.method_b if row.better == row.method_a else row.method_a
                won.loc[row.better, loser] += 1
        won.attrs["tested"] = tested
        out[(model, dataset)] = won
    return out


# --------------------------------------------------------------------------- rankings
def rank_rows(oriented: np.ndarray) -> np.ndarray:
    """[n, k] oriented values -> [n, k] ranks within each row: 1 = best (highest), ties averaged."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(oriented, dtype=np.float64), axis=1, method="average")


def friedman(oriented: np.ndarray) -> Tuple[float, float]:
    """scipy.stats.friedmanchisquare over the columns (methods) of [n blocks, k] -> (chi2, p);
    NaN when k < 3, n < 2 or every block is one tie."""
    from scipy.stats import friedmanchisquare

    matrix = np.asarray(oriented, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 3 or matrix.shape[0] < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        try:
            result = friedmanchisquare(*matrix.T)
        except ValueError:
            return float("nan"), float("nan")
    return float(result.statistic), float(result.pvalue)


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks (Demsar 2006, eq. 4): ``q_alpha *
    sqrt(k (k + 1) / (6 n))`` with ``q_alpha`` the studentized range quantile (scipy) over sqrt(2)
    for ``k`` methods and ``n`` blocks (images, or scores)."""
    from scipy.stats import studentized_range

    if k < 2 or n < 1:
        return float("nan")
    q = float(studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def cliques(mean_ranks: Dict[str, float], cd: Optional[float] = None,
            not_separated: Optional[Iterable[Tuple[str, str]]] = None) -> List[List[str]]:
    """Groups of methods that are not significantly different, as horizontal bars of a CD
    diagram: maximal runs of consecutive methods (by mean rank) whose every pair differs by less
    than ``cd`` (Nemenyi) or is in ``not_separated`` (Wilcoxon-Holm: pairs the corrected tests
    do not separate). Runs of one method are left out."""
    order = sorted(mean_ranks, key=lambda m: (mean_ranks[m], m))
    same = set()
    if not_separated is not None:
        same = {frozenset(p) for p in not_separated}

    def together(a: str, b: str) -> bool:
        if cd is not None:
            return abs(mean_ranks[a] - mean_ranks[b]) < cd
        return frozenset((a, b)) in same

    runs: List[List[str]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and all(together(order[x], order[j + 1]) for x in range(i, j + 1)):
            j += 1
        if j > i and not any(set(order[i:j + 1]) <= set(r) for r in runs):
            runs.append(order[i:j + 1])
    return runs


def not_separated(pairs: pd.DataFrame) -> List[Tuple[str, str]]:
    """The method pairs of one score's :func:`pairwise` rows that are not significant."""
    return [(a, b) for a, b, significant in zip(pairs["method_a"], pairs["method_b"], pairs["significant"])
            if not significant]


def block_pairwise(block: pd.DataFrame, options: CompareOptions) -> pd.DataFrame:
    """Wilcoxon signed-rank tests with ``options.correction`` between every two columns of
    ``block`` [blocks, methods] (oriented values, e.g. scores as blocks): the columns
    method_a, method_b, p_value, p_adjusted, significant (the Wilcoxon-Holm CD diagram's input)."""
    rows = []
    for a, b in itertools.combinations(list(block.columns), 2):
        d = (block[a] - block[b]).to_numpy(dtype=np.float64)
        _, p, _ = signed_rank_test(d, options.zero_method, tie_tolerance=options.tie_tolerance)
        rows.append({"method_a": a, "method_b": b, "p_value": p})
    frame = pd.DataFrame(rows, columns=["method_a", "method_b", "p_value"])
    frame["p_adjusted"] = adjust(frame["p_value"], options.correction) if len(frame) else []
    frame["significant"] = frame["p_adjusted"] < options.alpha
    return frame


RANKING_COLUMNS = ["model", "dataset", "score", "method", "mean_rank", "rank_ci_low", "rank_ci_high", "mean",
                   "position", "position_ci_low", "position_ci_high", "n", "friedman_chi2", "friedman_p", "cd",
                   "cd_test"]


def _ranking_rows(model: str, dataset: str, label: str, oriented: pd.DataFrame, mean_values: pd.Series,
                  options: CompareOptions) -> List[Dict[str, object]]:
    """Mean ranks of the methods over the rows (blocks) of ``oriented`` [n, k] with bootstrap
    intervals: of the mean rank, and of the position of the method's mean (1 = best mean)."""
    matrix = oriented.to_numpy(dtype=np.float64)
    n, k = matrix.shape
    ranks = rank_rows(matrix)
    alpha = 1.0 - options.confidence
    # the same seeded row resampling as every interval of the report
    boot_ranks = stats.bootstrap_means(ranks, options.resamples, options.seed)
    boot_positions = rank_rows(stats.bootstrap_means(matrix, options.resamples, options.seed))
    rank_low, rank_high = np.quantile(boot_ranks, [alpha / 2, 1 - alpha / 2], axis=0)
    pos_low, pos_high = np.quantile(boot_positions, [alpha / 2, 1 - alpha / 2], axis=0)
    positions = rank_rows(matrix.mean(axis=0)[None])[0]
    chi2, p = friedman(matrix)
    cd = critical_difference(k, n, options.alpha) if options.cd_test == "nemenyi" else float("nan")
    return [{"model": model, "dataset": dataset, "score": label, "method": method, "mean_rank": float(ranks[:, j].mean()),
             "rank_ci_low": float(rank_low[j]), "rank_ci_high": float(rank_high[j]),
             "mean": float(mean_values.get(method, np.nan)), "position": float(positions[j]),
             "position_ci_low": float(pos_low[j]), "position_ci_high": float(pos_high[j]), "n": int(n),
             "friedman_chi2": chi2, "friedman_p": p, "cd": cd, "cd_test": options.cd_test}
            for j, method in enumerate(oriented.columns)]


def rankings(cell_list: List[Cell], options: Optional[CompareOptions] = None) -> pd.DataFrame:
    """Per image-scope (model, dataset, score) with >= 2 methods: :data:`RANKING_COLUMNS` over
    the images that every method scored (complete blocks, as the Friedman test needs). ``mean``
    is the raw mean over those images."""
    options = options or CompareOptions()
    rows: List[Dict[str, object]] = []
    for cell in cell_list:
        complete = cell.complete()
        if complete.shape[1] < 2 or complete.shape[0] < 1:
            continue
        raw_means = cell.values.loc[complete.index].mean(axis=0)
        rows += _ranking_rows(cell.model, cell.dataset, cell.label, complete, raw_means, options)
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def score_means(summary: pd.DataFrame, exclude_categories: Sequence[str] = NOT_QUALITY) -> pd.DataFrame:
    """Per (model, dataset): scores (rows, ``metric/score``) x methods (columns) of oriented
    summary means (every scope), for scores with a direction; the frame carries ``model`` and
    ``dataset`` in a MultiIndex."""
    part = summary[~summary["category"].isin(exclude_categories) & summary["higher_is_better"].notna()]
    part = part[np.isfinite(pd.to_numeric(part["mean"], errors="coerce").to_numpy(dtype=np.float64))]
    if part.empty:
        return pd.DataFrame()
    part = part.assign(label=[score_label(m, s) for m, s in zip(part["metric"], part["score"])],
                       oriented=np.where(part["higher_is_better"].astype(bool), part["mean"], -part["mean"]))
    wide = part.pivot_table(index=["model", "dataset", "label"], columns="method", values="oriented", aggfunc="mean",
                            sort=False)
    baselines = set(part.loc[part["baseline"].fillna(False).astype(bool), "method"]) if "baseline" in part else set()
    return wide[method_order(part["method"], baselines)]


def rankings_across_scores(summary: pd.DataFrame, options: Optional[CompareOptions] = None,
                           exclude_categories: Sequence[str] = NOT_QUALITY) -> pd.DataFrame:
    """The scores as "datasets" (Demsar 2006): per (model, dataset), the methods ranked on each
    quality score's mean (blocks = scores), over the methods that have every such score and the
    scores that have every such method (greedy: methods missing the most scores are dropped
    first until the block is complete). ``score`` is ``"all scores"``; ``mean`` the mean
    oriented score (not comparable across scores: for information)."""
    options = options or CompareOptions()
    wide = score_means(summary, exclude_categories)
    rows: List[Dict[str, object]] = []
    if wide.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    for (model, dataset), block in wide.groupby(level=[0, 1], sort=False):
        block = complete_block(block.droplevel([0, 1]))
        if block.shape[0] < 2 or block.shape[1] < 2:
            continue
        rows += _ranking_rows(model, dataset, "all scores", block, block.mean(axis=0), options)
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def complete_block(block: pd.DataFrame) -> pd.DataFrame:
    """Rows x methods without missing values: drop the method missing the most rows while more
    than half of the rows lack some method, then drop the incomplete rows."""
    block = block.dropna(axis=1, how="all")
    while block.shape[1] > 2:
        missing = block.isna().sum(axis=0)
        incomplete_rows = block.isna().any(axis=1).sum()
        if incomplete_rows * 2 <= len(block) or missing.max() == 0:
            break
        block = block.drop(columns=missing.idxmax())
    return block.dropna(axis=0, how="any")


# --------------------------------------------------------------------------- agreement
AGREEMENT_COLUMNS = ["model", "dataset", "score_a", "score_b", "kendall_tau", "kendall_p", "n_methods",
                     "spearman_rho", "spearman_methods", "n_images"]


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _kendall(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    from scipy.stats import kendalltau

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


def within_method_spearman(a: Cell, b: Cell) -> Tuple[float, int, int]:
    """Mean over the methods both cells have of the Spearman correlation, across their common
    images, of the two scores' oriented per-image values -> (mean rho, methods with a defined rho
    (>= 3 images, neither score constant), images pooled)."""
    oa, ob = a.oriented(), b.oriented()
    methods = [m for m in oa.columns if m in ob.columns]
    common = oa.index.intersection(ob.index)  # the images both scores have (aligned once, not per method)
    left, right = oa.loc[common, methods].to_numpy(np.float64), ob.loc[common, methods].to_numpy(np.float64)
    rhos, images = [], 0
    for j in range(len(methods)):
        both = ~(np.isnan(left[:, j]) | np.isnan(right[:, j]))
        rho = _spearman(left[both, j], right[both, j])
        images = max(images, int(both.sum()))
        if math.isfinite(rho):
            rhos.append(rho)
    return (float(np.mean(rhos)) if rhos else float("nan")), len(rhos), images


def metric_agreement(summary: pd.DataFrame, cell_list: List[Cell],
                     exclude_categories: Sequence[str] = NOT_QUALITY) -> pd.DataFrame:
    """Every pair of quality scores of each (model, dataset): ``kendall_tau`` (tau-b, scipy)
    between the two scores' method rankings (oriented means over the methods both have) with its
    p-value, and ``spearman_rho``: :func:`within_method_spearman` of their per-image scores
    (image-scope scores only). The diagonal is left out."""
    wide = score_means(summary, exclude_categories)
    by_label = {(c.model, c.dataset, c.label): c for c in cell_list if c.category not in exclude_categories}
    rows: List[Dict[str, object]] = []
    if wide.empty:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    for (model, dataset), block in wide.groupby(level=[0, 1], sort=False):
        block = block.droplevel([0, 1])
        for score_a, score_b in itertools.combinations(list(block.index), 2):
            pair = block.loc[[score_a, score_b]].T.dropna()
            tau, p = _kendall(pair[score_a].to_numpy(), pair[score_b].to_numpy())
            a, b = by_label.get((model, dataset, score_a)), by_label.get((model, dataset, score_b))
            rho, methods, images = within_method_spearman(a, b) if a is not None and b is not None else (np.nan, 0, 0)
            rows.append({"model": model, "dataset": dataset, "score_a": score_a, "score_b": score_b,
                         "kendall_tau": tau, "kendall_p": p, "n_methods": int(len(pair)), "spearman_rho": rho,
                         "spearman_methods": methods, "n_images": images})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def agreement_matrix(agreement: pd.DataFrame, value: str) -> Dict[Tuple[str, str], pd.DataFrame]:
    """Per (model, dataset): the symmetric scores x scores matrix of ``value`` (diagonal 1)."""
    out = {}
    for (model, dataset), part in agreement.groupby(["model", "dataset"], sort=False):
        labels = list(dict.fromkeys(list(part["score_a"]) + list(part["score_b"])))
        matrix = pd.DataFrame(np.nan, index=labels, columns=labels)
        for row in part.itertuples(index=False):
            matrix.loc[row.score_a, row.score_b] = matrix.loc[row.score_b, row.score_a] = getattr(row, value)
        for label in labels:
            matrix.loc[label, label] = 1.0
        out[(model, dataset)] = matrix
    return out


# --------------------------------------------------------------------------- reliability
RELIABILITY_COLUMNS = ["model", "dataset", "score", "category", "n_images", "n_methods", "inter_rater_alpha",
                       "inter_method_rho", "inter_method_pairs", "internal_consistency_rho", "internal_consistency_scores",
                       "krippendorff_level"]


def krippendorff_alpha(reliability_data: np.ndarray, level: str = "ordinal") -> float:
    """Krippendorff's alpha (the ``krippendorff`` package) of ``reliability_data`` [raters,
    units] (NaN = missing); NaN when the package is missing or every value is the same."""
    try:
        import krippendorff
    except ImportError:
        MISSING_NOTES["krippendorff"] = ("the krippendorff package is not installed: no inter-rater reliability "
                                         "(pip install 'salbench[stats]')")
        return float("nan")
    data = np.asarray(reliability_data, dtype=np.float64)
    if np.unique(data[np.isfinite(data)]).size < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def metric_reliability(cell_list: List[Cell], options: Optional[CompareOptions] = None,
                       exclude_categories: Sequence[str] = NOT_QUALITY) -> pd.DataFrame:
    """Tomsett et al. 2020 ("Sanity checks for saliency metrics", AAAI), per image-scope quality
    score of each (model, dataset):

    * ``inter_rater_alpha``: each image is a *rater* that ranks the methods (the *units*) by the
      score (rank 1 = best, ties averaged); Krippendorff's alpha of those ranks over the images
      that every method scored (``krippendorff_level``, ordinal by default). 1: every image ranks
      the methods alike; 0: no more agreement than chance.
    * ``inter_method_rho``: mean over method pairs of the Spearman correlation, across images, of
      the two methods' scores (does the score find the same images easy whatever the method?).
    * ``internal_consistency_rho``: mean over the other image-scope scores of the same category
      (and over the methods) of :func:`within_method_spearman` (do scores meant to measure the
      same property agree image by image?); NaN when the category has one score."""
    options = options or CompareOptions()
    quality = [c for c in cell_list if c.category not in exclude_categories]
    rows: List[Dict[str, object]] = []
    for cell in quality:
        complete = cell.complete()
        k = complete.shape[1]
        alpha = (krippendorff_alpha(rank_rows(complete.to_numpy()), options.krippendorff_level)
                 if complete.shape[0] >= 2 and k >= 2 else float("nan"))
        oriented = cell.oriented()
        pair_rhos = []
        for a, b in itertools.combinations(list(oriented.columns), 2):
            pair = oriented[[a, b]].dropna()
            rho = _spearman(pair[a].to_numpy(), pair[b].to_numpy())
            if math.isfinite(rho):
                pair_rhos.append(rho)
        partners = [c for c in quality if (c.model, c.dataset, c.category) == (cell.model, cell.dataset, cell.category)
                    and c.label != cell.label]
        consistency = [within_method_spearman(cell, other)[0] for other in partners]
        consistency = [r for r in consistency if math.isfinite(r)]
        rows.append({"model": cell.model, "dataset": cell.dataset, "score": cell.label, "category": cell.category,
                     "n_images": int(complete.shape[0]), "n_methods": int(k), "inter_rater_alpha": alpha,
                     "inter_method_rho": float(np.mean(pair_rhos)) if pair_rhos else float("nan"),
                     "inter_method_pairs": len(pair_rhos),
                     "internal_consistency_rho": float(np.mean(consistency)) if consistency else float("nan"),
                     "internal_consistency_scores": len(consistency),
                     "krippendorff_level": options.krippendorff_level})
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)


# --------------------------------------------------------------------------- protocol sensitivity
SENSITIVITY_COLUMNS = ["model", "dataset", "metric", "score", "variant_a", "variant_b", "n_methods", "kendall_tau",
                       "kendall_p", "best_a", "best_b", "same_best"]


def base_metric(label: str) -> str:
    """``rise[n_steps=32]`` -> ``rise`` (the labels of :func:`salbench.reports.stats.label_variants`)."""
    return str(label).split("[", 1)[0]


def protocol_sensitivity(summary: pd.DataFrame) -> pd.DataFrame:
    """Where runs scored one metric under several protocols (the variants that
    :func:`~salbench.reports.stats.label_variants` labels ``metric[key=value,...]``): per
    (model, dataset, metric, score) and pair of variants, Kendall's tau-b between the method
    rankings (oriented means, the methods both variants scored), its p-value, and whether the
    best method is the same."""
    part = summary[summary["higher_is_better"].notna() & ~summary["category"].isin(NEVER_COMPARED)]
    part = part.assign(base=[base_metric(m) for m in part["metric"]])
    rows: List[Dict[str, object]] = []
    for (model, dataset, base, score), group in part.groupby(["model", "dataset", "base", "score"], sort=False):
        variants = list(dict.fromkeys(group["metric"]))
        if len(variants) < 2:
            continue
        higher = bool(group["higher_is_better"].iloc[0])
        wide = group.pivot_table(index="method", columns="metric", values="mean", aggfunc="mean", sort=False)
        wide = wide if higher else -wide
        for a, b in itertools.combinations(variants, 2):
            pair = wide[[a, b]].dropna()
            tau, p = _kendall(pair[a].to_numpy(), pair[b].to_numpy())
            rows.append({"model": model, "dataset": dataset, "metric": base, "score": score, "variant_a": a,
                         "variant_b": b, "n_methods": int(len(pair)), "kendall_tau": tau, "kendall_p": p,
                         "best_a": pair[a].idxmax() if len(pair) else "", "best_b": pair[b].idxmax() if len(pair) else "",
                         "same_best": bool(len(pair) and pair[a].idxmax() == pair[b].idxmax())})
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
