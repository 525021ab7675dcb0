"""The offline sentence splitter and word counters behave like IFEval's NLTK-based ones."""
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


def test_word_tokenize_keeps_hyphens_and_splits_contractions():
    tokens = word_tokenize('"WELL-KNOWN" cats DON\'T care, OK?')
    assert tokens == ['"', "WELL-KNOWN", '"', "cats", "DO", "N'T", "care", ",", "OK", "?"]
