"""pytest plugin ``salbench`` (entry point ``pytest11``): explainer-quality gates in a user's CI.

The ``salbench_gate`` fixture runs a salbench job and asserts on its scores::

    def test_gradcam_still_localizes(salbench_gate):
        scores = salbench_gate.run(["debug=fast", "method=[gradcam]", "dataset.limit=32"])
        salbench_gate.expect(scores, method="gradcam", score="gt_known_loc", at_least=0.4)

    def test_no_regression_against_the_baseline(salbench_gate):
        scores = salbench_gate.run(["debug=fast"])
        salbench_gate.check(scores, "tests/baselines/fast.yaml")   # same rules as `salbench check`

A failed gate reports the measured value, the bound, the gap and every method's value of that
score (``pytest.fail`` without a traceback). ``pytest --salbench-update`` makes
:meth:`SalbenchGate.check` write or refresh its baseline files instead of comparing.

Importing this module is cheap (torch, Hydra and pandas are imported on first use), since
pytest loads it in every session of an environment where salbench is installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("salbench")
    group.addoption("--salbench-update", action="store_true", default=False,
                    help="salbench_gate.check(...) writes/refreshes its baseline files instead of comparing")


class SalbenchGate:
    """Run salbench jobs inside a test and assert on their scores (the ``salbench_gate`` fixture)."""

    def __init__(self, workdir: Path, update: bool = False):
        self.workdir = Path(workdir)
        self.update = update
        self._runs = 0

    # ----------------------------------------------------------------- running
    def compose(self, overrides: Optional[Sequence[str]] = None, config_name: str = "config",
                config_dir: Optional[str] = None) -> Any:
        """The job config from Hydra's compose API (the ``salbench`` command line's overrides)."""
        from hydra import compose, initialize_config_dir

        from salbench.harness.cli import config_dir as packaged_config_dir
        from salbench.harness.plugins import load_plugins, plugins_in_overrides
        from salbench.harness.schema import register_schemas

        load_plugins(plugins_in_overrides(list(overrides or [])))  # their names are config options
        register_schemas()
        with initialize_config_dir(config_dir=config_dir or packaged_config_dir(), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or []))

    def run(self, overrides: Optional[Sequence[str]] = None, *, config: Any = None,
            output_dir: Union[str, Path, None] = None, config_name: str = "config"):
        """Run one job (``overrides`` as on the command line, or a composed ``config``) in a
        fresh directory under the test's temporary folder; returns its tidy scores frame (the
        rows of ``scores.parquet``). The job's directory is ``scores.attrs["run_dir"]``."""
        from salbench.harness.runner import run_job

        cfg = config if config is not None else self.compose(overrides, config_name)
        out = Path(output_dir) if output_dir else self.workdir / f"salbench-run{self._runs}"
        self._runs += 1
        scores = run_job(cfg, out)
        scores.attrs["run_dir"] = str(out)
        return scores

    # ----------------------------------------------------------------- asserting
    @staticmethod
    def _scores(scores: Any):
        """A scores frame, or a run / multirun directory loaded with :func:`salbench.reports.load.load`."""
        if isinstance(scores, (str, Path)):
            from salbench.reports.load import load

            return load(scores)
        return scores

    def summary(self, scores: Any):
        """One row per (model, dataset, method, metric, score): the values the gate compares
        (mean over images, NaN skipped; dataset-level values as they are)."""
        from salbench.harness.check import aggregate

        return aggregate(self._scores(scores))

    def value(self, scores: Any, method: str, score: str, metric: Optional[str] = None,
              model: Optional[str] = None, dataset: Optional[str] = None) -> float:
        """The gate's value of one score (see :meth:`summary`); fails the test when no single
        row matches (the message lists what there is)."""
        return float(self._row(self.summary(scores), method, score, metric, model, dataset)["value"])

    def _row(self, table: Any, method: str, score: str, metric: Optional[str], model: Optional[str],
             dataset: Optional[str]):
        wanted = {"method": method, "score": score, "metric": metric, "model": model, "dataset": dataset}
        rows = table
        for column, value in wanted.items():
            if value is not None:
                rows = rows[rows[column] == value]
        if len(rows) == 0:
            import difflib

            available = lambda c: ", ".join(sorted(map(str, table[c].unique()))) or "(none)"  # noqa: E731
            close = [repr(m) for column, value in wanted.items() if value is not None and value not in set(table[column])
                     for m in difflib.get_close_matches(str(value), sorted(map(str, table[column].unique())), n=1)]
            pytest.fail(
                f"salbench gate: no scores for method={method!r} score={score!r}"
                + (f" metric={metric!r}" if metric else "") + (f" model={model!r}" if model else "")
                + (f" dataset={dataset!r}" if dataset else "")
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + f".\n  methods: {available('method')}\n  scores: {available('score')}"
                + f"\n  metrics: {available('metric')}",
                pytrace=False,
            )
        if len(rows) > 1:
            keys = ["/".join(str(r[c]) for c in ("model", "dataset", "metric", "score")) for _, r in rows.iterrows()]
            pytest.fail(f"salbench gate: {len(rows)} rows match method={method!r} score={score!r}: "
                        f"{'; '.join(keys)}; pass metric=, model= or dataset= to choose one", pytrace=False)
        return rows.iloc[0]

    def expect(self, scores: Any, method: str, score: str, *, at_least: Optional[float] = None,
               at_most: Optional[float] = None, metric: Optional[str] = None, model: Optional[str] = None,
               dataset: Optional[str] = None) -> float:
        """Assert ``at_least <= value <= at_most`` for one (method, score); returns the value.

        The value is the mean over images (NaN skipped) or the dataset-level value; a NaN value
        always fails. The failure message names the value, the bound, the gap, the number of
        images (and NaN ones) and the same score of every other method in ``scores``.
        """
        if at_least is None and at_most is None:
            raise ValueError("expect() needs at_least= and/or at_most=")
        table = self.summary(scores)
        row = self._row(table, method, score, metric, model, dataset)
        value = float(row["value"])
        problems = []
        if value != value:  # NaN
            problems.append("the value is NaN (every map flagged or the score undefined)")
        else:
            if at_least is not None and value < at_least:
                problems.append(f"expected >= {at_least:.4f} (short by {at_least - value:.4f})")
            if at_most is not None and value > at_most:
                problems.append(f"expected <= {at_most:.4f} (over by {value - at_most:.4f})")
        if problems:
            peers = table[(table["metric"] == row["metric"]) & (table["score"] == score)
                          & (table["model"] == row["model"]) & (table["dataset"] == row["dataset"])]
            others = ", ".join(f"{r['method']} {r['value']:.4f}" for _, r in peers.iterrows())
            counted = "dataset-level" if row["scope"] == "dataset" else (
                f"mean over {int(row['images'])} images" + (f", {int(row['nan'])} NaN" if row["nan"] else ""))
            where = getattr(self._scores(scores), "attrs", {}).get("run_dir")
            pytest.fail(
                f"salbench gate: {method} {row['metric']}/{score} on {row['model']}/{row['dataset']} = "
                f"{value:.4f} ({counted}); " + "; ".join(problems)
                + f"\n  {row['metric']}/{score} of every method: {others}"
                + (f"\n  results: {where}" if where else ""),
                pytrace=False,
            )
        return value

    def check(self, scores: Any, baseline: Union[str, Path], *, tolerance: Optional[float] = None,
              methods: Optional[List[str]] = None, score_names: Optional[List[str]] = None):
        """Compare ``scores`` with a baseline file exactly as ``salbench check`` does (fails the
        test on a REGRESSED or MISSING entry, with the diff table); returns the diff frame.

        Under ``pytest --salbench-update``, or when the file does not exist yet, the baseline is
        written from ``scores`` instead (restricted to ``methods`` / ``score_names`` globs).
        """
        from salbench.harness import check

        baseline = Path(baseline)
        table = self.summary(scores)
        if self.update or not baseline.exists():
            entries = check.read_baseline(baseline) if baseline.exists() else []
            chosen = check.select(table, method=methods, score=score_names)
            check.write_baseline(baseline, check.updated_entries(
                chosen, entries, check.DEFAULT_TOLERANCE if tolerance is None else tolerance))
            return check.compare(table, check.read_baseline(baseline))
        diff = check.compare(table, check.read_baseline(baseline))
        if check.failed(diff):
            pytest.fail(f"salbench gate: scores regressed against {baseline}:\n\n{check.format_diff(diff)}",
                        pytrace=False)
        return diff


@pytest.fixture
def salbench_gate(tmp_path: Path, request: Any) -> SalbenchGate:
    """A :class:`SalbenchGate` writing its runs under the test's ``tmp_path``."""
    return SalbenchGate(tmp_path, update=bool(request.config.getoption("salbench_update", False)))
