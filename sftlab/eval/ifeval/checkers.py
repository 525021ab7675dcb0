"""The 25 IFEval instruction checkers: one small class per instruction id.

Each class is built from the prompt's kwargs for that instruction (the names used in
``input_data.jsonl``), ``describe()`` gives the instruction text, and ``check(response)``
returns whether a response follows it. The decisions follow the IFEval authors' reference
(google-research ``instruction_following_eval/instructions.py``), including its quirks,
because the point is to reproduce published scores:

- keyword checks use the keyword as a regular expression, case-insensitive, and
  ``keywords:existence``/``frequency`` match substrings (``"le"`` is found in ``"table"``);
  only ``forbidden_words`` uses word boundaries;
- paragraphs (``number_paragraphs``) are split on ``***``; ``nth_paragraph_first_word``
  splits on blank lines;
- words are ``\\w+`` runs; sentences are counted the Punkt way (see ``sentences.py``);
- a response that fails language detection counts as following the language instruction.

>>> NumberOfWords(num_words=3, relation="at least").check("one two three")
True
>>> NumberOfWords(num_words=3, relation="less than").describe()
'Answer with less than 3 words.'
"""
from __future__ import annotations

import collections
import json
import re
from typing import Any

import langdetect

from sftlab.errors import ConfigError
from sftlab.eval.ifeval.registry import CHECKERS
from sftlab.eval.ifeval.sentences import count_sentences, count_words, word_tokenize

RELATIONS = ("less than", "at least")

# ISO 639-1 codes used by IFEval's response_language instruction.
LANGUAGES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi",
    "fr": "French", "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian",
    "bn": "Bengali", "uk": "Ukrainian", "th": "Thai", "ur": "Urdu", "ta": "Tamil",
    "te": "Telugu", "bg": "Bulgarian", "ko": "Korean", "pl": "Polish", "he": "Hebrew",
    "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada",
    "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}

CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def compare(count: int, relation: str, threshold: int) -> bool:
    """``less than`` -> count < threshold; ``at least`` -> count >= threshold."""
    return count < threshold if relation == "less than" else count >= threshold


def _relation(value: str) -> str:
    if value not in RELATIONS:
        raise ConfigError(f"IFEval relation must be one of {RELATIONS}, got {value!r}")
    return value


def _search(pattern: str, text: str) -> list[str]:
    """All case-insensitive matches of ``pattern`` used as a regex, as the reference does;
    a pattern that is not a valid regex is matched literally instead of crashing."""
    try:
        return re.findall(pattern, text, flags=re.IGNORECASE)
    except re.error:
        return re.findall(re.escape(pattern), text, flags=re.IGNORECASE)


def detect_language(text: str) -> str | None:
    """ISO code from ``langdetect`` (seeded: deterministic), or None when the text has no
    detectable features (empty, digits only)."""
    langdetect.DetectorFactory.seed = 0  # as the reference: deterministic detection
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


class Checker:
    """Base: subclasses set ``id`` (by registration) and implement describe/check."""

    id: str = ""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, response: str) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({arguments})"


def register(instruction_id: str):
    def add(cls):
        cls.id = instruction_id
        return CHECKERS.register(instruction_id)(cls)

    return add


# ----------------------------------------------------------------------------- keywords
@register("keywords:existence")
class KeywordsExist(Checker):
    def __init__(self, keywords: list[str]):
        self.keywords = sorted(keywords)

    def describe(self) -> str:
        return f"Include keywords {self.keywords} in the response."

    def check(self, response: str) -> bool:
        return all(_search(keyword, response) for keyword in self.keywords)


@register("keywords:frequency")
class KeywordFrequency(Checker):
    def __init__(self, keyword: str, frequency: int, relation: str):
        self.keyword, self.frequency = keyword.strip(), frequency
        self.relation = _relation(relation)

    def describe(self) -> str:
        return (f"In your response, the word {self.keyword} should appear {self.relation} "
                f"{self.frequency} times.")

    def check(self, response: str) -> bool:
        return compare(len(_search(self.keyword, response)), self.relation, self.frequency)


