"""Evaluation: predictions files + manifest in, metrics and reports out; no model is loaded here.

Metric kernels take arrays and return numbers (:mod:`.classification`, :mod:`.detection`,
:mod:`.screening`, :mod:`.views`, :mod:`.bootstrap`); the ``evaluate`` functions align a predictions
file (:mod:`.predictions`) with the manifest's labels (:mod:`.ground_truth` for boxes) and assemble
the results; :mod:`.compare` builds the KCR Model 1 vs Model 2 table and :mod:`.report` writes
``report.json``, ``report.md`` and plots. Submodules load on first use (``from cxrkit.eval import
classification``), so importing the package stays cheap.
"""

__all__ = [
    "bootstrap",
    "classification",
    "compare",
    "detection",
    "ground_truth",
    "predictions",
    "report",
    "screening",
    "views",
]
