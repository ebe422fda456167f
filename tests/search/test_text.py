"""The pure text side of search: what becomes a term, how marks become ranges, Python highlights."""

from __future__ import annotations

from chatstudio.search.text import MARK_END, MARK_START, MAX_TERM_CHARS, MAX_TERMS, highlight, terms_of, unmark


def test_terms_are_plain_lowercase_words_without_operators() -> None:
    assert (
        terms_of('"Deploy" the-parser* OR -x AND (y) NEAR/2 z:* a_b')
        == [
            "deploy",
            "the",
            "parser",
            "or",
            "x",
            "and",
            "y",
            "near",
            "2",
            "z",
            "a",
            "b",
        ][:MAX_TERMS]
    )
    assert terms_of("Zürich café ZÜRICH") == ["zürich", "café"]
    assert terms_of("'; DROP TABLE message; --") == ["drop", "table", "message"]
    assert terms_of("*** --- \"\" ''") == []
    assert terms_of("x" * 500) == ["x" * MAX_TERM_CHARS]


def test_unmark_turns_markers_into_ranges() -> None:
    text, ranges = unmark(f"a {MARK_START}kettle{MARK_END} and {MARK_START}tea{MARK_END}")
    assert text == "a kettle and tea"
    assert [text[s:e] for s, e in ranges] == ["kettle", "tea"]
    # Stray or empty markers never produce a range or leak into the text.
    assert unmark(f"{MARK_END}x{MARK_START}{MARK_END}y{MARK_START}") == ("xy", [])


def test_highlight_short_text_whole() -> None:
    text, ranges = highlight("Ferries to the coast, and a ferry back", ["ferr"])
    assert text == "Ferries to the coast, and a ferry back"
    assert [text[s:e] for s, e in ranges] == ["Ferries", "ferry"]


def test_highlight_ignores_case_and_accents_like_mysql() -> None:
    text, ranges = highlight("Le Café de Zürich", ["cafe", "zurich"])
    assert [text[s:e] for s, e in ranges] == ["Café", "Zürich"]


def test_highlight_long_text_windows_around_the_first_match() -> None:
    filler = " ".join(f"word{i}" for i in range(200))
    source = f"{filler} the needle is here {filler}"
    text, ranges = highlight(source, ["needle"])
    assert len(text) < 300
    assert text.startswith("…")
    assert text.endswith("…")
    assert [text[s:e] for s, e in ranges] == ["needle"]
    assert text.strip("…") in source
