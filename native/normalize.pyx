# cython: language_level=3
"""Native folding for the sensitive-word scanner: `fold`, `collapse`, `skeleton_pair`, `skeleton` and
`run_counts` of gateway.policy.normalize_py, each in one or two C passes over the code points.

It owns only those string transforms; it must never differ by one code point from the pure twin. The
twin stays the source of truth: the fold of each code point is taken from `normalize_py.fold_char`
(cached here in a flat table), text that needs canonical composition is folded by the twin's cluster
fold, and the mark and unspaced-script ranges are the twin's tables.
"""
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset


from gateway.policy import normalize_py as _py

cdef extern from "Python.h":
    int PyUnicode_KIND(object)
    void *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t index)
    Py_UCS4 PyUnicode_MAX_CHAR_VALUE(object)
    object PyUnicode_FromKindAndData(int kind, const void *buffer, Py_ssize_t size)
    object PyBytes_FromStringAndSize(const char *v, Py_ssize_t size)
    int PyUnicode_4BYTE_KIND

cdef enum:
    UNKNOWN = -2
    EMPTY = -1
    MULTI = -3
    STACK = 512

cdef int32_t _bmp_fold[65536]      # fold of each BMP code point: a code point, EMPTY, MULTI or UNKNOWN
cdef Py_UCS4 _leet_of[128]         # the twin's LEET table over ASCII (identity elsewhere)
cdef uint8_t _not_letter[128]      # the twin's NOT_LETTERS: what a number (not a word) may hold
cdef uint8_t _mark[8192]       # BMP marks (what attaches to the unit before it in the join)
cdef dict _multi = {}              # BMP code point -> its fold of two or more characters
cdef object _fold_table = _py._FOLD  # the twin's bounded per-code-point table (astral code points)
cdef object _fold_clusters = _py._fold_map
cdef object _needs_clusters = _py.needs_clusters
cdef unsigned int _unspaced_lo[32]
cdef unsigned int _unspaced_hi[32]
cdef int _unspaced_n = 0
cdef unsigned int _unspaced_min = 0x10FFFF


cdef void _init() except *:
    global _unspaced_n, _unspaced_min
    cdef Py_ssize_t cp
    for cp in range(65536):
        _bmp_fold[cp] = UNKNOWN
    memset(_mark, 0, sizeof(_mark))
    for a, b in _py.MARK_RANGES:
        for cp in range(a, b + 1):
            _mark[cp >> 3] |= <uint8_t>(1 << (cp & 7))
    if len(_py.UNSPACED_RANGES) > 32:
        raise ImportError("normalize_py.UNSPACED_RANGES has more ranges than the native table holds")
    cdef unsigned int lo, hi
    for a, b in _py.UNSPACED_RANGES:
        lo, hi = a, b
        _unspaced_lo[_unspaced_n] = lo
        _unspaced_hi[_unspaced_n] = hi
        _unspaced_n += 1
        if lo < _unspaced_min:
            _unspaced_min = lo
    for cp in range(128):
        _learn(cp)
        _leet_of[cp] = cp
        _not_letter[cp] = 0
    for k, v in _py.LEET.items():
        _leet_of[ord(k)] = ord(v)
    for k in _py.NOT_LETTERS:
        _not_letter[ord(k)] = 1


_init()


cdef int32_t _learn(Py_UCS4 cp) except? -9:
    """The fold of a BMP code point from the twin, remembered."""
    folded = _py.fold_char(chr(<long>cp))
    cdef int32_t v
    if len(folded) == 0:
        v = EMPTY
    elif len(folded) == 1:
        v = ord(folded)
    else:
        _multi[<long>cp] = folded
        v = MULTI
    _bmp_fold[cp] = v
    return v


cdef inline bint _is_mark(Py_UCS4 c) noexcept nogil:
    cdef unsigned int u = <unsigned int>c
    return u < 65536 and (_mark[u >> 3] >> (u & 7)) & 1


cdef inline bint _is_unspaced(Py_UCS4 c) noexcept nogil:
    cdef int i
    cdef unsigned int u = <unsigned int>c
    if u < _unspaced_min:
        return False
    for i in range(_unspaced_n):
        if _unspaced_lo[i] <= u <= _unspaced_hi[i]:
            return True
    return False


cdef struct Buf:
    Py_UCS4 *p
    Py_ssize_t n
    Py_ssize_t cap
    bint heap
    Py_UCS4 stack[STACK]


cdef inline void _buf_init(Buf *b) noexcept nogil:
    b.p = b.stack
    b.n = 0
    b.cap = STACK
    b.heap = False


cdef inline void _buf_free(Buf *b) noexcept nogil:
    if b.heap:
        free(b.p)


