"""``sftlab quickstart``: instruction tuning on template-integrated data, before and after."""
from sftlab.quickstart.pipeline import QuickstartConfig, run_quickstart

__all__ = ["QuickstartConfig", "run_quickstart"]
