"""``salbench report DIR... [--out REPORT_DIR]`` (also ``salbench-report``): tables, figures and a
self-contained ``index.html`` of finished runs (see :mod:`salbench.reports.report`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from salbench.reports.compare import CD_TESTS, CORRECTIONS
from salbench.reports.gallery import DEFAULT_CLIP_PERCENTILE
from salbench.reports.report import ReportOptions, write_report
from salbench.reports.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from salbench.reports.viewer import VIEWER_IMAGES


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="salbench-report", description=__doc__)
    parser.add_argument("paths", nargs="+", help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="report directory (default: FIRST_PATH/report)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default 1000)")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the tables (default 3)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="report the completed jobs when others are incomplete, failed or superseded "
                             "(they are listed on the page); without it such jobs are an error")
    comparisons = parser.add_argument_group("comparisons (compare/, docs/reports.md)")
    comparisons.add_argument("--alpha", type=float, default=0.05,
                             help="significance level of the paired tests after correction (default 0.05)")
    comparisons.add_argument("--correction", choices=CORRECTIONS, default="holm",
                             help="multiplicity correction over the method pairs of each score: holm (default), "
                                  "bh (Benjamini-Hochberg) or none")
    comparisons.add_argument("--cd-test", choices=CD_TESTS, default="nemenyi",
                             help="bars of the critical-difference diagrams: nemenyi (default) or wilcoxon-holm "
                                  "(the corrected pairwise Wilcoxon tests)")
    comparisons.add_argument("--tie-tolerance", type=float, default=1e-6,
                             help="paired differences within +-this count as zero (default 1e-6: float32 rounding)")
    parser.add_argument("--clip-percentile", type=float, default=DEFAULT_CLIP_PERCENTILE,
                        help="pixel-space maps in the per-image viewer are clipped at this percentile (default 99; "
                             "100: min-max)")
    parser.add_argument("--viewer-images", type=int, default=VIEWER_IMAGES,
                        help=f"images per model and dataset in the per-image viewer (default {VIEWER_IMAGES}; "
                             "at most what the jobs kept)")
    args = parser.parse_args(argv)
    if args.resamples < 1 or not 0 < args.confidence < 1:
        parser.error("--resamples must be >= 1 and --confidence in (0, 1)")
    if not 0 < args.alpha < 1 or args.tie_tolerance < 0 or not 0 < args.clip_percentile <= 100 or args.viewer_images < 0:
        parser.error("--alpha must be in (0, 1), --tie-tolerance >= 0, --clip-percentile in (0, 100] and "
                     "--viewer-images >= 0")
    out = args.out or Path(args.paths[0]) / "report"
    try:
        write_report(args.paths, out, ReportOptions(args.resamples, args.confidence, args.seed, args.digits,
                                                     args.allow_incomplete, alpha=args.alpha,
                                                     correction=args.correction, cd_test=args.cd_test,
                                                     tie_tolerance=args.tie_tolerance,
                                                     clip_percentile=args.clip_percentile,
                                                     viewer_images=args.viewer_images))
    except (FileNotFoundError, ValueError) as error:
        print(f"salbench-report: error: {error}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"report written to {out.resolve()}")
    print(f"open {(out / 'index.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
