"""sftlab: instruction tuning of language models, end to end.

The public API re-exports the pieces a user composes; each lives in its stage module.
"""
from sftlab.types import IGNORE_INDEX, Conversation, Message, Tokenized

__version__ = "0.1.0"
__all__ = ["Conversation", "Message", "Tokenized", "IGNORE_INDEX", "__version__"]