@register("keywords:forbidden_words")
class ForbiddenWords(Checker):
    def __init__(self, forbidden_words: list[str]):
        self.forbidden_words = sorted(set(forbidden_words))

    def describe(self) -> str:
        return f"Do not include keywords {self.forbidden_words} in the response."

    def check(self, response: str) -> bool:
        return not any(_search(r"\b" + word + r"\b", response) for word in self.forbidden_words)


@register("keywords:letter_frequency")
class LetterFrequency(Checker):
    def __init__(self, letter: str, let_frequency: int, let_relation: str):
        self.letter = letter.strip().lower()
        self.let_frequency = let_frequency
        self.let_relation = _relation(let_relation)

    def describe(self) -> str:
        return (f"In your response, the letter {self.letter} should appear "
                f"{self.let_relation} {self.let_frequency} times.")

    def check(self, response: str) -> bool:
        count = collections.Counter(response.lower())[self.letter]
        return compare(count, self.let_relation, self.let_frequency)


# ----------------------------------------------------------------------------- language
@register("language:response_language")
class ResponseLanguage(Checker):
    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise ConfigError(f"unknown IFEval language code {language!r}")
        self.language = language

    def describe(self) -> str:
        return (f"Your ENTIRE response should be in {LANGUAGES[self.language]} language, "
                "no other language is allowed.")

    def check(self, response: str) -> bool:
        detected = detect_language(response)
        return detected is None or detected == self.language


# ----------------------------------------------------------------------------- length
@register("length_constraints:number_sentences")
class NumberOfSentences(Checker):
    def __init__(self, num_sentences: int, relation: str):
        self.num_sentences, self.relation = num_sentences, _relation(relation)

    def describe(self) -> str:
        return f"Your response should contain {self.relation} {self.num_sentences} sentences."

    def check(self, response: str) -> bool:
        return compare(count_sentences(response), self.relation, self.num_sentences)


@register("length_constraints:number_paragraphs")
class NumberOfParagraphs(Checker):
    """Paragraphs are separated by the markdown divider ``***``; an empty paragraph in
    the middle fails, empty ones at either end are ignored."""

    def __init__(self, num_paragraphs: int):
        self.num_paragraphs = num_paragraphs

    def describe(self) -> str:
        return (f"There should be {self.num_paragraphs} paragraphs. "
                "Paragraphs are separated with the markdown divider: ***")

    def check(self, response: str) -> bool:
        paragraphs = re.split(r"\s?\*\*\*\s?", response)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                if index in (0, len(paragraphs) - 1):
                    count -= 1
                else:
                    return False
        return count == self.num_paragraphs


@register("length_constraints:number_words")
class NumberOfWords(Checker):
    def __init__(self, num_words: int, relation: str):
        self.num_words, self.relation = num_words, _relation(relation)

    def describe(self) -> str:
        return f"Answer with {self.relation} {self.num_words} words."

    def check(self, response: str) -> bool:
        return compare(count_words(response), self.relation, self.num_words)


@register("length_constraints:nth_paragraph_first_word")
class NthParagraphFirstWord(Checker):
    """Paragraphs split on ``\\n\\n``; the count excludes blank ones, and the nth paragraph's
    first word (leading quotes dropped, cut at the first . , ? ! ' ") must match."""

    def __init__(self, num_paragraphs: int, nth_paragraph: int, first_word: str):
        self.num_paragraphs, self.nth_paragraph = num_paragraphs, nth_paragraph
        self.first_word = first_word.lower()

    def describe(self) -> str:
        return (f"There should be {self.num_paragraphs} paragraphs. Paragraphs and only "
                "paragraphs are separated with each other by two new lines as if it was "
                f"'\\n\\n' in python. Paragraph {self.nth_paragraph} must start with word "
                f"{self.first_word}.")

    def check(self, response: str) -> bool:
        paragraphs = response.split("\n\n")
        count = sum(1 for paragraph in paragraphs if paragraph.strip())
        if self.nth_paragraph > count:
            return False
        # the reference indexes the raw split list (blank paragraphs included)
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first_word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
        return count == self.num_paragraphs and first_word == self.first_word


# ----------------------------------------------------------------------------- content
@register("detectable_content:number_placeholders")
class Placeholders(Checker):
    def __init__(self, num_placeholders: int):
        self.num_placeholders = num_placeholders

    def describe(self) -> str:
        return (f"The response must contain at least {self.num_placeholders} placeholders "
                "represented by square brackets, such as [address].")

    def check(self, response: str) -> bool:
        return len(re.findall(r"\[.*?\]", response)) >= self.num_placeholders