cdef int _buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = b.n + extra
    cdef Py_ssize_t cap = b.cap
    cdef Py_UCS4 *p
    if want <= cap:
        return 0
    while cap < want:
        cap *= 2
    if b.heap:
        p = <Py_UCS4 *>realloc(b.p, cap * sizeof(Py_UCS4))
    else:
        p = <Py_UCS4 *>malloc(cap * sizeof(Py_UCS4))
        if p != NULL:
            for i in range(b.n):
                p[i] = b.p[i]
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    b.heap = True
    return 0


cdef int _append_str(Buf *b, str s) except -1:
    cdef Py_ssize_t k, m = PyUnicode_GET_LENGTH(s)
    cdef int kind = PyUnicode_KIND(s)
    cdef void *data = PyUnicode_DATA(s)
    _buf_reserve(b, m)
    for k in range(m):
        b.p[b.n] = PyUnicode_READ(kind, data, k)
        b.n += 1
    return 0


cdef int _fold_into(Buf *b, str text) except -1:
    """Appends the fold of `text` (normalize_py.fold) to b."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef Py_UCS4 c
    cdef int32_t v
    if PyUnicode_MAX_CHAR_VALUE(text) >= 128 and _needs_clusters(text):
        return _append_str(b, _fold_clusters(text)[0])
    _buf_reserve(b, n)
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c < 65536:
            v = _bmp_fold[c]
            if v == UNKNOWN:
                v = _learn(c)
            if v >= 0:
                b.p[b.n] = <Py_UCS4>v
                b.n += 1
                continue
            if v == EMPTY:
                continue
            _append_str(b, _multi[<long>c])
        else:
            _append_str(b, _fold_table[<long>c])
        _buf_reserve(b, n - i)
    return 0


cdef int _joined(Buf *src, Buf *out) except -1:
    """out = src (padded, folded) with the spaces the twin's _JOIN and _GAP substitutions drop: those
    inside a run of three or more one-unit tokens (a character and the BMP marks after it), and every
    run of spaces between two characters of unspaced scripts."""
    cdef Py_UCS4 *p = src.p
    cdef Py_ssize_t m = src.n, i, j, t, s
    cdef Py_ssize_t ntok = 0
    cdef Py_ssize_t *starts
    cdef Py_ssize_t *ends
    cdef uint8_t *single
    cdef Py_ssize_t run
    _buf_reserve(out, m)
    starts = <Py_ssize_t *>malloc((m // 2 + 2) * (2 * sizeof(Py_ssize_t) + 1))
    if starts == NULL:
        raise MemoryError()
    ends = starts + (m // 2 + 2)
    single = <uint8_t *>(ends + (m // 2 + 2))
    try:
        i = 0
        while i < m:
            if p[i] == 32:
                i += 1
                continue
            j = i + 1
            while j < m and _is_mark(p[j]):
                j += 1
            s = j
            while j < m and p[j] != 32:
                j += 1
            starts[ntok] = i
            ends[ntok] = j
            single[ntok] = s == j
            ntok += 1
            i = j
        # single[t] becomes 2 where the spaces after token t are dropped by the join
        t = 0
        while t < ntok:
            if not single[t]:
                t += 1
                continue
            run = t
            while run < ntok and single[run]:
                run += 1
            if run - t >= 3:
                for s in range(t, run - 1):
                    single[s] = 2
            t = run
        # copy: leading spaces, then each token and the spaces after it unless dropped
        i = 0
        j = starts[0] if ntok else m
        while i < j:
            out.p[out.n] = p[i]
            out.n += 1
            i += 1
        for t in range(ntok):
            for i in range(starts[t], ends[t]):
                out.p[out.n] = p[i]
                out.n += 1
            j = starts[t + 1] if t + 1 < ntok else m
            if single[t] == 2:
                continue
            if t + 1 < ntok and _is_unspaced(p[ends[t] - 1]) and _is_unspaced(p[j]):
                continue
            for i in range(ends[t], j):
                out.p[out.n] = p[i]
                out.n += 1
    finally:
        free(starts)
    return 0


cdef int _boundaries(Buf *b, Buf *tmp) except -1:
    """The twin's _BOUNDARY in place: a space where a character of an unspaced script meets another
    non-space character (tmp: scratch space)."""
    cdef Py_UCS4 *p = b.p
    cdef Py_ssize_t n = b.n, i, more = 0
    for i in range(1, n):
        if p[i] != 32 and p[i - 1] != 32 and _is_unspaced(p[i]) != _is_unspaced(p[i - 1]):
            more += 1
    if not more:
        return 0
    tmp.n = 0
    _buf_reserve(tmp, n + more)
    for i in range(n):
        if i and p[i] != 32 and p[i - 1] != 32 and _is_unspaced(p[i]) != _is_unspaced(p[i - 1]):
            tmp.p[tmp.n] = 32
            tmp.n += 1
        tmp.p[tmp.n] = p[i]
        tmp.n += 1
    b.n = 0
    _buf_reserve(b, tmp.n)
    for i in range(tmp.n):
        b.p[i] = tmp.p[i]
    b.n = tmp.n
    return 0


cdef void _leet(Buf *b) noexcept nogil:
    """The twin's _leet in place: the LEET table in every token that holds a letter."""
    cdef Py_UCS4 *p = b.p
    cdef Py_ssize_t n = b.n, i = 0, j, k
    cdef bint number, letter
    while i < n:
        if p[i] == 32:
            i += 1
            continue
        j = i
        number = letter = False
        while j < n and p[j] != 32:
            if p[j] < 128 and _not_letter[p[j]]:
                number = True
            else:
                letter = True
            j += 1
        if number and letter:
            for k in range(i, j):
                if p[k] < 128:
                    p[k] = _leet_of[p[k]]
        i = j


