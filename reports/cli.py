"""``salbench-report DIR... [--out REPORT_DIR]``: summary tables and plots of finished runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from salbench import store
from salbench.reports.load import load


def write_report(paths: List[str], out: Path) -> Path:
    """Write ``summary.md``, ``summary.csv`` and ``scores.png`` into ``out``; return ``out``."""
    scores = load(paths)
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# salbench report\n"]
    csv_parts = []
    for (model, dataset), group in scores.groupby(["model", "dataset"], sort=False):
        table = store.summary_table(group)
        n = group.loc[group["scope"] == "image", "image_id"].nunique()
        sections.append(f"## {model} on {dataset} ({n} images)\n\n" + store.markdown_table(table))
        csv_parts.append(table.assign(model=model, dataset=dataset))
    store.write_text(out / "summary.md", "\n".join(sections))
    import pandas as pd

    with store.atomic_path(out / "summary.csv") as tmp:
        pd.concat(csv_parts).to_csv(tmp)
    _plot_scores(scores, out / "scores.png")
    return out


def _plot_scores(scores, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_image = scores[scores["scope"] == "image"]
    columns = list(dict.fromkeys(per_image["metric"] + "/" + per_image["score"]))
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(3.2 * max(1, len(columns)), 3), squeeze=False)
    for ax, column in zip(axes[0], columns):
        metric, score = column.split("/", 1)
        part = per_image[(per_image["metric"] == metric) & (per_image["score"] == score)]
        means = part.groupby("method", sort=False)["value"].agg(["mean", "sem"])
        ax.bar(means.index, means["mean"], yerr=1.96 * means["sem"].fillna(0), capsize=3, color="tab:blue")
        ax.set_title(column, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    with store.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="salbench-report", description=__doc__)
    parser.add_argument("paths", nargs="+", help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: FIRST_PATH/report)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.paths, args.out or Path(args.paths[0]) / "report")
    except (FileNotFoundError, ValueError) as error:
        print(f"salbench-report: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {out.resolve()}")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
