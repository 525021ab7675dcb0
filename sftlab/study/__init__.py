"""``sftlab study NAME``: the survey's analyses of instruction tuning, as experiments.

- ``config``: the settings (light to import: ``sftlab --help`` reads them)
- ``runs``: the ``Benchmark`` a study trains and measures with, and the store that keeps
  every training run and evaluation under a hash of what produced it (restarts continue)
- ``size_sweep``: score against training-set size on nested subsets (LIMA; Gupta et al.)
- ``compare_data`` and ``select``: data sources at an equal token budget, ranked, with
  paired differences; random, longest-response and IFD selection
- ``helm``: a HELM-style table: accuracy, calibration, robustness and efficiency per
  model and scenario
- ``report``: study.json, the plots and the HTML page

Only the configs are imported here; ``from sftlab.study.size_sweep import run_size_sweep``
runs one. A study takes its ``Benchmark`` from the caller: ``sftlab study`` passes the
quickstart's exactly-checkable tasks (``sftlab.cli.study.checkable_benchmark``).
"""
from sftlab.study.config import CompareDataConfig, HelmConfig, SizeSweepConfig, StudyConfig

__all__ = ["StudyConfig", "SizeSweepConfig", "CompareDataConfig", "HelmConfig"]
