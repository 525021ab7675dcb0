"""Every IFEval checker: one response that follows, one that does not, and the real data."""
import json

import pytest

from sftlab.errors import ConfigError
from sftlab.eval.ifeval import CHECKERS, build_checker, instruction_ids

LONG_ENGLISH = "This is a plain English sentence about the weather and the garden today."

# (instruction id, kwargs, a response that follows, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["garden", "Rain"]},
     "The rain fell on the GARDEN.", "The garden is dry."),
    ("keywords:existence", {"keywords": ["le"]}, "a table", "nothing here"),  # substring, as reference
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "Cat and cat.", "One cat."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "One cat.", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["apple", "pear"]},
     "Pineapples are nice.", "An Apple a day."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zigzag", "zero"),
    ("keywords:letter_frequency", {"letter": "o", "let_frequency": 2, "let_relation": "less than"},
     "one", "Oh no"),
    ("language:response_language", {"language": "en"}, LONG_ENGLISH,
     "Ceci est une phrase en français sur le temps qu'il fait aujourd'hui dans le jardin."),
    ("language:response_language", {"language": "de"},
     "Das ist ein deutscher Satz über das Wetter und den Garten heute.", LONG_ENGLISH),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "One. Two.", "Only one."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Only one.", "One. Two."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "p1\n***\np2\n***\np3", "p1\n***\np2"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "***\np1\n***\np2\n***", "p1\n***\n***\np2"),  # empty middle paragraph fails
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"},
     "one two three", "one two"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"},
     "one two", "one two three"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
     "First part.\n\n\"Then, the second.", "First part.\n\nNow the second."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 1, "first_word": "hi"},
     "Hi there.\n\nb\n\nc", "Hi there.\n\nb"),  # wrong paragraph count
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello.\np. s. see you", "Hello. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hi\nP.P.S bye", "Hi\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "Intro\n* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1},
     "* one\n**bold** line", "Inline * star is no bullet"),
    ("detectable_format:constrained_response", {}, "  My answer is maybe. Because.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*one* and **two**", "*one* and * *"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA\nSection 2\nB", "Section 1\nA\nsection 2\nB"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses.", "<< >>\nRoses."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.",
     "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "write a POEM. Roses are red.", "Sure! Write a poem."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     '"Done. any other questions?"', "Any other questions? Bye."),
    ("startend:quotation", {}, '  "Quoted text."  ', '"Unclosed'),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "THE WELL-KNOWN CAT is here", "THE cat WELL-KNOWN"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only ONE shout", "TWO SHOUTS"),
    ("change_case:english_capital", {}, LONG_ENGLISH.upper(), LONG_ENGLISH),
    ("change_case:english_lowercase", {}, LONG_ENGLISH.lower(), LONG_ENGLISH),
    ("punctuation:no_comma", {}, "No commas at all.", "One, two."),
]


@pytest.mark.parametrize("instruction_id, kwargs, good, bad", CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_checker_accepts_good_and_rejects_bad(instruction_id, kwargs, good, bad):
    checker = build_checker(instruction_id, kwargs)
    assert checker.check(good) is True
    assert checker.check(bad) is False
    assert isinstance(checker.describe(), str) and checker.describe()


def test_every_registered_checker_has_a_test_case():
    assert {case[0] for case in CASES} == set(instruction_ids())


def test_language_detection_failure_counts_as_followed():
    # the reference counts undetectable text (no letters) as following the instruction
    assert build_checker("language:response_language", {"language": "fr"}).check("12345")
    # ... but the case checks look at casing first
    assert not build_checker("change_case:english_capital", {}).check("12345")


def test_bad_relation_is_a_config_error():
    with pytest.raises(ConfigError):
        build_checker("length_constraints:number_words", {"num_words": 3, "relation": "exactly"})


def test_unknown_instruction_suggests_close_name():
    with pytest.raises(ConfigError, match="did you mean 'punctuation:no_comma'"):
        build_checker("punctuation:no_comas", {})


def test_none_kwargs_are_dropped():
    checker = build_checker("punctuation:no_comma", {"num_words": None})
    assert checker.check("fine")


@pytest.fixture(scope="module")
def ifeval_rows(shared_data):
    path = shared_data / "ifeval" / "input_data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_real_file_instruction_ids_all_have_checkers(ifeval_rows):
    used = {iid for row in ifeval_rows for iid in row["instruction_id_list"]}
    assert len(ifeval_rows) == 541
    assert len(used) == 25
    assert used == set(CHECKERS.names())


def test_all_541_prompts_build_their_checkers(ifeval_rows):
    built = 0
    for row in ifeval_rows:
        assert len(row["instruction_id_list"]) == len(row["kwargs"])
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            checker = build_checker(instruction_id, kwargs)
            assert checker.describe()
            built += 1
    assert built == sum(len(row["instruction_id_list"]) for row in ifeval_rows)
