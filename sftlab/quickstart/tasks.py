"""Exactly-checkable instruction tasks for the quickstart, Flan-style: each task draws
random instances from a seed and renders them through several natural-language templates.

Some templates of the seen tasks and some whole tasks are held out for evaluation only,
so the quickstart can measure (a) seen tasks phrased in unseen ways and (b) unseen tasks.

>>> import random
>>> task = TASKS["sort_numbers"]
>>> fields, answer = task.make(random.Random(0))
>>> sorted(fields), answer
(['numbers'], '6, 34, 54, 98')
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

WORDS = (
    "apple river stone cloud garden window yellow silver forest candle rabbit orange pencil "
    "mountain guitar planet coffee winter summer bridge castle dragon engine feather harbor "
    "island jacket kitten lemon marble needle ocean pepper quartz rocket saddle tiger velvet "
    "wagon yogurt zebra anchor basket copper desert falcon ginger hammer igloo jungle"
).split()
POSITIVE = "wonderful delightful excellent lovely great amazing pleasant superb charming fantastic".split()
NEGATIVE = "terrible awful horrible dreadful poor boring disappointing nasty miserable annoying".split()
SUBJECTS = "The movie|The meal|Our trip|The concert|This book|The hotel|The game|The lesson".split("|")


@dataclass(frozen=True)
class Task:
    """A task: ``make(rng) -> (fields, answer)`` and templates over the fields.

    ``held_out`` templates (by index) are used for evaluation only."""

    name: str
    make: Callable[[random.Random], tuple[dict[str, str], str]]
    templates: tuple[str, ...]
    held_out: tuple[int, ...] = (-1,)  # the last template, unless said otherwise

    def train_templates(self) -> list[int]:
        return [i for i in range(len(self.templates)) if not self._is_held_out(i)]

    def eval_templates(self) -> list[int]:
        return [i for i in range(len(self.templates)) if self._is_held_out(i)]

    def _is_held_out(self, index: int) -> bool:
        return index in {h % len(self.templates) for h in self.held_out}

    def render(self, template_index: int, fields: dict[str, str]) -> str:
        return self.templates[template_index].format(**fields)


TASKS: dict[str, Task] = {}
# whole tasks the model never trains on
UNSEEN_TASKS = ("min_number", "lowercase", "second_item")


def task(name: str, *templates: str):
    def add(make):
        TASKS[name] = Task(name, make, templates)
        return make

    return add


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _numbers(rng: random.Random, low: int = 3, high: int = 5, top: int = 99) -> list[int]:
    return rng.sample(range(1, top + 1), rng.randint(low, high))


def _join(items) -> str:
    return ", ".join(map(str, items))


@task("uppercase",
      "Convert to uppercase: {text}",
      "Rewrite the following words in capital letters.\n{text}",
      "{text}\n\nWrite the text above in all caps.",
      "Make every letter of this text uppercase: {text}")
def _uppercase(rng):
    text = " ".join(_words(rng, 1, 3))
    return {"text": text}, text.upper()


@task("lowercase",
      "Convert to lowercase: {text}",
      "{text}\n\nWrite the text above in small letters only.")
def _lowercase(rng):
    text = " ".join(_words(rng, 1, 3)).upper()
    return {"text": text}, text.lower()


@task("first_item",
      "What is the first item of this list? {items}",
      "List: {items}\nWhich item comes first?",
      "Give the first element of the list [{items}].",
      "Here are some things: {items}. Name the one at the start.")
def _first_item(rng):
    items = _words(rng, 3, 5)
    return {"items": _join(items)}, items[0]


@task("second_item",
      "What is the second item of this list? {items}",
      "List: {items}\nWhich item comes second?")
def _second_item(rng):
    items = _words(rng, 3, 5)
    return {"items": _join(items)}, items[1]


@task("last_item",
      "What is the last item of this list? {items}",
      "List: {items}\nWhich item comes last?",
      "Give the final element of the list [{items}].",
      "Here are some things: {items}. Name the one at the end.")
def _last_item(rng):
    items = _words(rng, 3, 5)
    return {"items": _join(items)}, items[-1]


@task("reverse_words",
      "Reverse the order of these words: {text}",
      "Write these words backwards, last word first: {text}",
      "{text}\n\nList the words above in reverse order.",
      "Put the words of '{text}' in the opposite order.")
def _reverse_words(rng):
    words = _words(rng, 2, 4)
    return {"text": " ".join(words)}, " ".join(reversed(words))


@task("sort_numbers",
      "Sort these numbers from smallest to largest: {numbers}",
      "Numbers: {numbers}\nWrite them in ascending order.",
      "Put {numbers} in increasing order.",
      "Arrange the following numbers in ascending order, separated by commas: {numbers}")
def _sort_numbers(rng):
    numbers = _numbers(rng)
    return {"numbers": _join(numbers)}, _join(sorted(numbers))


@task("count_items",
      "How many items are in this list? {items}",
      "Count the elements: {items}",
      "List: {items}\nWhat is the number of items?",
      "Tell me how many things are listed here: {items}")
def _count_items(rng):
    items = _words(rng, 2, 7)
    return {"items": _join(items)}, str(len(items))


@task("add",
      "What is {a} + {b}?",
      "Add {a} and {b}.",
      "Compute the sum of {a} and {b}.",
      "{a} plus {b} equals what?")
def _add(rng):
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return {"a": str(a), "b": str(b)}, str(a + b)


@task("subtract",
      "What is {a} - {b}?",
      "Subtract {b} from {a}.",
      "Compute {a} minus {b}.",
      "What do you get when you take {b} away from {a}?")
def _subtract(rng):
    a = rng.randint(10, 99)
    b = rng.randint(1, a)
    return {"a": str(a), "b": str(b)}, str(a - b)


@task("max_number",
      "Which is the largest number? {numbers}",
      "Numbers: {numbers}\nWhat is the maximum?",
      "Find the biggest value among {numbers}.",
      "Give the greatest of these numbers: {numbers}")
def _max_number(rng):
    numbers = _numbers(rng)
    return {"numbers": _join(numbers)}, str(max(numbers))


@task("min_number",
      "Which is the smallest number? {numbers}",
      "Numbers: {numbers}\nWhat is the minimum?")
def _min_number(rng):
    numbers = _numbers(rng)
    return {"numbers": _join(numbers)}, str(min(numbers))


@task("extract_numbers",
      "Extract all numbers from this sentence: {text}",
      "{text}\n\nList the numbers that appear above, separated by commas.",
      "Which numbers are mentioned in: \"{text}\"?",
      "Pull out every number in the following text, in order: {text}")
def _extract_numbers(rng):
    numbers = _numbers(rng, 2, 3, top=999)
    words = _words(rng, len(numbers) + 2, len(numbers) + 4)
    slots = sorted(rng.sample(range(len(words)), len(numbers)))
    for slot, number in zip(slots, numbers):
        words[slot] = f"{number} {words[slot]}"
    ordered = [int(n) for n in re.findall(r"\d+", " ".join(words))]
    return {"text": " ".join(words).capitalize() + "."}, _join(ordered)


@task("sentiment",
      "Is the sentiment of this review positive or negative?\n{text}\nOPTIONS:\n- positive\n- negative",
      "{text}\nDid the writer like it? Answer positive or negative.",
      "Review: {text}\nSentiment (positive/negative):",
      "Classify the review as positive or negative: {text}")
def _sentiment(rng):
    label = rng.choice(["positive", "negative"])
    adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    return {"text": f"{rng.choice(SUBJECTS)} was {adjective}."}, label


@task("list_slice",
      "Give items {i} to {j} of this list: {items}",
      "List: {items}\nWrite elements number {i} through {j}.",
      "From [{items}], return the elements at positions {i} to {j} (counting from 1).",
      "Which items are in positions {i} to {j} of: {items}?")
def _list_slice(rng):
    items = _words(rng, 4, 6)
    i = rng.randint(1, len(items) - 1)
    j = rng.randint(i + 1, len(items))
    return {"items": _join(items), "i": str(i), "j": str(j)}, _join(items[i - 1:j])


@task("repeat_word",
      "Write the word '{word}' {n} times, separated by spaces.",
      "Repeat {word} {n} times.",
      "Say '{word}' exactly {n} times in a row.",
      "Output the word {word}, {n} times over, with spaces between.")
def _repeat_word(rng):
    word, n = rng.choice(WORDS), rng.randint(2, 4)
    return {"word": word, "n": str(n)}, " ".join([word] * n)


def normalize_answer(text: str) -> str:
    """Exact match up to surrounding whitespace, quotes, a final period and list spacing.

    >>> normalize_answer(' "6, 7,49." ')
    '6, 7, 49'
    """
    text = text.strip().strip("\"'`").strip()
    text = text.rstrip(".").strip()
    text = re.sub(r"\s*,\s*", ", ", text)
    return re.sub(r"\s+", " ", text)


def exact_match(response: str, answer: str) -> bool:
    return normalize_answer(response) == normalize_answer(answer)
