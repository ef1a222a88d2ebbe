"""Learning BPE merges from pre-token counts, with incremental pair counts.

The corpus is kept as its unique pre-tokens ("words") with their counts, all
laid end to end in one array of symbols (token ids) with next/previous links;
-1 marks a word's end, so no pair spans two words. For every adjacent pair we
keep its count (weighted by word counts) and the positions where it was ever
formed. A merge then visits only the positions of the pair it merges, fixes
the two neighbouring pairs at each, and leaves the rest of the corpus alone,
so the work of a merge is proportional to how often its pair occurs, not to
the corpus size. The most frequent pair comes from a heap whose entries may
be stale; a popped entry whose count no longer matches is pushed back with
the true count, so the pair taken is always the true maximum.

Ties: among equally frequent pairs the one with the smallest (left id, right
id) wins. The first 256 ids are the bytes in GPT-2's order (see
byte_level.BYTE_ORDER) and new tokens get the next free id, which is also how
Hugging Face's BPE trainer numbers and orders them, so on the same pre-tokens
both learn the same merges. One intended difference: HF's trainer gives
special tokens the first ids, which shifts every byte id and so can change
tie-breaks; here they take the last ids and leave the bytes where GPT-2 has
them.

When a merge forms a byte string that is already a token (two different
splits, such as "ab"+"c" and "a"+"bc", of one string), the existing id is
reused rather than adding a second token with the same bytes, again as
Hugging Face's trainer does; training goes on until the vocabulary is full.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable

from tqdm import tqdm


def learn_merges(
    words: Iterable[tuple[bytes, int]],
    vocab: list[bytes],
    byte_ids: list[int],
    n_new: int,
    progress: bool = False,
) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    """Learn merges until n_new tokens have been added to `vocab`.

    words: (pre-token bytes, count). vocab: id -> bytes of the starting
    tokens (the 256 bytes). byte_ids[b]: id of byte b. Returns the grown
    vocabulary and the merges as (left id, right id, merged id), in order.
    Stops early if no pair is left (the caller reports it).
    """
    vocab = list(vocab)
    ids_of = {tok: i for i, tok in enumerate(vocab)}
    sym, nxt, prv, weight = _lay_out(words, byte_ids)
    count, where = _count_pairs(sym, nxt, weight)
    heap = [(-c, a, b) for (a, b), c in count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int, int]] = []
    start = len(vocab)
    bar = tqdm(total=n_new, desc="merges", unit="tok", disable=not progress, leave=False)
    while len(vocab) - start < n_new:
        pair = _pop_most_frequent(heap, count)
        if pair is None:
            break
        a, b = pair
        merged = vocab[a] + vocab[b]
        z = ids_of.get(merged)
        if z is None:
            z = len(vocab)
            vocab.append(merged)
            ids_of[merged] = z
            bar.update(1)
        merges.append((a, b, z))
        grown = _apply_merge(a, b, z, sym, nxt, prv, weight, count, where)
        for p in grown:
            c = count[p]
            if c > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
    bar.close()
    return vocab, merges


def _lay_out(words, byte_ids):
    """All words' byte ids end to end, linked within each word."""
    sym: list[int] = []
    nxt: list[int] = []
    prv: list[int] = []
    weight: list[int] = []
    for word, c in words:
        n = len(word)
        if n == 0:
            continue
        s = len(sym)
        sym.extend(byte_ids[x] for x in word)
        nxt.extend(range(s + 1, s + n + 1))
        nxt[-1] = -1
        prv.extend(range(s - 1, s + n - 1))
        prv[s] = -1
        weight.extend([c] * n)
    return sym, nxt, prv, weight


def _count_pairs(sym, nxt, weight):
    count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, j in enumerate(nxt):
        if j != -1:
            p = (sym[i], sym[j])
            count[p] += weight[i]
            where[p].append(i)
    return count, where


def _pop_most_frequent(heap, count):
    """The pair with the highest true count (ties: smallest ids), or None."""
    while heap:
        negc, a, b = heapq.heappop(heap)
        c = count.get((a, b), 0)
        if c == -negc:
            return a, b
        if c > 0:  # stale entry: requeue with the true count
            heapq.heappush(heap, (-c, a, b))
    return None


def _apply_merge(a, b, z, sym, nxt, prv, weight, count, where):
    """Merge every (a, b) left to right; update the neighbours' pair counts.

    Returns the pairs whose counts grew (they need fresh heap entries).
    """
    grown = set()
    # Left to right, so that in a run "a a a" the first two merge, as in
    # sequential merging; positions that an earlier merge consumed fail the
    # checks below and are skipped (the lists may also hold stale positions).
    for i in sorted(where.pop((a, b), ())):
        if sym[i] != a:
            continue
        j = nxt[i]
        if j == -1 or sym[j] != b:
            continue
        w = weight[i]
        p, n = prv[i], nxt[j]
        if p != -1:
            left = sym[p]
            count[(left, a)] -= w
            count[(left, z)] += w
            where[(left, z)].append(p)
            grown.add((left, z))
        if n != -1:
            right = sym[n]
            count[(b, right)] -= w
            count[(z, right)] += w
            where[(z, right)].append(i)
            grown.add((z, right))
        sym[i] = z
        sym[j] = -1
        nxt[i] = n
        if n != -1:
            prv[n] = i
    # Every occurrence is gone now (merging left to right leaves no a-b
    # neighbours), whatever the neighbour updates above did to this count.
    count.pop((a, b), None)
    return grown