@register("detectable_content:postscript")
class Postscript(Checker):
    """A line (anywhere) starting with the marker, case-insensitive; ``P.S.`` and
    ``P.P.S`` allow a space after each period."""

    def __init__(self, postscript_marker: str):
        self.postscript_marker = postscript_marker.strip()

    def describe(self) -> str:
        return ("At the end of your response, please explicitly add a postscript starting "
                f"with {self.postscript_marker}")

    def check(self, response: str) -> bool:
        if self.postscript_marker == "P.P.S":
            pattern = r"\s*p\.\s?p\.\s?s.*$"
        elif self.postscript_marker == "P.S.":
            pattern = r"\s*p\.\s?s\..*$"
        else:
            pattern = r"\s*" + self.postscript_marker.lower() + r".*$"
        return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# ----------------------------------------------------------------------------- format
@register("detectable_format:number_bullet_lists")
class BulletList(Checker):
    """Exactly N lines starting with ``*`` (not ``**``) or ``-``."""

    def __init__(self, num_bullets: int):
        self.num_bullets = num_bullets

    def describe(self) -> str:
        return (f"Your answer must contain exactly {self.num_bullets} bullet points. Use the "
                "markdown bullet points such as:\n* This is point 1. \n* This is point 2")

    def check(self, response: str) -> bool:
        stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
        return len(stars) + len(dashes) == self.num_bullets


@register("detectable_format:constrained_response")
class ConstrainedResponse(Checker):
    def describe(self) -> str:
        return f"Answer with one of the following options: {CONSTRAINED_RESPONSES}"

    def check(self, response: str) -> bool:
        return any(option in response.strip() for option in CONSTRAINED_RESPONSES)


@register("detectable_format:number_highlighted_sections")
class HighlightedSections(Checker):
    """Counts non-empty ``*text*`` spans, and ``**text**`` spans once more."""

    def __init__(self, num_highlights: int):
        self.num_highlights = num_highlights

    def describe(self) -> str:
        return (f"Highlight at least {self.num_highlights} sections in your answer with "
                "markdown, i.e. *highlighted section*.")

    def check(self, response: str) -> bool:
        single = re.findall(r"\*[^\n\*]*\*", response)
        double = re.findall(r"\*\*[^\n\*]*\*\*", response)
        count = sum(1 for span in single if span.strip("*").strip())
        count += sum(1 for span in double if span.removeprefix("**").removesuffix("**").strip())
        return count >= self.num_highlights


@register("detectable_format:multiple_sections")
class MultipleSections(Checker):
    """At least N sections, each opened by ``<spliter> <number>`` (case-sensitive)."""

    def __init__(self, section_spliter: str, num_sections: int):
        self.section_spliter = section_spliter.strip()
        self.num_sections = num_sections

    def describe(self) -> str:
        s = self.section_spliter
        return (f"Your response must have {self.num_sections} sections. Mark the beginning "
                f"of each section with {s} X, such as:\n{s} 1\n[content of section 1]\n"
                f"{s} 2\n[content of section 2]")

    def check(self, response: str) -> bool:
        sections = re.split(r"\s?" + self.section_spliter + r"\s?\d+\s?", response)
        return len(sections) - 1 >= self.num_sections


@register("detectable_format:json_format")
class JsonFormat(Checker):
    def describe(self) -> str:
        return ("Entire output should be wrapped in JSON format. You can use markdown ticks "
                "such as ```.")

    def check(self, response: str) -> bool:
        text = response.strip()
        for fence in ("```json", "```Json", "```JSON", "```"):
            text = text.removeprefix(fence)
        text = text.removesuffix("```").strip()
        try:
            json.loads(text)
        except ValueError:
            return False
        return True


@register("detectable_format:title")
class Title(Checker):
    def describe(self) -> str:
        return ("Your answer must contain a title, wrapped in double angular brackets, such "
                "as <<poem of joy>>.")

    def check(self, response: str) -> bool:
        titles = re.findall(r"<<[^\n]+>>", response)
        return any(title.lstrip("<").rstrip(">").strip() for title in titles)


