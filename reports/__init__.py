"""Reports: load scores from run directories, summary tables and plots."""
