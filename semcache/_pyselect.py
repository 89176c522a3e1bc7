"""Pure-Python twin of ``ext/_cselect.pyx``: pick the best live candidate of one scope.

Same signatures and results as the native module (ties go to the lowest row).  Used when
``SEMCACHE_NO_EXTENSIONS=1`` or the extension is not built; the test suite runs against
both.  A row is a candidate when ``live[row]`` is non-zero and ``expires[row] > now``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_in_chain", "best_of_candidates"]

_NONE = (-1, float("-inf"))
_ROW_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


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

    ``vecs`` is a C-contiguous float16 (the arena) or float32 ``(cap, d)`` array; each
    row's score is its inner product with ``query`` (float32) computed in float32 from the
    row's exact float32 value.  Returns ``(row, score)`` of the highest score among
    candidate rows when it is ``>= threshold``, else ``(-1, best score or -inf)``; ties go
    to the row met first along the chain.  Raises ValueError for rows of another dtype or
    shape and for a chain with a cycle.
    """
    if (not isinstance(vecs, np.ndarray) or vecs.ndim != 2 or vecs.dtype not in _ROW_DTYPES
            or not vecs.flags.c_contiguous):
        raise ValueError(f"vecs: must be a C-contiguous 2-d float16 or float32 array (got "
                         f"{getattr(vecs, 'dtype', type(vecs).__name__)}, "
                         f"{getattr(vecs, 'ndim', 0)}-d)")
    if len(query) != vecs.shape[1]:
        raise ValueError(f"query has dimension {len(query)}, arena has {vecs.shape[1]}")
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
    scores = vecs[idx].astype(np.float32, copy=False) @ query
    masked = np.where(ok, scores, np.float32(-np.inf))
    i = int(np.argmax(masked))
    score = float(masked[i])
    return (rows[i], score) if score >= threshold else (-1, score)
