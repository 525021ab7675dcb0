"""Reports: comparison tables, matplotlib charts, a static HTML page and a Markdown summary.

    from sftlab.report import write_report
    write_report(["out/base", "out/tuned"], "out/report")
"""
from sftlab.report.html import write_report
from sftlab.report.tables import comparison_rows, load_runs, markdown_table

__all__ = ["write_report", "load_runs", "comparison_rows", "markdown_table"]
