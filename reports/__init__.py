"""Reports: load scores from run directories, summary tables with bootstrap intervals, figures and
a self-contained HTML page (``salbench report DIR...``)."""
from salbench.reports.load import find_runs, load, load_table
from salbench.reports.stats import bootstrap_ci, summarize

__all__ = ["load", "load_table", "find_runs", "summarize", "bootstrap_ci", "write_report"]


def write_report(*args, **kwargs):
    """See :func:`salbench.reports.report.write_report` (imported lazily: it pulls in matplotlib)."""
    from salbench.reports.report import write_report as _write_report

    return _write_report(*args, **kwargs)
