# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native eviction bookkeeping: LRU/LFU order, byte totals and expiry of one cache.

Twin: ``semcache/_pyevict.py`` (same class, signatures and results); the contract is in
``semcache/eviction.py``.

Layout: every tracked entry owns a *slot*, one 48-byte record in a C++ vector of records
(list links, hits, id, frequency node, size, expiry; the links and hits fill the
record's first 16 bytes, so a touch reads one cache line per slot); freed slots are
reused.  An open-addressing hash table finds an id's slot: a power-of-two array of
16-byte buckets ``(id, slot)`` (the id beside the slot: a probe compares without leaving
the table), the home bucket from the top bits of ``(id ^ id >> 32) * 2**64/phi``
(Fibonacci hashing), linear probing, backward-shift deletion (no tombstones, so churn
does not lengthen probes), doubled when more than half full, never shrunk.  Every int64
is a valid id (an empty bucket is marked by its slot, ``-1``).  ``add``, ``touch`` and
``remove`` are plain method descriptors (``binding=False``), which CPython calls through
its fast path for C methods.

* LRU: one doubly linked list of slots, oldest at the head.
* LFU: a doubly linked list of frequency nodes (24-byte records) in ascending hit count,
  each holding a doubly linked list of its slots, oldest first.  A touch moves a slot
  from node ``h`` to the node right after it (created when it is not ``h + 1``): O(1).
  An add with ``h`` hits walks to its node from the end nearest to ``h`` (O(1) for the
  usual ``h = 0`` and for rebuilds that add in ascending hit order).
* Expiry: a lazy binary heap of ``(expires, id)``, stored as ``(-expires, ~id)`` in a
  max-heap (``~id`` orders like ``-id`` without overflowing at the smallest int64); stale
  items are skipped when popped and the heap is rebuilt when they outnumber live ones.

Per entry: 48-96 bytes of slots (the vector grows by doubling), 32-64 of hash table,
16-32 of heap items when the entry expires (the whole cache's memory per entry is
measured by ``bench/bench_index.py``).  Not thread-safe: the owner serialises calls.
"""

cimport cython
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.algorithm cimport pop_heap, push_heap, make_heap
from libcpp.utility cimport pair
from libcpp.vector cimport vector

from semcache.errors import ConfigError

ctypedef pair[double, int64_t] HeapItem

cdef enum:
    NIL = -1                   # no slot / no node
    HEAP_SLACK = 1024
    MIN_BITS = 4               # smallest hash table: 16 buckets


cdef struct Slot:
    int32_t prev
    int32_t next
    int64_t hits
    int64_t id
    int32_t node               # lfu: frequency node holding the slot
    int32_t live               # 0 once removed (the slot is on the free list)
    int64_t size
    double exp                 # pending due time; +inf: none; NaN: already reported


cdef struct Node:
    int64_t hits
    int32_t head, tail, prev, next


cdef struct Bucket:
    int64_t id
    int32_t slot               # NIL: empty
    int32_t _pad


cdef inline uint64_t _mix(int64_t key) noexcept nogil:
    """Fibonacci hashing of the id with its high half folded into its low half; the
    caller keeps the top bits.  Consecutive ids land on evenly spread buckets, and ids
    that differ only in their high or only in their low bits still spread."""
    cdef uint64_t z = <uint64_t>key
    return (z ^ (z >> 32)) * 0x9E3779B97F4A7C15ULL


cdef inline void _unlink(Slot* S, int32_t s, int32_t* first, int32_t* last) noexcept nogil:
    cdef int32_t p = S[s].prev, n = S[s].next
    if p != NIL:
        S[p].next = n
    else:
        first[0] = n
    if n != NIL:
        S[n].prev = p
    else:
        last[0] = p


cdef inline void _append(Slot* S, int32_t s, int32_t* first, int32_t* last) noexcept nogil:
    cdef int32_t t = last[0]
    S[s].prev = t
    S[s].next = NIL
    if t != NIL:
        S[t].next = s
    else:
        first[0] = s
    last[0] = s


cdef class EvictionTracker:
    """Recency/frequency order, sizes and expiry of the entries of one cache."""

    cdef readonly str policy
    cdef bint lfu
    # id -> slot
    cdef vector[Bucket] table
    cdef int shift                 # 64 - log2(len(table))
    cdef size_t mask               # len(table) - 1
    cdef Py_ssize_t count
    # slots
    cdef vector[Slot] slots
    cdef vector[int32_t] free_slots
    # lru list
    cdef int32_t head, tail
    # lfu frequency nodes
    cdef vector[Node] nodes
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
        self.count = 0
        self._reset_table(MIN_BITS)

    @property
    def total_bytes(self) -> int:
        """Sum of the tracked entries' sizes (bytes)."""
        return self._total

    def __len__(self) -> int:
        return self.count

    def __contains__(self, entry_id) -> bool:
        return self._slot_of(<int64_t>entry_id) != NIL

    # ------------------------------------------------------------ hash table
    cdef void _reset_table(self, int bits):
        """An empty table of ``2**bits`` buckets (entries are not re-inserted)."""
        cdef Bucket empty
        empty.id = 0
        empty.slot = NIL
        empty._pad = 0
        self.table.assign(<size_t>1 << bits, empty)
        self.shift = 64 - bits
        self.mask = (<size_t>1 << bits) - 1

    cdef inline size_t _bucket_of(self, int64_t eid) noexcept:
        """The bucket holding ``eid``, or the empty bucket that ends its probe."""
        cdef Bucket* T = self.table.data()
        cdef size_t i = <size_t>(_mix(eid) >> self.shift)
        while T[i].slot != NIL and T[i].id != eid:
            i = (i + 1) & self.mask
        return i

    cdef inline int32_t _slot_of(self, int64_t eid) noexcept:
        """The slot of ``eid``; NIL when it is not tracked."""
        return self.table[self._bucket_of(eid)].slot

    cdef void _insert(self, int64_t eid, int32_t s):
        """Map ``eid`` (not tracked) to slot ``s``; doubles the table past half full."""
        cdef size_t i, n
        cdef vector[Bucket] old
        if 2 * (self.count + 1) > <Py_ssize_t>self.table.size():
            old.swap(self.table)
            self._reset_table(64 - self.shift + 1)
            for n in range(old.size()):
                if old[n].slot != NIL:
                    i = self._bucket_of(old[n].id)
                    self.table[i] = old[n]
        i = self._bucket_of(eid)
        self.table[i].id = eid
        self.table[i].slot = s
        self.count += 1

    cdef void _erase(self, size_t i) noexcept:
        """Empty bucket ``i``, shifting later buckets of its run back (no tombstones)."""
        cdef Bucket* T = self.table.data()
        cdef size_t j = i, home
        while True:
            j = (j + 1) & self.mask
            if T[j].slot == NIL:
                break
            home = <size_t>(_mix(T[j].id) >> self.shift)
            # T[j] may move to i when i lies on its probe path, i.e. in [home, j)
            if ((j - home) & self.mask) >= ((j - i) & self.mask):
                T[i] = T[j]
                i = j
        T[i].slot = NIL
        self.count -= 1

    # ------------------------------------------------------ frequency nodes
    cdef int32_t _new_node(self, int64_t hits, int32_t after) noexcept:
        """A new empty node for ``hits`` placed after node ``after`` (NIL: at the front)."""
        cdef int32_t f
        if self.free_nodes.size():
            f = self.free_nodes.back()
            self.free_nodes.pop_back()
        else:
            f = <int32_t>self.nodes.size()
            self.nodes.resize(f + 1)
        cdef Node* F = self.nodes.data()
        F[f].hits = hits
        F[f].head = NIL
        F[f].tail = NIL
        F[f].prev = after
        if after == NIL:
            F[f].next = self.f_first
            self.f_first = f
        else:
            F[f].next = F[after].next
            F[after].next = f
        if F[f].next != NIL:
            F[F[f].next].prev = f
        else:
            self.f_last = f
        return f

    cdef void _drop_node_if_empty(self, int32_t f) noexcept:
        cdef Node* F = self.nodes.data()
        if F[f].head != NIL:
            return
        cdef int32_t p = F[f].prev, n = F[f].next
        if p != NIL:
            F[p].next = n
        else:
            self.f_first = n
        if n != NIL:
            F[n].prev = p
        else:
            self.f_last = p
        self.free_nodes.push_back(f)

    cdef int32_t _node_for(self, int64_t hits) noexcept:
        """The node for ``hits``, created in order when missing."""
        cdef int32_t f
        cdef Node* F = self.nodes.data()
        if self.f_first == NIL or hits < F[self.f_first].hits:
            return self._new_node(hits, NIL)
        if hits - F[self.f_first].hits <= F[self.f_last].hits - hits:
            f = self.f_first
            while F[f].next != NIL and F[F[f].next].hits <= hits:
                f = F[f].next
        else:
            f = self.f_last
            while F[f].hits > hits:
                f = F[f].prev
        if F[f].hits == hits:
            return f
        return self._new_node(hits, f)

    # ------------------------------------------------------------- public API
    # add, touch and remove run once per entry or hit: binding=False makes them method
    # descriptors, which CPython calls without the cyfunction's vectorcall layer
    @cython.binding(False)
    def add(self, entry_id, size, expires, hits=0) -> None:
        """Track a new entry as the most recently used (re-adding replaces it)."""
        cdef int64_t eid = entry_id
        cdef int64_t h = hits
        cdef int64_t sz = size
        cdef double exp = INFINITY if expires is None else <double>expires
        cdef int32_t s, f
        cdef size_t b = self._bucket_of(eid)
        if self.table[b].slot != NIL:
            self._remove_at(b)
        if self.free_slots.size():
            s = self.free_slots.back()
            self.free_slots.pop_back()
        else:
            s = <int32_t>self.slots.size()
            self.slots.resize(s + 1)
        self._insert(eid, s)
        if self.lfu:
            f = self._node_for(h)
        else:
            f = NIL
        cdef Slot* S = self.slots.data()
        S[s].id = eid
        S[s].size = sz
        S[s].hits = h
        S[s].exp = exp
        S[s].node = f
        S[s].live = 1
        self._total += sz
        if self.lfu:
            _append(S, s, &self.nodes[f].head, &self.nodes[f].tail)
        else:
            _append(S, s, &self.head, &self.tail)
        if expires is not None:
            self.pending += 1
            self.heap.push_back(HeapItem(-exp, ~eid))
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
        cdef Slot* S = self.slots.data()
        self.heap.clear()
        for s in range(self.slots.size()):
            if S[s].live and not isnan(S[s].exp) and S[s].exp != INFINITY:
                self.heap.push_back(HeapItem(-S[s].exp, ~S[s].id))
        make_heap(self.heap.begin(), self.heap.end())

    @cython.binding(False)
    def touch(self, int64_t entry_id) -> None:
        """Record a hit: most recently used, one more use.  Unknown ids are ignored."""
        cdef int32_t s = self._slot_of(entry_id)
        if s == NIL:
            return
        cdef Slot* S = self.slots.data()
        S[s].hits += 1
        if self.lfu:
            self._touch_lfu(s)
        elif s != self.tail:
            _unlink(S, s, &self.head, &self.tail)
            _append(S, s, &self.head, &self.tail)

    cdef inline void _touch_lfu(self, int32_t s) noexcept:
        """Move slot ``s``, whose hits were just incremented, to the node for them."""
        cdef Slot* S = self.slots.data()
        cdef int64_t h = S[s].hits
        cdef int32_t f = S[s].node
        cdef int32_t g = self.nodes[f].next
        if g == NIL or self.nodes[g].hits != h:
            g = self._new_node(h, f)
        _unlink(S, s, &self.nodes[f].head, &self.nodes[f].tail)
        self._drop_node_if_empty(f)
        S[s].node = g
        _append(S, s, &self.nodes[g].head, &self.nodes[g].tail)

    cdef void _remove_at(self, size_t b) noexcept:
        """Forget the entry in bucket ``b``."""
        cdef int32_t s = self.table[b].slot
        cdef Slot* S = self.slots.data()
        cdef int32_t f
        self._erase(b)
        self._total -= S[s].size
        if not isnan(S[s].exp) and S[s].exp != INFINITY:
            self.pending -= 1
        S[s].exp = NAN
        S[s].live = 0
        if self.lfu:
            f = S[s].node
            _unlink(S, s, &self.nodes[f].head, &self.nodes[f].tail)
            self._drop_node_if_empty(f)
        else:
            _unlink(S, s, &self.head, &self.tail)
        self.free_slots.push_back(s)

    @cython.binding(False)
    def remove(self, entry_id) -> None:
        """Forget an entry (deleted for any reason).  Unknown ids are ignored."""
        cdef size_t b = self._bucket_of(<int64_t>entry_id)
        if self.table[b].slot != NIL:
            self._remove_at(b)

    def victims(self, max_entries, max_bytes, incoming_bytes=0) -> list:
        """Ids to evict, in eviction order, so that the caps hold after adding
        ``incoming_bytes``; see the twin.  Does not remove them."""
        cdef int64_t excess_n = <int64_t>self.count - <int64_t>max_entries
        cdef int64_t excess_b = self._total + <int64_t>incoming_bytes - <int64_t>max_bytes
        cdef list out = []
        cdef int32_t s, f
        cdef Slot* S = self.slots.data()
        cdef Node* F = self.nodes.data()
        if excess_n <= 0 and excess_b <= 0:
            return out
        if self.lfu:
            f = self.f_first
            s = NIL if f == NIL else F[f].head
        else:
            f = NIL
            s = self.head
        while excess_n > 0 or excess_b > 0:
            while s == NIL and f != NIL:
                f = F[f].next
                s = NIL if f == NIL else F[f].head
            if s == NIL:
                break
            out.append(S[s].id)
            excess_n -= 1
            excess_b -= S[s].size
            s = S[s].next
        return out

    def expired(self, now, limit=1024) -> list:
        """Up to ``limit`` tracked ids whose expiry is ``<= now``, soonest first (ties:
        lowest id); each reported once, tracked until removed."""
        cdef double t = now
        cdef Py_ssize_t lim = limit
        cdef list out = []
        cdef HeapItem top
        cdef int32_t s
        while self.heap.size() and -self.heap.front().first <= t and len(out) < lim:
            top = self.heap.front()
            pop_heap(self.heap.begin(), self.heap.end())
            self.heap.pop_back()
            s = self._slot_of(~top.second)
            if s == NIL:
                continue
            if self.slots[s].exp == -top.first:
                self.slots[s].exp = NAN
                self.pending -= 1
                out.append(~top.second)
        return out