cdef Py_ssize_t _collapse_into(Py_UCS4 *p, Py_ssize_t n, Py_UCS4 *out) noexcept nogil:
    cdef Py_ssize_t i, k = 0
    for i in range(n):
        if i == 0 or p[i] != p[i - 1]:
            out[k] = p[i]
            k += 1
    return k


cdef object _str(Py_UCS4 *p, Py_ssize_t n):
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, p, n)


cdef int _padded_joined(str text, Buf *folded, Buf *joined) except -1:
    _buf_reserve(folded, 1)
    folded.p[0] = 32
    folded.n = 1
    _fold_into(folded, text)
    _buf_reserve(folded, 1)
    folded.p[folded.n] = 32
    folded.n += 1
    _boundaries(folded, joined)  # (joined as scratch space) first, so "f r e e的" joins too
    joined.n = 0
    _joined(folded, joined)
    _boundaries(joined, folded)  # (folded is spent: scratch space)
    _leet(joined)
    _buf_reserve(folded, joined.n)  # skeleton_pair collapses joined into folded's memory
    return 0


def fold(str text):
    """normalize_py.fold"""
    cdef Buf b
    _buf_init(&b)
    try:
        _fold_into(&b, text)
        return _str(b.p, b.n)
    finally:
        _buf_free(&b)


def skeleton_pair(str text):
    """normalize_py.skeleton_pair: (joined, skeleton), joined with the leetspeak of its words"""
    cdef Buf folded, joined
    cdef Py_ssize_t k
    _buf_init(&folded)
    _buf_init(&joined)
    try:
        _padded_joined(text, &folded, &joined)
        k = _collapse_into(joined.p, joined.n, folded.p)  # folded.n >= joined.n: reuse its memory
        return _str(joined.p, joined.n), _str(folded.p, k)
    finally:
        _buf_free(&folded)
        _buf_free(&joined)


def skeleton(str text):
    """normalize_py.skeleton"""
    cdef Buf folded, joined
    cdef Py_ssize_t k
    _buf_init(&folded)
    _buf_init(&joined)
    try:
        _padded_joined(text, &folded, &joined)
        k = _collapse_into(joined.p, joined.n, folded.p)
        return _str(folded.p, k)
    finally:
        _buf_free(&folded)
        _buf_free(&joined)


def collapse(str s):
    """normalize_py.collapse"""
    cdef Buf b
    cdef Py_ssize_t k
    _buf_init(&b)
    try:
        _append_str(&b, s)
        k = _collapse_into(b.p, b.n, b.p)
        return _str(b.p, k)
    finally:
        _buf_free(&b)


def run_counts(str joined):
    """normalize_py.run_counts: the length of every run of `joined`, capped at 255, as bytes."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(joined), k = 0, run = 0
    cdef int kind = PyUnicode_KIND(joined)
    cdef void *data = PyUnicode_DATA(joined)
    cdef Py_UCS4 c, prev = 0
    cdef char stack[STACK]
    cdef char *out = stack
    if n > STACK:
        out = <char *>malloc(n)
        if out == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            c = PyUnicode_READ(kind, data, i)
            if i and c == prev:
                run += 1
                continue
            if i:
                out[k] = <char>(run if run < 255 else 255)
                k += 1
            prev = c
            run = 1
        if n:
            out[k] = <char>(run if run < 255 else 255)
            k += 1
        return PyBytes_FromStringAndSize(out, k)
    finally:
        if out != stack:
            free(out)
