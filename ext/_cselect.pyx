# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native selection of the best live candidate of one scope.

Twin: ``semcache/_pyselect.py`` (same signatures, same results; ties go to the lowest row).
A row is a candidate when ``live[row]`` is non-zero and ``expires[row] > now``.
"""

from libc.math cimport INFINITY


cdef inline float _dot(const float* a, const float* b, Py_ssize_t d) noexcept nogil:
    # eight independent accumulators so the compiler can keep the FMA pipes busy
    cdef float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= d:
        s0 += a[i] * b[i]
        s1 += a[i + 1] * b[i + 1]
        s2 += a[i + 2] * b[i + 2]
        s3 += a[i + 3] * b[i + 3]
        s4 += a[i + 4] * b[i + 4]
        s5 += a[i + 5] * b[i + 5]
        s6 += a[i + 6] * b[i + 6]
        s7 += a[i + 7] * b[i + 7]
        i += 8
    while i < d:
        s0 += a[i] * b[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


def best_of_candidates(const float[::1] scores, const long long[::1] rows,
                       const double[::1] expires, const unsigned char[::1] live,
                       double now, double threshold):
    """Best candidate among ANN results; see the twin for the contract."""
    cdef Py_ssize_t i, k = scores.shape[0]
    cdef long long row, best_row = -1
    cdef float best = -INFINITY
    cdef Py_ssize_t cap = min(expires.shape[0], live.shape[0])
    if rows.shape[0] != k:
        raise ValueError("scores and rows differ in length")
    for i in range(k):
        row = rows[i]
        if row < 0 or row >= cap:
            continue
        if live[row] == 0 or not (expires[row] > now):
            continue
        if scores[i] > best:
            best = scores[i]
            best_row = row
    if best_row >= 0 and best >= threshold:
        return int(best_row), float(best)
    return -1, float(best)


def best_in_chain(const float[:, ::1] vecs, Py_ssize_t head, const int[::1] nxt,
                  const float[::1] query, const double[::1] expires,
                  const unsigned char[::1] live, double now, double threshold):
    """Exact scan of the rows chained from ``head`` by ``nxt``; see the twin."""
    cdef Py_ssize_t d = vecs.shape[1]
    cdef Py_ssize_t cap = min(vecs.shape[0], nxt.shape[0], expires.shape[0], live.shape[0])
    cdef Py_ssize_t row = head, best_row = -1, steps = 0
    cdef float score
    cdef float best = -INFINITY
    if query.shape[0] != d:
        raise ValueError(f"query has dimension {query.shape[0]}, arena has {d}")
    with nogil:
        while 0 <= row < cap and steps <= cap:
            steps += 1
            if live[row] != 0 and expires[row] > now:
                score = _dot(&vecs[row, 0], &query[0], d)
                if score > best:
                    best = score
                    best_row = row
            row = nxt[row]
    if steps > cap:
        raise ValueError("row chain has a cycle")
    if best_row >= 0 and best >= threshold:
        return best_row, float(best)
    return -1, float(best)
