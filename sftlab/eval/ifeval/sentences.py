"""Offline word and sentence counting that follows IFEval's reference counters.

The IFEval authors count with NLTK: words with ``RegexpTokenizer(r"\\w+")``, sentences with
the pretrained Punkt model (``tokenizers/punkt/english.pickle``), and all-capital words with
``nltk.word_tokenize``. NLTK data cannot be downloaded here, so this module re-implements
the Punkt *decision procedure* (Kiss & Strunk 2006, as NLTK applies it at tokenize time)
with the English model's published abbreviations, sentence starters and collocations.
What that means in practice:

- A sentence ends at ``.``, ``?`` or ``!`` followed by whitespace and another token (or
  by closing punctuation). Text without final punctuation is still one sentence, and a
  newline alone never ends a sentence (Punkt ignores line breaks; so does the reference).
- The model's abbreviations (``Mr.``, ``Dr.``, ``U.S.``, ``Inc.``, ``Jan.``...), initials
  before a name (``J. Smith``) and decimals (``3.14``) do not end a sentence, unless an
  abbreviation is followed by a clear sentence starter (``... Inc. The ...``).
- ``e.g.``, ``i.e.`` and ``etc.`` are NOT in the English model, so they end a sentence
  (``"Use tools, e.g. a hammer."`` counts 2). Numbered list markers ``1.`` before a
  capitalised word also end one (``"1. Apples\n2. Pears"`` counts 3). We match the
  reference, not intuition.
- Runs like ``?!`` or ``..."`` stay with their sentence; closing quotes and brackets after
  the break move to the sentence they close.

Known deviation: Punkt also learned in which casings ~20k words occur ("orthographic
context"); we approximate it with a list of common lower-case words, which only matters
for a capitalised word right after an abbreviation, initial or number.

>>> count_sentences("Mr. Smith paid $3.14 at the U.S. store. Was it fair?! Yes.")
3
>>> count_words("Don't split-hyphens, ok?")  # Don, t, split, hyphens, ok
5
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

# The parameters of NLTK's pretrained English Punkt model (trained on Wall Street Journal
# text), as published in converted form by the neurosnap/sentences project
# (data/english.json): abbreviations (final period removed), sentence starters and
# collocations. Note what is NOT an abbreviation there: "e.g", "i.e", "etc" end a
# sentence in the reference count.
ABBREVIATIONS = frozenset(
    """
    a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz ave b.f b.v bros c c.i.t c.o.m.b c.v
    calif chg cie co col colo conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g
    f.j feb fla fri ft g g.d g.f g.k ga gen h h.c h.f h.m i.m.s ill inc j.b j.c j.j j.k j.p
    j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c m.j maj messrs mg mich minn mr mrs
    ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa ph.d prof r r.a
    r.h r.i r.j r.k r.t rep reps s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j
    tenn tues u.k u.n u.s u.s.a u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr
    """.split()
)
SENTENCE_STARTERS = frozenset(
    """
    according although among both but despite even he however i if in indeed instead it
    many meanwhile moreover most nevertheless nonetheless nor separately similarly since
    so some sales the there these they this though thus under when while yet
    """.split()
)
COLLOCATIONS = frozenset(
    tuple(pair.split(","))
    for pair in """
    ##number##,international i,toussie b,smith ##number##,genentech b,stewart
    ##number##,pay-fone ##number##,henley ##number##,insider ##number##,wedgestone j,aron
    ##number##,financing ##number##,review ##number##,cbot ##number##,zimmer b,levine
    ##number##,aes ##number##,cooper ##number##,colgate ##number##,pegasus ##number##,pepper
    j,walter ##number##,corrections ##number##,rj ##number##,dividend ##number##,notable
    ##number##,who b,wigton ##number##,commodities i,magnin ##number##,leisure o,ludcke
    ##number##,abreast ##number##,credit ##number##,letters b,edelman ##number##,business
    j,fialka
    """.split()
)
# Punkt also learned, per word, in which casings it was seen (its "orthographic context",
# ~20k words, not reproduced here). A capitalised word counts as a sure sentence start
# when it was seen in lower case and never capitalised mid-sentence: we approximate that
# set by common function words.
COMMON_LOWERCASE_WORDS = SENTENCE_STARTERS | frozenset(
    """
    that those then its she we you his her their our my your a an on at for and or
    also what which who how why where because hence therefore furthermore finally first
    second third next today now here all each every one no not please let after before as
    """.split()
)

_SENT_END_CHARS = ".?!"
# After a candidate end: closing/other punctuation, or whitespace then the next token.
_END_CONTEXT = re.compile(
    r"[.?!](?=(?P<after_tok>[)\";}\]*:@'({\[!?]|\s+(?P<next_tok>\S+)))"
)
# Punkt's word tokenizer: "--" / "..." runs, words up to a separator, or one symbol.
_NON_WORD = r"(?:[)\";}\]*:@'({\[?!])"
_MULTI_CHAR = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_WORD_TOKEN = re.compile(
    rf"""(
        {_MULTI_CHAR}
        |
        (?=[^(\"`{{\[:;&\#*@)}}\]\-,])\S+?
        (?=\s|$|{_NON_WORD}|{_MULTI_CHAR}|,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR}))
        |
        \S
    )""",
    re.UNICODE | re.VERBOSE,
)
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_ELLIPSIS = re.compile(r"\.\.+$")
_REALIGN = re.compile(r"[\"')\]}]+?(?:\s+|(?=--)|$)")


@dataclass
class _Token:
    text: str
    sentbreak: bool = False
    abbr: bool = False
    ellipsis: bool = False

    @property
    def type(self) -> str:
        return "##number##" if _NUMBER.match(self.text) else self.text.lower()

    @property
    def type_no_period(self) -> str:
        typ = self.type
        return typ[:-1] if len(typ) > 1 and typ.endswith(".") else typ

    @property
    def type_no_sentperiod(self) -> str:
        return self.type_no_period if self.sentbreak else self.type

    @property
    def period_final(self) -> bool:
        return self.text.endswith(".")

    @property
    def first_upper(self) -> bool:
        return self.text[:1].isupper()

    @property
    def first_lower(self) -> bool:
        return self.text[:1].islower()


def _is_sentence_starter(token: _Token) -> bool | None:
    """Punkt's orthographic heuristic: True (starts a sentence), False, or None (unknown).

    Lower-case words never start a sentence; capitalised common words do; capitalised
    other words (names) are unknown."""
    if token.text in ";:,.!?":
        return False
    if token.first_lower:
        return False
    if token.first_upper and token.type_no_sentperiod in COMMON_LOWERCASE_WORDS:
        return True
    return None


def _annotate(tokens: list[_Token]) -> None:
    """Mark sentence breaks: first by the token itself, then by looking at the next one."""
    for token in tokens:
        text = token.text
        if text in _SENT_END_CHARS:
            token.sentbreak = True
        elif _ELLIPSIS.match(text):
            token.ellipsis = True
        elif token.period_final and not text.endswith(".."):
            stem = text[:-1].lower()
            if stem in ABBREVIATIONS or stem.split("-")[-1] in ABBREVIATIONS:
                token.abbr = True
            else:
                token.sentbreak = True
    for token, following in zip(tokens, tokens[1:]):
        _second_pass(token, following)


def _second_pass(token: _Token, following: _Token) -> None:
    if not token.period_final:
        return
    is_initial = bool(_INITIAL.match(token.text))
    if (token.type_no_period, following.type_no_sentperiod) in COLLOCATIONS:
        token.sentbreak, token.abbr = False, True
        return
    if (token.abbr or token.ellipsis) and not is_initial:
        # an abbreviation or "..." ends a sentence only before a clear sentence starter
        starter = _is_sentence_starter(following)
        if starter is True or (following.first_upper
                               and following.type_no_sentperiod in SENTENCE_STARTERS):
            token.sentbreak = True
            return
    if is_initial or token.type_no_period == "##number##":
        starter = _is_sentence_starter(following)
        if starter is False or (starter is None and is_initial and following.first_upper):
            token.sentbreak, token.abbr = False, True


def _contains_break(context: str) -> bool:
    """True if some token in ``context`` ends a sentence and another token follows it."""
    tokens = [_Token(text) for text in _WORD_TOKEN.findall(context)]
    _annotate(tokens)
    return any(token.sentbreak for token in tokens[:-1])


def _candidate_ends(text: str):
    """Yield (match, context) per candidate end; several ends inside one word (``?!``)
    are merged into the last one, whose context starts at the word's beginning."""
    previous_span: tuple[int, int] = (0, 0)
    previous_match = None
    for match in _END_CONTEXT.finditer(text):
        before = text[previous_span[1] : match.start()]
        spaces = [i for i, char in enumerate(before) if char in string.whitespace]
        # as NLTK: a last space at index 0 counts as none (only at the very start)
        if spaces and spaces[-1]:
            word_start = previous_span[1] + spaces[-1] + 1
        else:
            word_start = previous_span[0]
        span = (word_start, match.start())
        if previous_match is not None and previous_span[1] <= span[0]:
            yield previous_match, _context(text, previous_span, previous_match)
        previous_match, previous_span = match, span
    if previous_match is not None:
        yield previous_match, _context(text, previous_span, previous_match)


def _context(text: str, span: tuple[int, int], match) -> str:
    return text[span[0] : span[1]] + match.group() + match.group("after_tok")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``, in order."""
    slices: list[tuple[int, int]] = []
    last_break = 0
    for match, context in _candidate_ends(text):
        if _contains_break(context):
            slices.append((last_break, match.end()))
            last_break = match.start("next_tok") if match.group("next_tok") else match.end()
    slices.append((last_break, len(text.rstrip())))
    return _realign(text, slices)


def _realign(text: str, slices: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Move closing quotes/brackets at the start of a sentence to the previous one."""
    result: list[tuple[int, int]] = []
    shift = 0
    for index, (start, end) in enumerate(slices):
        start += shift
        shift = 0
        if index + 1 < len(slices):
            following = slices[index + 1]
            match = _REALIGN.match(text, following[0], following[1])
            if match:
                result.append((start, following[0] + len(match.group(0).rstrip())))
                shift = match.end() - following[0]
                continue
        if text[start:end]:
            result.append((start, end))
    return result


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as strings (newlines kept inside sentences)."""
    return [text[start:end] for start, end in sentence_spans(text)]


def count_sentences(text: str) -> int:
    """Number of sentences as IFEval's ``count_sentences`` (Punkt) counts them."""
    return len(sentence_spans(text))


_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """IFEval's word count: runs of word characters (``\\w+``), so ``don't`` is 2 words
    and ``split-hyphens`` is 2."""
    return len(_WORD.findall(text))


# Treebank-style tokenisation (what ``nltk.word_tokenize`` does), reduced to the rules
# that change which tokens ``str.isupper`` sees: brackets and ; @ # $ % & ? ! " split off,
# so do , and : unless a digit follows (1,000 and 10:30 stay whole), "--" splits,
# contractions split (DON'T -> DO N'T), and hyphenated words stay whole.
_ALWAYS_SPLIT = re.compile(r"""([;@#$%&?!"\[\](){}<>]|--)""")
_COMMA_COLON = re.compile(r"([:,])(?!\d)")
_CONTRACTION = re.compile(r"(?i)(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")


def word_tokenize(text: str) -> list[str]:
    """Approximate ``nltk.word_tokenize``: words, contractions and punctuation tokens.

    >>> word_tokenize("WELL-KNOWN cats DON'T (really) care, 1,000 times!")
    ['WELL-KNOWN', 'cats', 'DO', "N'T", '(', 'really', ')', 'care', ',', '1,000', 'times', '!']
    """
    text = _ALWAYS_SPLIT.sub(r" \1 ", text)
    text = _COMMA_COLON.sub(r" \1 ", text)
    text = _CONTRACTION.sub(r" \1", text)
    return text.split()
