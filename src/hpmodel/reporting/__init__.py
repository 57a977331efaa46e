"""Reports a person would rather look at than read: Markdown and self-contained HTML
(inline PNG plots), built from the numbers a run wrote. ``matplotlib`` draws the plots.

Example::

    report = Report("hpmodel train")
    report.table([{"metric": "test_accuracy", "value": 0.98}])
    report.image(plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png"))
    report.write(run_dir)   # report.md and report.html
"""

from hpmodel.reporting.document import Report
from hpmodel.reporting.plots import plot_training_curves

__all__ = ["Report", "plot_training_curves"]
