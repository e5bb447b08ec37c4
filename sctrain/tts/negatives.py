"""Adversarial negatives: words and phrases that sound like a keyword but are not it, from CMUdict.

For each keyword (``hey_computer`` is the phrase "hey computer"): its parts ("hey", "computer"), the words
one or two phonemes away from it or from a part ("commuter"), the part-swapped phrases ("hey commuter"),
and its rhymes; then a general vocabulary of common words. A word that is pronounced exactly like a
keyword ("know" for "no") is never a negative: it would teach the model that the keyword is not itself.
CMUdict comes with the ``pronouncing`` package (offline).
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from sctrain.data.speechcommands import DatasetError

log = logging.getLogger(__name__)

# Common English words (none a Speech Commands keyword): what a detector hears most in a room.
GENERAL = ("the and you that was for are with his they this have from one had word but not what all were when "
           "your can said there use each which she how their will other about out many then them these some her "
           "would make like him into time has look more write see number way could people than first water been "
           "call who now find long day did get come made may part over new sound take only little work know place "
           "year live back give most very after thing our just name good sentence man think say great where help "
           "through much before line right too mean old any same tell boy follow came want show also around form "
           "three small set put end does another well large must big even such because turn here why ask went "
           "men read need land different home move try kind hand picture again change play spell air away animal "
           "house point page letter mother answer found study still learn should america world music coffee "
           "window morning dinner weather tomorrow phone okay maybe really sorry thanks hello please yesterday "
           "happy bird cat dog bed tree marvin sheila wow").split()
_WORD = re.compile(r"^[a-z]+$")


@dataclass(frozen=True)
class Negative:
    text: str  # what is spoken ("hey commuter")
    kind: str  # part, similar, phrase, rhyme or general
    of: str  # the keyword it was made for ('' for general words)

    @property
    def folder(self) -> str:
        return self.text.replace(" ", "_")


def _cmudict():
    try:
        import pronouncing
    except ImportError:
        raise DatasetError("adversarial negatives need CMUdict: pip install 'sctrain[tts]' (pronouncing)") from None
    pronouncing.init_cmu()
    return pronouncing


@functools.lru_cache(maxsize=1)
def _lexicon() -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, ...], str]]:
    """Plain lower-case words -> first pronunciation (stress marks dropped), and each pronunciation's
    shortest spelling (CMUdict spells many names several ways: "cop", "copp", "kopp")."""
    pronouncing = _cmudict()
    phones: dict[str, tuple[str, ...]] = {}
    for word, pron in pronouncing.pronunciations:
        if _WORD.match(word) and word not in phones:
            phones[word] = tuple(re.sub(r"\d", "", pron).split())
    spelling: dict[tuple[str, ...], str] = {}
    for word, pron in phones.items():
        best = spelling.get(pron)
        if best is None or (len(word), word) < (len(best), best):
            spelling[pron] = word
    return phones, spelling


def _distance(a: tuple[str, ...], b: tuple[str, ...], limit: int) -> int:
    """Levenshtein distance of two phoneme strings, or ``limit + 1`` once it must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
        if min(row) > limit:
            return limit + 1
    return row[-1]


def pronounce(text: str) -> tuple[str, ...]:
    """The phonemes of ``text`` (words joined), or a :class:`DatasetError` naming a word CMUdict lacks."""
    phones, _ = _lexicon()
    out: list[str] = []
    for word in text.lower().split():
        if word not in phones:
            raise DatasetError(f"word {word!r} is not in CMUdict: its sound-alike negatives cannot be found "
                               f"(use --negatives 0, or spell it as CMUdict does)")
        out += phones[word]
    return tuple(out)


def _similar(target: tuple[str, ...], exclude: set[tuple[str, ...]], count: int) -> list[str]:
    """Up to ``count`` words one phoneme (two for long words) from ``target``, nearest first."""
    _, spelling = _lexicon()
    limit = 1 if len(target) <= 4 else 2
    scored = []
    for pron, word in spelling.items():
        if pron in exclude:
            continue
        d = _distance(target, pron, limit)
        if d <= limit:
            scored.append((d, abs(len(pron) - len(target)), len(word), word))
    return [w for *_, w in sorted(scored)[:count]]


def adversarial_negatives(keywords: list[str], per_keyword: int = 12, general: bool = True) -> list[Negative]:
    """Sound-alike negatives for ``keywords`` (folder names, ``_`` between words), then common words.

    Each keyword gives its parts, ``per_keyword`` near words (of the keyword, or of each part for a phrase,
    with the part-swapped phrases) and half as many rhymes. Nothing sounds exactly like a keyword."""
    pronouncing = _cmudict()
    spoken = [k.replace("_", " ") for k in keywords]
    taken = {pronounce(k) for k in spoken}  # keywords' own sounds, and every negative so far
    out: list[Negative] = []

    def add(text: str, kind: str, of: str) -> None:
        try:
            pron = pronounce(text)
        except DatasetError:
            return
        if pron not in taken and text not in spoken:
            taken.add(pron)
            out.append(Negative(text, kind, of))

    for keyword in spoken:
        parts = keyword.split()
        if len(parts) > 1:
            for part in parts:
                add(part, "part", keyword)
            for i, part in enumerate(parts):
                for word in _similar(pronounce(part), taken, max(2, per_keyword // len(parts))):
                    add(word, "similar", keyword)
                    add(" ".join(parts[:i] + [word] + parts[i + 1:]), "phrase", keyword)
        else:
            for word in _similar(pronounce(keyword), taken, per_keyword):
                add(word, "similar", keyword)
        rhymes = [w for w in pronouncing.rhymes(parts[-1]) if _WORD.match(w)]
        for word in sorted(rhymes, key=lambda w: (len(w), w))[: max(1, per_keyword // 2)]:
            add(" ".join(parts[:-1] + [word]), "rhyme", keyword)
    if general:
        for word in GENERAL:
            add(word, "general", "")
    log.info("%d negatives for %s", len(out), ", ".join(keywords))
    return out