# ----------------------------------------------------------------------------- combination
@register("combination:two_responses")
class TwoResponses(Checker):
    def describe(self) -> str:
        return ("Give two different responses. Responses and only responses should be "
                "separated by 6 asterisk symbols: ******.")

    def check(self, response: str) -> bool:
        parts = response.split("******")
        valid = []
        for index, part in enumerate(parts):
            if part.strip():
                valid.append(part)
            elif index not in (0, len(parts) - 1):
                return False
        return len(valid) == 2 and valid[0].strip() != valid[1].strip()


@register("combination:repeat_prompt")
class RepeatPrompt(Checker):
    def __init__(self, prompt_to_repeat: str):
        if not prompt_to_repeat:
            raise ConfigError("combination:repeat_prompt needs a prompt_to_repeat")
        self.prompt_to_repeat = prompt_to_repeat

    def describe(self) -> str:
        return ("First repeat the request word for word without change, then give your "
                "answer (1. do not say any words or characters before repeating the request; "
                "2. the request you need to repeat does not include this sentence)")

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())


# ----------------------------------------------------------------------------- start/end
@register("startend:end_checker")
class EndPhrase(Checker):
    def __init__(self, end_phrase: str):
        self.end_phrase = end_phrase.strip()

    def describe(self) -> str:
        return (f"Finish your response with this exact phrase {self.end_phrase}. No other "
                "words should follow this phrase.")

    def check(self, response: str) -> bool:
        # surrounding double quotes are tolerated, case is not significant
        text = response.strip().strip('"').lower()
        return text.endswith(self.end_phrase.strip().lower())


@register("startend:quotation")
class Quotation(Checker):
    def describe(self) -> str:
        return "Wrap your entire response with double quotation marks."

    def check(self, response: str) -> bool:
        text = response.strip()
        return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# ----------------------------------------------------------------------------- case
@register("change_case:capital_word_frequency")
class CapitalWordFrequency(Checker):
    """Counts word tokens (hyphenated words are one) that are entirely upper case."""

    def __init__(self, capital_frequency: int, capital_relation: str):
        self.capital_frequency = capital_frequency
        self.capital_relation = _relation(capital_relation)

    def describe(self) -> str:
        return ("In your response, words with all capital letters should appear "
                f"{self.capital_relation} {self.capital_frequency} times.")

    def check(self, response: str) -> bool:
        count = sum(1 for token in word_tokenize(response) if token.isupper())
        return compare(count, self.capital_relation, self.capital_frequency)


@register("change_case:english_capital")
class EnglishCapital(Checker):
    def describe(self) -> str:
        return "Your entire response should be in English, and in all capital letters."

    def check(self, response: str) -> bool:
        if not response.isupper():
            return False
        detected = detect_language(response)
        return detected is None or detected == "en"


@register("change_case:english_lowercase")
class EnglishLowercase(Checker):
    def describe(self) -> str:
        return ("Your entire response should be in English, and in all lowercase letters. "
                "No capital letters are allowed.")

    def check(self, response: str) -> bool:
        if not response.islower():
            return False
        detected = detect_language(response)
        return detected is None or detected == "en"


# ----------------------------------------------------------------------------- punctuation
@register("punctuation:no_comma")
class NoComma(Checker):
    def describe(self) -> str:
        return "In your entire response, refrain from the use of any commas."

    def check(self, response: str) -> bool:
        return "," not in response


# ----------------------------------------------------------------------------- lookup
def build_checker(instruction_id: str, kwargs: dict[str, Any] | None = None) -> Checker:
    """A checker for one instruction of one prompt.

    ``kwargs`` is the prompt's kwargs entry for that instruction, e.g.
    ``{"relation": "at least", "num_words": 300}``; ``None`` values are dropped (some
    releases of input_data.jsonl list every argument name with null for unused ones).

    >>> checker = build_checker("punctuation:no_comma", {})
    >>> checker.check("No commas here."), checker.check("One, two.")
    (True, False)
    """
    cls = CHECKERS.get(instruction_id)
    arguments = {key: value for key, value in (kwargs or {}).items() if value is not None}
    return cls(**arguments)


def instruction_ids() -> list[str]:
    """Every registered instruction id, sorted."""
    return sorted(CHECKERS.names())
