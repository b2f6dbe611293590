"""Near-miss suggestions for the names users type (methods, parameters, suites, tasks, catalog bases)."""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

from hfmerge.errors import HfMergeError


def close_matches(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The valid names closest to ``word`` (difflib ratio ≥ ``cutoff``, case-insensitive), best first."""
    choices = list(dict.fromkeys(choices))
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    return [by_lower[m] for m in get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=cutoff)]


def hint(word: str, choices: Iterable[str]) -> str:
    """``did you mean X?`` (the nearest) when a valid name is near ``word``, else the list of valid names."""
    choices = list(choices)
    near = close_matches(word, choices, n=1)
    if near:
        return f"did you mean {near[0]}?"
    return f"valid: {', '.join(choices) or 'none'}"


def unknown(kind: str, word: str, choices: Iterable[str], where: str = "") -> HfMergeError:
    """The error for a name that is not one of ``choices``: ``unknown method 'tie' (did you mean ties?)``."""
    return HfMergeError(f"unknown {kind} {word!r}{where} ({hint(word, choices)})")


def require(kind: str, word: str, choices: Iterable[str], where: str = "") -> str:
    """``word`` if it is one of ``choices``, else the :func:`unknown` error."""
    choices = list(choices)
    if word not in choices:
        raise unknown(kind, word, choices, where)
    return word
