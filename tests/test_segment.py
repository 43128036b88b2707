from __future__ import annotations

import pytest

from app.text.segment import segment


def words(text: str) -> list[str]:
    return [text[a:b] for s in segment(text) for a, b in s.words]


WORDS = [
    ("дорожно-транспортных происшествий", ["дорожно", "-", "транспортных", "происшествий"]),
    ("в 2019г. рост на 5,5%", ["в", "2019", "г", ".", "рост", "на", "5", ",", "5", "%"]),
    ("«Юстиция»/МВД", ["«", "Юстиция", "»", "/", "МВД"]),
    ('программы " Юстиция "', ["программы", '"', "Юстиция", '"']),
    ("IT-решений и ёмкостей", ["IT", "-", "решений", "и", "ёмкостей"]),
    ("Йошкар-Олы", ["Йошкар", "-", "Олы"]),
    ("и\u0306од", ["и\u0306од"]),  # a combining breve stays in its word
    ("эконо\u00adмики", ["эконо\u00adмики"]),  # so does a soft hyphen
    ("рост😀ВРП", ["рост", "😀", "ВРП"]),
    ("т.е. ...", ["т", ".", "е", ".", ".", ".", "."]),
]


@pytest.mark.parametrize(("text", "expected"), WORDS)
def test_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_sentences_end_at_sentence_punctuation_and_line_breaks() -> None:
    text = "ПАСПОРТ \r\nГосударственной программы\nРеспублики Коми. Рост ВРП составил 5 %.  \n\n"
    got = [text[s.start : s.end] for s in segment(text)]
    assert got == ["ПАСПОРТ", "Государственной программы", "Республики Коми.", "Рост ВРП составил 5 %."]


def test_keep_together_joins_sentences_around_a_span() -> None:
    text = "Доля населения\nв возрасте 6-18 лет. Прочее."
    plain = segment(text)
    assert len(plain) == 3
    joined = segment(text, keep_together=[(0, 33)])
    assert [text[s.start : s.end] for s in joined] == [text[: text.index(" Прочее")], "Прочее."]


def test_cuts_split_words_only_where_asked() -> None:
    text = "спиртосодержащей продукции"
    (s,) = segment(text, cuts=[6, 16, 17])
    assert [text[a:b] for a, b in s.words] == ["спирто", "содержащей", "продукции"]


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t ", "Рост.\r\n\r\nСнижение", "\ufeffтекст", "a" * 3000, "１２３ＡＢＣ", "x\x00y\x07z"],
)
def test_words_cover_every_visible_character_once(text: str) -> None:
    covered = [0] * len(text)
    for s in segment(text):
        assert s.start <= s.words[0][0] and s.words[-1][1] <= s.end
        for a, b in s.words:
            assert a < b
            assert not any(ch.isspace() for ch in text[a:b])
            for i in range(a, b):
                covered[i] += 1
    assert all(c == (0 if ch.isspace() else 1) for c, ch in zip(covered, text, strict=True))
