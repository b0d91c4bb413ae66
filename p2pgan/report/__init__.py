"""Reports: the harness's federation on one machine (:mod:`p2pgan.report.summary`) and one site's own daemon
of a real federation (:mod:`p2pgan.report.site`), built from the same parts (:mod:`p2pgan.report.sections`).
"""

from __future__ import annotations

from p2pgan.report.summary import (
    FAULT_WINDOW_S,
    SCORE_NAMES,
    UNITS,
    churn_summary,
    fault_phases,
    headline,
    peer_summary,
    step_intervals,
    summarize,
    write_churn_figure,
    write_markdown,
    write_report,
)

__all__ = ["FAULT_WINDOW_S", "SCORE_NAMES", "UNITS", "churn_summary", "fault_phases", "headline", "peer_summary",
           "step_intervals", "summarize", "write_churn_figure", "write_markdown", "write_report"]
