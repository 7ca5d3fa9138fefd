"""The report page opens in headless Chromium; the screenshot shows the summary table and a figure.

Slow (starts a browser): ``make test-report-browser``. Skipped when Debian's ``chromium`` is absent.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from test_reports import make_job, results  # noqa: F401  (the fixture is used by name)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def screenshot(page, png, profile, size=(1200, 2000)):
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                             f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and png.exists(), result.stderr[-2000:]
    import matplotlib.pyplot as plt

    return (plt.imread(str(png))[..., :3] * 255).round().astype(np.int16)


def longest_dark_run(row: np.ndarray) -> int:
    dark = (row.max(axis=1) < 80).astype(np.int8)
    best = run = 0
    for value in dark:
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def test_page_screenshot_shows_the_table_and_a_figure(tmp_path, results):  # noqa: F811
    from salbench.reports.report import ReportOptions, write_report

    make_job(tmp_path / "run", results)
    out = tmp_path / "report"
    write_report([str(tmp_path / "run")], out, ReportOptions(resamples=100))
    pixels = screenshot(out / "index.html", tmp_path / "page.png", tmp_path / "profile")
    assert pixels.shape[:2] == (2000, 1200)
    # the table: its booktabs-like top rule is a long dark horizontal line (a text line never is)
    rules = [y for y in range(pixels.shape[0]) if longest_dark_run(pixels[y]) > 400]
    assert rules, "no table rule in the screenshot"
    # a figure: matplotlib's tab:blue (31, 119, 180) markers/lines/bands are rendered pixels
    blue = (np.abs(pixels - np.array([31, 119, 180])).max(axis=2) < 30).sum()
    assert blue > 200, f"only {blue} plot-blue pixels: no figure rendered"
    # and the page is not one colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    # a blank page shows neither (the checks can fail)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body><p>salbench</p></body></html>")
    empty = screenshot(blank, tmp_path / "blank.png", tmp_path / "profile2")
    assert not any(longest_dark_run(empty[y]) > 400 for y in range(0, empty.shape[0], 4))
    assert (np.abs(empty - np.array([31, 119, 180])).max(axis=2) < 30).sum() == 0
