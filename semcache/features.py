"""What the adaptive policy knows about one candidate match: an :class:`Observation`.

A candidate is a query (its text and unit vector) and the stored entry the index found
for it (text, vector, cosine similarity), plus the near-miss guard's objection if it has
one.  :func:`observe` captures that on the lookup path; :func:`matrix` turns
observations into the learner's input rows:

    [similarity, 20 * (q * e), 5 * |q - e|, 5 * (q + e), 4 lexical features, guard objection]

The element-wise product generalises the cosine (``sum(q * e)``) to a learned weighting
of the embedding's dimensions, ``|q - e|`` says in which directions the two differ, and
``q + e`` where in the space the pair sits — together they let the learner find the
*neighbourhoods* of the embedding (topics) where paraphrases and near-misses sit at
different similarities (``semcache bench quality`` measures what the network built on
these columns gains over the similarity).  The scale factors bring the columns to
unit order so one regularisation strength suits them all.

Vectors are kept as float16 (768 bytes each for 384 dimensions): observations are
buffered by the thousands and persisted.  Pure functions, thread-safe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Observation", "observe", "matrix", "lexical", "LEXICAL", "width"]

# Words that carry no topic: left out of the lexical overlap.
_STOP = frozenset("""a an the of to in on for and or is are was were be been do does did i me my
we you your it its they this that what which who how why when where can could should would will
with as at by from about into than so if there any some all get just not no""".split())
_WH = ("what", "how", "why", "who", "when", "where", "which")
_WORD = re.compile(r"[a-z0-9]+")

#: Names of the lexical columns, in order.
LEXICAL = ("content_jaccard", "query_only_words", "entry_only_words", "question_word_differs")


@dataclass(frozen=True, slots=True)
class Observation:
    """One candidate as the learner sees it.  ``query`` and ``entry`` are float16 unit
    vectors; ``lexical`` has the :data:`LEXICAL` columns; ``guarded`` is True when the
    near-miss guard objected."""

    query: np.ndarray
    entry: np.ndarray
    similarity: float
    lexical: tuple[float, ...]
    guarded: bool


@lru_cache(maxsize=8192)
def _words(text: str) -> tuple[frozenset[str], str]:
    words = _WORD.findall(text.lower())
    wh = next((w for w in words[:3] if w in _WH), "")
    return frozenset(w for w in words if w not in _STOP), wh


def lexical(query_text: str, entry_text: str) -> tuple[float, ...]:
    """The :data:`LEXICAL` features: overlap of content words, how many content words
    only one side has (0-1, saturating at 4), and whether the question words differ."""
    a, wa = _words(query_text)
    b, wb = _words(entry_text)
    union = a | b
    jaccard = len(a & b) / len(union) if union else 1.0
    return (jaccard, min(len(a - b), 4) / 4.0, min(len(b - a), 4) / 4.0, float(wa != wb))


def observe(query_text: str, entry_text: str, query: np.ndarray, entry: np.ndarray,
            similarity: float, guarded: bool) -> Observation:
    """An :class:`Observation` of one candidate (vectors are copied as float16)."""
    return Observation(np.asarray(query, dtype=np.float16).copy(),
                       np.asarray(entry, dtype=np.float16).copy(), float(similarity),
                       lexical(query_text, entry_text), bool(guarded))


def width(dim: int) -> int:
    """Columns of :func:`matrix` for vectors of ``dim`` dimensions."""
    return 1 + 3 * dim + len(LEXICAL) + 1


def matrix(query: np.ndarray, entry: np.ndarray, similarity: np.ndarray,
           lexical_cols: np.ndarray, guarded: np.ndarray) -> np.ndarray:
    """Learner rows (float32, one per candidate) from column arrays: ``query`` and
    ``entry`` are ``(n, dim)``, ``similarity`` and ``guarded`` ``(n,)``, ``lexical_cols``
    ``(n, 4)``."""
    q = np.asarray(query, dtype=np.float32)
    e = np.asarray(entry, dtype=np.float32)
    n = len(q)
    return np.concatenate([
        np.asarray(similarity, dtype=np.float32).reshape(n, 1), 20.0 * q * e,
        5.0 * np.abs(q - e), 5.0 * (q + e), np.asarray(lexical_cols, dtype=np.float32).reshape(n, len(LEXICAL)),
        np.asarray(guarded, dtype=np.float32).reshape(n, 1)], axis=1)


def rows(observations: Sequence[Observation]) -> np.ndarray:
    """:func:`matrix` of a list of observations."""
    if not observations:
        raise ValueError("no observations")
    return matrix(np.stack([o.query for o in observations]), np.stack([o.entry for o in observations]),
                  np.array([o.similarity for o in observations]),
                  np.array([o.lexical for o in observations]),
                  np.array([o.guarded for o in observations]))
