"""The label vocabulary every artifact shares: the two classes that mean "no keyword here"."""
from __future__ import annotations

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
# Never a detection, and a long file's answer comes from a window that heard a word when one did.
FILLER_LABELS = (SILENCE, UNKNOWN)
