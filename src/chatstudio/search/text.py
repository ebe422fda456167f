"""Pure text helpers for search: user input to plain terms, marked snippets to (text, ranges).

No SQL and no I/O here: the repository renders the terms in each backend's query syntax.
"""

from __future__ import annotations

import re
import unicodedata

MAX_TERMS = 8
MAX_TERM_CHARS = 64
# Private-use code points: the databases wrap each match in these, and we turn them into ranges.
# Text that itself contains them only gets a misplaced highlight, never markup: we return ranges.
MARK_START = "\ue000"
MARK_END = "\ue001"
# Letters and digits only. Every operator of every backend's syntax (quotes, *, -, +, ~, <, >, (, ),
# :, &, |, !, @, AND/OR/NOT/NEAR as bare words are harmless as terms) is a separator, so what reaches
# a query can only ever be plain words.
_WORD = re.compile(r"[^\W_]+")
_MARKS = re.compile(f"([{MARK_START}{MARK_END}])")

SNIPPET_CHARS = 240
SNIPPET_LEAD = 60
ELLIPSIS = "…"

Range = tuple[int, int]


def terms_of(query: str) -> list[str]:
    """Lower-cased distinct words of the query, in order, at most MAX_TERMS of MAX_TERM_CHARS each."""
    seen: list[str] = []
    for match in _WORD.finditer(query.lower()):
        term = match.group()[:MAX_TERM_CHARS]
        if term not in seen:
            seen.append(term)
        if len(seen) == MAX_TERMS:
            break
    return seen


def unmark(marked: str) -> tuple[str, list[Range]]:
    """`a \ue000b\ue001 c` -> (`a b c`, [(2, 3)]): plain text and [start, end) ranges in code points."""
    parts: list[str] = []
    ranges: list[Range] = []
    position = 0
    start: int | None = None
    for part in _MARKS.split(marked):
        if part == MARK_START:
            start = position
        elif part == MARK_END:
            if start is not None and position > start:
                ranges.append((start, position))
            start = None
        elif part:
            parts.append(part)
            position += len(part)
    return "".join(parts), ranges


def _fold(word: str) -> str:
    # Case- and accent-insensitive, as MySQL's default collations compare.
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def highlight(text: str, terms: list[str], *, whole: bool = False) -> tuple[str, list[Range]]:
    """Where the database gives no snippet (MySQL): the words starting with a term, and a window of
    about SNIPPET_CHARS around the first of them (the whole text when `whole` or when it is short)."""
    folded_terms = [_fold(term) for term in terms]
    matches = [
        (m.start(), m.end())
        for m in _WORD.finditer(text)
        if any(_fold(m.group()).startswith(term) for term in folded_terms)
    ]
    if whole or len(text) <= SNIPPET_CHARS:
        return text, matches
    first = matches[0][0] if matches else 0
    start = max(0, first - SNIPPET_LEAD)
    if start:
        # Start at a word: skip forward past the partial word we landed in.
        space = re.search(r"\s", text[start:first])
        start = start + space.end() if space else first
    end = min(len(text), start + SNIPPET_CHARS)
    if end < len(text):
        last_space = text.rfind(" ", start, end)
        end = last_space if last_space > first else end
    prefix = ELLIPSIS if start else ""
    suffix = ELLIPSIS if end < len(text) else ""
    shift = len(prefix) - start
    ranges = [(s + shift, e + shift) for s, e in matches if s >= start and e <= end]
    return prefix + text[start:end] + suffix, ranges
