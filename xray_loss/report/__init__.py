"""From runs to the figures and tables of a report: ``python -m xray_loss.report SWEEP_DIR``.

One job per module: ``records`` (a run directory's record, curves and predictions), ``runs``
(the runs read, what makes runs alike and what may be pooled), ``stats`` (summaries,
bootstrap, paired tests), ``figures``, ``tables``, ``build`` (the report), ``__main__`` (the
command).
The functions are importable, which is how ``notebooks/study.ipynb`` draws the figures.
"""

from xray_loss.report.build import make_report
from xray_loss.report.figures import calibration_figure, compare_figure
from xray_loss.report.runs import Run, load_runs
from xray_loss.report.stats import (
    auroc,
    bootstrap_auroc_ci,
    expected_calibration_error,
    paired_loss_tests,
    sign_flip_test,
    summarise,
    summary_rows,
)

__all__ = [
    "Run",
    "auroc",
    "bootstrap_auroc_ci",
    "calibration_figure",
    "compare_figure",
    "expected_calibration_error",
    "load_runs",
    "make_report",
    "paired_loss_tests",
    "sign_flip_test",
    "summarise",
    "summary_rows",
]
