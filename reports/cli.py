"""``salbench report DIR... [--out REPORT_DIR]`` (also ``salbench-report``): tables, figures and a
self-contained ``index.html`` of finished runs (see :mod:`salbench.reports.report`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from salbench.reports.report import ReportOptions, write_report
from salbench.reports.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES


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
    args = parser.parse_args(argv)
    if args.resamples < 1 or not 0 < args.confidence < 1:
        parser.error("--resamples must be >= 1 and --confidence in (0, 1)")
    out = args.out or Path(args.paths[0]) / "report"
    try:
        write_report(args.paths, out, ReportOptions(args.resamples, args.confidence, args.seed, args.digits,
                                                     args.allow_incomplete))
    except (FileNotFoundError, ValueError) as error:
        print(f"salbench-report: error: {error}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"report written to {out.resolve()}")
    print(f"open {(out / 'index.html').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
