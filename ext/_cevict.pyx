# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native eviction bookkeeping: LRU/LFU order, byte totals and expiry of one cache.

Twin: ``semcache/_pyevict.py`` (same class, signatures and results); the contract is in
``semcache/eviction.py``.

Layout: every tracked entry owns a *slot* in parallel C++ vectors (id, size, hits,
expiry, list links); a hash map finds an id's slot; freed slots are reused.

* LRU: one doubly linked list of slots, oldest at the head.
* LFU: a doubly linked list of frequency nodes in ascending hit count, each holding a
  doubly linked list of its slots, oldest first.  A touch moves a slot from node ``h`` to
  the node right after it (created when it is not ``h + 1``): O(1).  An add with ``h``
  hits walks to its node from the end nearest to ``h`` (O(1) for the usual ``h = 0`` and
  for rebuilds that add in ascending hit order).
* Expiry: a lazy binary heap of ``(expires, id)``, stored negated in a max-heap; stale
  items are skipped when popped and the heap is rebuilt when they outnumber live ones.

Roughly 100 bytes per entry, against about 500 for the twin's dicts.  Not thread-safe:
the owner serialises calls.
"""

from cython.operator cimport dereference as deref
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport int32_t, int64_t
from libcpp.algorithm cimport pop_heap, push_heap, make_heap
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport pair
from libcpp.vector cimport vector

from semcache.errors import ConfigError

ctypedef pair[double, int64_t] HeapItem

cdef int32_t NIL = -1
cdef Py_ssize_t HEAP_SLACK = 1024


cdef class EvictionTracker:
    """Recency/frequency order, sizes and expiry of the entries of one cache."""

    cdef readonly str policy
    cdef bint lfu
    cdef unordered_map[int64_t, int32_t] slot_of
    # per slot
    cdef vector[int64_t] s_id
    cdef vector[int64_t] s_size
    cdef vector[int64_t] s_hits
    cdef vector[double] s_exp      # pending due time; +inf: none; NaN: already reported
    cdef vector[int32_t] s_prev
    cdef vector[int32_t] s_next
    cdef vector[int32_t] s_node    # lfu: frequency node holding the slot
    cdef vector[int32_t] free_slots
    # lru list
    cdef int32_t head, tail
    # lfu frequency nodes
    cdef vector[int64_t] f_hits
    cdef vector[int32_t] f_head, f_tail, f_prev, f_next
    cdef vector[int32_t] free_nodes
    cdef int32_t f_first, f_last
    # expiry
    cdef vector[HeapItem] heap
    cdef Py_ssize_t pending
    cdef int64_t _total

    def __cinit__(self, policy: str = "lru"):
        if policy not in ("lru", "lfu"):
            raise ConfigError("eviction", policy, "must be 'lru' or 'lfu'")
        self.policy = policy
        self.lfu = policy == "lfu"
        self.head = self.tail = NIL
        self.f_first = self.f_last = NIL
        self.pending = 0
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Sum of the tracked entries' sizes (bytes)."""
        return self._total

    def __len__(self) -> int:
        return self.slot_of.size()

    def __contains__(self, entry_id) -> bool:
        return self.slot_of.count(<int64_t>entry_id) != 0

    # ------------------------------------------------------------ slot lists
    cdef inline void _unlink(self, int32_t s, int32_t* first, int32_t* last) noexcept:
        cdef int32_t p = self.s_prev[s], n = self.s_next[s]
        if p != NIL:
            self.s_next[p] = n
        else:
            first[0] = n
        if n != NIL:
            self.s_prev[n] = p
        else:
            last[0] = p

    cdef inline void _append(self, int32_t s, int32_t* first, int32_t* last) noexcept:
        self.s_prev[s] = last[0]
        self.s_next[s] = NIL
        if last[0] != NIL:
            self.s_next[last[0]] = s
        else:
            first[0] = s
        last[0] = s

    # ------------------------------------------------------ frequency nodes
    cdef int32_t _new_node(self, int64_t hits, int32_t after) except -2:
        """A new empty node for ``hits`` placed after node ``after`` (NIL: at the front)."""
        cdef int32_t f
        if self.free_nodes.size():
            f = self.free_nodes.back()
            self.free_nodes.pop_back()
        else:
            f = <int32_t>self.f_hits.size()
            self.f_hits.push_back(0)
            self.f_head.push_back(NIL)
            self.f_tail.push_back(NIL)
            self.f_prev.push_back(NIL)
            self.f_next.push_back(NIL)
        self.f_hits[f] = hits
        self.f_head[f] = NIL
        self.f_tail[f] = NIL
        self.f_prev[f] = after
        if after == NIL:
            self.f_next[f] = self.f_first
            self.f_first = f
        else:
            self.f_next[f] = self.f_next[after]
            self.f_next[after] = f
        if self.f_next[f] != NIL:
            self.f_prev[self.f_next[f]] = f
        else:
            self.f_last = f
        return f

    cdef void _drop_node_if_empty(self, int32_t f) noexcept:
        if self.f_head[f] != NIL:
            return
        cdef int32_t p = self.f_prev[f], n = self.f_next[f]
        if p != NIL:
            self.f_next[p] = n
        else:
            self.f_first = n
        if n != NIL:
            self.f_prev[n] = p
        else:
            self.f_last = p
        self.free_nodes.push_back(f)

    cdef int32_t _node_for(self, int64_t hits) except -2:
        """The node for ``hits``, created in order when missing."""
        cdef int32_t f
        if self.f_first == NIL or hits < self.f_hits[self.f_first]:
            return self._new_node(hits, NIL)
        if hits - self.f_hits[self.f_first] <= self.f_hits[self.f_last] - hits:
            f = self.f_first
            while self.f_next[f] != NIL and self.f_hits[self.f_next[f]] <= hits:
                f = self.f_next[f]
        else:
            f = self.f_last
            while self.f_hits[f] > hits:
                f = self.f_prev[f]
        if self.f_hits[f] == hits:
            return f
        return self._new_node(hits, f)

    # ------------------------------------------------------------- public API
    def add(self, entry_id, size, expires, hits=0) -> None:
        """Track a new entry as the most recently used (re-adding replaces it)."""
        cdef int64_t eid = entry_id
        cdef int64_t h = hits
        cdef int64_t sz = size
        cdef double exp = INFINITY if expires is None else <double>expires
        cdef int32_t s, f
        if self.slot_of.count(eid):
            self.remove(entry_id)
        if self.free_slots.size():
            s = self.free_slots.back()
            self.free_slots.pop_back()
            self.s_id[s] = eid
            self.s_size[s] = sz
            self.s_hits[s] = h
            self.s_exp[s] = exp
        else:
            s = <int32_t>self.s_id.size()
            self.s_id.push_back(eid)
            self.s_size.push_back(sz)
            self.s_hits.push_back(h)
            self.s_exp.push_back(exp)
            self.s_prev.push_back(NIL)
            self.s_next.push_back(NIL)
            self.s_node.push_back(NIL)
        self.slot_of[eid] = s
        self._total += sz
        if self.lfu:
            f = self._node_for(h)
            self.s_node[s] = f
            self._append(s, &self.f_head[f], &self.f_tail[f])
        else:
            self._append(s, &self.head, &self.tail)
        if expires is not None:
            self.pending += 1
            self.heap.push_back(HeapItem(-exp, -eid))
            push_heap(self.heap.begin(), self.heap.end())
            if <Py_ssize_t>self.heap.size() > 2 * self.pending + HEAP_SLACK:
                self._rebuild_heap()

    def add_many(self, const int64_t[::1] ids, const int64_t[::1] sizes,
                 const double[::1] expires, const int64_t[::1] hits) -> None:
        """``add`` for each row, in order (``expires`` ``inf``: never); see the twin."""
        cdef Py_ssize_t i, n = ids.shape[0]
        if sizes.shape[0] != n or expires.shape[0] != n or hits.shape[0] != n:
            raise ValueError("add_many: arrays differ in length")
        for i in range(n):
            self.add(ids[i], sizes[i], None if expires[i] == INFINITY else expires[i], hits[i])

    cdef void _rebuild_heap(self):
        cdef size_t s
        self.heap.clear()
        for s in range(self.s_id.size()):
            if self.slot_of.count(self.s_id[s]) and self.slot_of[self.s_id[s]] == <int32_t>s:
                if not isnan(self.s_exp[s]) and self.s_exp[s] != INFINITY:
                    self.heap.push_back(HeapItem(-self.s_exp[s], -self.s_id[s]))
        make_heap(self.heap.begin(), self.heap.end())

    def touch(self, entry_id) -> None:
        """Record a hit: most recently used, one more use.  Unknown ids are ignored."""
        cdef unordered_map[int64_t, int32_t].iterator it = self.slot_of.find(<int64_t>entry_id)
        if it == self.slot_of.end():
            return
        cdef int32_t s = deref(it).second
        cdef int32_t f, g
        cdef int64_t h = self.s_hits[s]
        self.s_hits[s] = h + 1
        if not self.lfu:
            self._unlink(s, &self.head, &self.tail)
            self._append(s, &self.head, &self.tail)
            return
        f = self.s_node[s]
        g = self.f_next[f]
        if g == NIL or self.f_hits[g] != h + 1:
            g = self._new_node(h + 1, f)
        self._unlink(s, &self.f_head[f], &self.f_tail[f])
        self._drop_node_if_empty(f)
        self.s_node[s] = g
        self._append(s, &self.f_head[g], &self.f_tail[g])

    def remove(self, entry_id) -> None:
        """Forget an entry (deleted for any reason).  Unknown ids are ignored."""
        cdef unordered_map[int64_t, int32_t].iterator it = self.slot_of.find(<int64_t>entry_id)
        if it == self.slot_of.end():
            return
        cdef int32_t s = deref(it).second
        cdef int32_t f
        self.slot_of.erase(it)
        self._total -= self.s_size[s]
        if not isnan(self.s_exp[s]) and self.s_exp[s] != INFINITY:
            self.pending -= 1
        self.s_exp[s] = NAN
        if self.lfu:
            f = self.s_node[s]
            self._unlink(s, &self.f_head[f], &self.f_tail[f])
            self._drop_node_if_empty(f)
        else:
            self._unlink(s, &self.head, &self.tail)
        self.free_slots.push_back(s)

    def victims(self, max_entries, max_bytes, incoming_bytes=0) -> list:
        """Ids to evict, in eviction order, so that the caps hold after adding
        ``incoming_bytes``; see the twin.  Does not remove them."""
        cdef int64_t excess_n = <int64_t>self.slot_of.size() - <int64_t>max_entries
        cdef int64_t excess_b = self._total + <int64_t>incoming_bytes - <int64_t>max_bytes
        cdef list out = []
        cdef int32_t s, f
        if excess_n <= 0 and excess_b <= 0:
            return out
        if self.lfu:
            f = self.f_first
            s = NIL if f == NIL else self.f_head[f]
        else:
            f = NIL
            s = self.head
        while excess_n > 0 or excess_b > 0:
            while s == NIL and f != NIL:
                f = self.f_next[f]
                s = NIL if f == NIL else self.f_head[f]
            if s == NIL:
                break
            out.append(self.s_id[s])
            excess_n -= 1
            excess_b -= self.s_size[s]
            s = self.s_next[s]
        return out

    def expired(self, now, limit=1024) -> list:
        """Up to ``limit`` tracked ids whose expiry is ``<= now``, soonest first (ties:
        lowest id); each reported once, tracked until removed."""
        cdef double t = now
        cdef Py_ssize_t lim = limit
        cdef list out = []
        cdef HeapItem top
        cdef unordered_map[int64_t, int32_t].iterator it
        cdef int32_t s
        while self.heap.size() and -self.heap.front().first <= t and len(out) < lim:
            top = self.heap.front()
            pop_heap(self.heap.begin(), self.heap.end())
            self.heap.pop_back()
            it = self.slot_of.find(-top.second)
            if it == self.slot_of.end():
                continue
            s = deref(it).second
            if self.s_exp[s] == -top.first:
                self.s_exp[s] = NAN
                self.pending -= 1
                out.append(-top.second)
        return out
