"""``sftlab quickstart``: instruction tuning on template-integrated data, before and after.

- ``config``: ``QuickstartConfig``, the settings (light to import: ``sftlab --help`` reads it)
- ``pipeline``: ``run_quickstart(config)``, the five stages end to end (imports torch)
- ``tasks`` and ``data``: the exactly-checkable tasks and the Flan-style data built from them
- ``report``: the summary with intervals and the HTML page

This package's ``__init__`` imports only the config, so that reading the settings does not
load the model stack; ``from sftlab.quickstart.pipeline import run_quickstart`` runs it.
"""
from sftlab.quickstart.config import QuickstartConfig

__all__ = ["QuickstartConfig"]
