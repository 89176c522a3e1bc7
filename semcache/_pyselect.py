"""Pure-Python twin of ``ext/_cselect.pyx``: pick the best live candidate of one scope.

Same signatures and results as the native module (ties go to the lowest row).  Used when
``SEMCACHE_NO_EXTENSIONS=1`` or the extension is not built; the test suite runs against
both.  A row is a candidate when ``live[row]`` is non-zero and ``expires[row] > now``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_in_chain", "best_of_candidates"]

_NONE = (-1, float("-inf"))


def best_of_candidates(
    scores: np.ndarray,
    rows: np.ndarray,
    expires: np.ndarray,
    live: np.ndarray,
    now: float,
    threshold: float,
) -> tuple[int, float]:
    """Best candidate among ANN results ``rows``/``scores`` (``-1`` rows are padding).

    Returns ``(row, score)`` when the best candidate's score is ``>= threshold``, else
    ``(-1, best candidate score or -inf)``.
    """
    best_row, best = -1, float("-inf")
    for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
        if row < 0 or not live[row] or not expires[row] > now:
            continue
        if score > best:
            best_row, best = row, score
    if best_row >= 0 and best >= threshold:
        return best_row, best
    return -1, best


def best_in_chain(
    vecs: np.ndarray,
    head: int,
    nxt: np.ndarray,
    query: np.ndarray,
    expires: np.ndarray,
    live: np.ndarray,
    now: float,
    threshold: float,
) -> tuple[int, float]:
    """Exact scan of the rows linked from ``head`` by ``nxt`` (int32; ``-1`` ends the chain).

    ``vecs`` is float32 ``(cap, d)``.  Returns ``(row, score)`` of the highest inner product
    among candidate rows when it is ``>= threshold``, else ``(-1, best score or -inf)``; ties
    go to the row met first along the chain.  Raises ValueError for a chain with a cycle.
    """
    cap = min(len(vecs), len(nxt), len(expires), len(live))
    rows: list[int] = []
    row = head
    while 0 <= row < cap:
        rows.append(row)
        if len(rows) > cap:
            raise ValueError("row chain has a cycle")
        row = int(nxt[row])
    if not rows:
        return _NONE
    idx = np.asarray(rows, dtype=np.int64)
    ok = (live[idx] != 0) & (expires[idx] > now)
    if not ok.any():
        return _NONE
    scores = vecs[idx] @ query
    masked = np.where(ok, scores, np.float32(-np.inf))
    i = int(np.argmax(masked))
    score = float(masked[i])
    return (rows[i], score) if score >= threshold else (-1, score)
