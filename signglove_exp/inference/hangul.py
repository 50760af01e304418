"""Fingerspelled jamo -> Hangul text: ㅎ ㅏ ㄴ -> 한, as a Korean keyboard composes them.

A syllable is an initial consonant, a vowel and an optional final (Unicode's algorithmic composition,
U+AC00 + (initial * 21 + vowel) * 28 + final); two vowels or two finals that form a compound one join
(ㅗ ㅏ -> ㅘ, ㄹ ㄱ -> ㄺ), and a final followed by a vowel moves on to start the next syllable
(한 ㅏ -> 하나, 닭 ㅏ -> 달가). Anything that is not a jamo (a space) ends the syllable and is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

INITIALS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
VOWELS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"  # U+314F..U+3163, in the order of the medial vowels
FINALS = " ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"  # index 0: no final
COMPOUND_VOWELS = {
    "ㅗㅏ": "ㅘ",
    "ㅗㅐ": "ㅙ",
    "ㅗㅣ": "ㅚ",
    "ㅜㅓ": "ㅝ",
    "ㅜㅔ": "ㅞ",
    "ㅜㅣ": "ㅟ",
    "ㅡㅣ": "ㅢ",
}
COMPOUND_FINALS = {
    "ㄱㅅ": "ㄳ",
    "ㄴㅈ": "ㄵ",
    "ㄴㅎ": "ㄶ",
    "ㄹㄱ": "ㄺ",
    "ㄹㅁ": "ㄻ",
    "ㄹㅂ": "ㄼ",
    "ㄹㅅ": "ㄽ",
    "ㄹㅌ": "ㄾ",
    "ㄹㅍ": "ㄿ",
    "ㄹㅎ": "ㅀ",
    "ㅂㅅ": "ㅄ",
}
SPLIT_FINALS = {v: k for k, v in COMPOUND_FINALS.items()}


def _syllable(initial: str | None, vowel: str | None, final: str | None) -> str:
    if initial and vowel:
        code = (INITIALS.index(initial) * 21 + VOWELS.index(vowel)) * 28 + FINALS.index(final or " ")
        return chr(0xAC00 + code)
    return (initial or "") + (vowel or "")


def compose(jamo: Iterable[str]) -> str:
    """The text a sequence of compatibility jamo (and spaces) spells."""
    text: list[str] = []
    initial = vowel = final = None
    for j in jamo:
        if j in VOWELS:
            if initial and not vowel:
                vowel = j
                continue
            if vowel and not final and vowel + j in COMPOUND_VOWELS:
                vowel = COMPOUND_VOWELS[vowel + j]
                continue
            if final:  # the final (or a compound's second half) starts the next syllable
                kept, moved = SPLIT_FINALS.get(final, (None, final))
                text.append(_syllable(initial, vowel, kept))
                initial, vowel, final = moved, j, None
                continue
            text.append(_syllable(initial, vowel, final))
            initial, vowel, final = None, j, None
        elif j in INITIALS or j in FINALS.strip():
            if initial and vowel and not final and j in FINALS.strip():
                final = j
                continue
            if final and final + j in COMPOUND_FINALS:
                final = COMPOUND_FINALS[final + j]
                continue
            text.append(_syllable(initial, vowel, final))
            initial, vowel, final = (j, None, None) if j in INITIALS else (None, None, None)
            if j not in INITIALS:  # a compound final alone (ㄳ): no syllable starts with it
                text.append(j)
        else:
            text.append(_syllable(initial, vowel, final) + j)
            initial = vowel = final = None
    text.append(_syllable(initial, vowel, final))
    return "".join(text)
