"""Reports people can open: Markdown and a self-contained HTML page with plots."""

from locallearn.report.html import load_runs, write_report

__all__ = ["load_runs", "write_report"]
