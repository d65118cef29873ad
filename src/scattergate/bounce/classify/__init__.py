"""Bounce / auto-reply / challenge / feedback classifier (docs/classifier.md).

`core` decides, `rules` holds the patterns, `mime` parses within bounds, `extract` reads the
original's identifiers and the failed recipients out of a notice.
"""

from .core import Classification, Kind, classify

__all__ = ["Classification", "Kind", "classify"]
