"""``sftlab study NAME``: the survey's analyses of instruction tuning, as experiments.

- ``config``: the settings (light to import: ``sftlab --help`` reads them)
- ``runs``: the ``Benchmark`` a study trains and measures with, and the store that keeps
  every training run and evaluation under a hash of what produced it (restarts continue)
- ``size_sweep``: score against training-set size on nested subsets (LIMA; Gupta et al.)
- ``compare_data`` and ``select``: data sources at an equal token budget, ranked, with
  paired differences; random, longest-response and IFD selection
- ``helm``: a HELM-style table: accuracy, calibration, robustness and efficiency per
  model and scenario
- ``superficial``: the token-distribution shift between a tuned and the untuned model
  (URIAL), and training on simplified or delusive instructions (Kung & Peng)
- ``imitation``: students tuned on a teacher's answers to some tasks, measured against it by a
  pairwise judge (win rate) and by accuracy on imitated and other tasks (Gudibande et al.)
- ``report``: study.json, the plots and the HTML page

Only the configs are imported here; ``from sftlab.study.size_sweep import run_size_sweep``
runs one. A study takes its ``Benchmark`` from the caller: ``sftlab study`` passes the
quickstart's exactly-checkable tasks (``sftlab.cli.study.checkable_benchmark``).
"""
from sftlab.study.config import (CompareDataConfig, HelmConfig, ImitationConfig, SizeSweepConfig, StudyConfig,
                                  SuperficialConfig)

__all__ = ["StudyConfig", "SizeSweepConfig", "CompareDataConfig", "HelmConfig", "SuperficialConfig", "ImitationConfig"]
