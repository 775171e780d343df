"""From runs to the figures and tables of a report: ``python -m xray_loss.report SWEEP_DIR``.

One job per module: ``records`` (a run directory's record, curves and predictions), ``runs``
(the runs read, what makes runs alike and what may be pooled), ``stats`` (summaries,
intervals, ECE), ``paired`` (BCE vs CE paired by seed), ``effects`` (CE − BCE per cell and
per epoch: the forest plot and the difference curves), ``panels`` (what each figure shows,
what it holds, colours), ``figures`` (curves, metrics against an axis), ``calibration`` (the
reliability diagram), ``tables``, ``build`` (the report), ``__main__`` (the command).
The functions are importable, which is how ``notebooks/study.ipynb`` draws the figures.
"""

from xray_loss.report.build import make_report
from xray_loss.report.calibration import calibration_figure
from xray_loss.report.effects import difference_figure, effects, forest_figure
from xray_loss.report.figures import compare_figure, sweep_figure
from xray_loss.report.paired import paired_loss_tests, sign_flip_test
from xray_loss.report.panels import layout
from xray_loss.report.runs import Run, load_runs
from xray_loss.report.stats import (
    auroc,
    bootstrap_auroc_ci,
    ece_over_runs,
    expected_calibration_error,
    summarise,
    summary_rows,
)

__all__ = [
    "Run",
    "auroc",
    "bootstrap_auroc_ci",
    "calibration_figure",
    "compare_figure",
    "difference_figure",
    "ece_over_runs",
    "effects",
    "expected_calibration_error",
    "forest_figure",
    "layout",
    "load_runs",
    "make_report",
    "paired_loss_tests",
    "sign_flip_test",
    "summarise",
    "summary_rows",
    "sweep_figure",
]
