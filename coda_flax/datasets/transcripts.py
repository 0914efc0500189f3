"""Transcripts in the CharVocabulary alphabet (lowercase a-z, space, apostrophe) for the speech
corpora (datasets/speech.py, datasets/librispeech.py): numbers 0-99 spelled out, accents
stripped, annotations dropped.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional

ALPHABET = " '" + "abcdefghijklmnopqrstuvwxyz"  # CharVocabulary ids 1..28 (0 = pad / CTC blank)

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,2})(?!\w|[.,]\d)")
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def spell_number(n: int) -> str:
    """0..99 in English words: 7 -> "seven", 42 -> "forty two"."""
    if not 0 <= n < 100:
        raise ValueError(f"spell_number handles 0..99, got {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def strip_accents(text: str) -> str:
    """NFKD + drop combining marks: "café" -> "cafe"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


def normalize_transcript(text: str, *, symbols: Optional[dict] = None) -> Optional[str]:
    """A transcript in the CharVocabulary alphabet (lowercase a-z, space, apostrophe), or None
    when the utterance should be dropped (empty, or digits that are not standalone 0-99).

    Steps: accents stripped, curly apostrophes straightened; [..] and (..) annotations removed;
    `symbols` replaced (e.g. {"*": " star "}); "&" -> "and"; standalone 0-99 spelled out;
    lowercase; any other character (hyphens, punctuation, quotes) becomes a space; apostrophes at
    the edges of words (quotation marks) are removed; whitespace collapsed.
    """
    text = strip_accents(str(text)).translate(APOSTROPHES)
    text = _ANNOTATION.sub(" ", text)
    for symbol, word in (symbols or {}).items():
        text = text.replace(symbol, word)
    text = text.replace("&", " and ")
    text = _NUMBER.sub(lambda m: " " + spell_number(int(m.group(1))) + " ", text)
    if re.search(r"\d", text):
        return None
    text = re.sub(r"[^a-z']+", " ", text.lower())
    words = [w.strip("'") for w in text.split()]
    text = " ".join(w for w in words if w)
    return text or None
