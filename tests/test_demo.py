"""The README's demo table is what the demo gives with the shipped weights, to the printed digit.

Fast: Grad-CAM and both baselines through the demo's own config on its 100 images, the columns
that need no perturbation curves (GT-known localization and the pointing game). Slow: the whole
demo (``make demo``'s two jobs) and every cell of the table. The cells are formatted as the
report formats them: the mean and its 95% percentile-bootstrap interval (1000 resamples, seed 0).

To refresh the README after a deliberate change, print the table with
``python tests/test_demo.py outputs/demo``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
# README column -> (metric, score, digits, interval)
COLUMNS = {
    "GT-known loc ↑": ("cam_paper", "gt_known_loc", 2, True),
    "MaxBoxAccV2 ↑": ("wsoleval", "maxboxacc_v2", 1, False),
    "pointing game ↑": ("pointing_game", "pointing_hit", 2, True),
    "deletion AUC ↓": ("rise", "deletion_auc", 2, True),
    "insertion AUC ↑": ("rise", "insertion_auc", 2, True),
}


def readme_table() -> Dict[str, Dict[str, str]]:
    """{method: {column: cell}} of the README's demo table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## What the demo shows", 1)[1].split("\n\n| method |", 1)[1]
    lines = ("| method |" + section.split("\n\n", 1)[0]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0].strip("*")] = dict(zip(header[1:], cells[1:]))
    return table


def demo_table(scores: pd.DataFrame, columns: List[str]) -> Dict[str, Dict[str, str]]:
    """The README cells computed from a job's scores, as the report summarizes them."""
    from salbench.reports.stats import summarize

    summary = summarize(scores, resamples=1000, confidence=0.95, seed=0).set_index(["method", "metric", "score"])
    table: Dict[str, Dict[str, str]] = {}
    for method in dict.fromkeys(scores["method"]):
        row = table.setdefault(method, {})
        for column in columns:
            metric, score, digits, interval = COLUMNS[column]
            cell = summary.loc[(method, metric, score)]
            text = f"{cell['mean']:.{digits}f}"
            if interval:
                text += f" [{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]"
            row[column] = text
    return table


def markdown(table: Dict[str, Dict[str, str]], baselines=("random", "center")) -> str:
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|:---|" + "---:|" * len(COLUMNS)]
    for method, row in table.items():
        name = f"*{method}*" if method in baselines else method
        lines.append(f"| {name} | " + " | ".join(row[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def test_the_readme_table_names_every_demo_method():
    table = readme_table()
    assert list(table) == ["cam", "gradcam", "counterfactual_gradcam", "guided_gradcam", "saliency", "guided_backprop",
                           "deconvnet", "occlusion", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam",
                           "input_x_gradient", "scorecam", "ablationcam", "integrated_gradients", "smoothgrad", "rise",
                           "random", "center"]
    assert all(set(row) == set(COLUMNS) for row in table.values())


def test_gradcam_and_the_baselines_give_the_readme_numbers(compose_config, tmp_path):
    from salbench.harness.runner import run_job

    columns = ["GT-known loc ↑", "pointing game ↑"]
    scores = run_job(compose_config(["experiment=demo", "method=[gradcam,random,center]",
                                     "metric=[cam_paper,pointing_game]", "gallery_images=0", "progress=false"]),
                     tmp_path / "demo")
    assert scores.loc[scores["score"] == "gt_known_loc", "image_id"].nunique() == 100
    expected = readme_table()
    got = demo_table(scores, columns)
    for method in ("gradcam", "random", "center"):
        assert {c: got[method][c] for c in columns} == {c: expected[method][c] for c in columns}, method


@pytest.mark.slow
def test_the_whole_demo_gives_the_readme_table(compose_config, tmp_path):
    """``make demo``'s synthetic job with the table's metrics (the others do not change these
    scores; a few minutes on 2 cores): every cell of the README table."""
    from salbench.harness.runner import run_job

    scores = run_job(compose_config(["experiment=demo", "metric=[cam_paper,wsoleval,pointing_game,rise]", "gallery_images=0",
                                     "viewer_images=0", "progress=false"]), tmp_path / "demo")
    assert demo_table(scores, list(COLUMNS)) == readme_table()


if __name__ == "__main__":  # print the README table of a finished demo: python tests/test_demo.py outputs/demo
    from salbench.reports.load import load

    frame = load([sys.argv[1]])
    print(markdown(demo_table(frame[frame["dataset"] == "synthetic"], list(COLUMNS))))
