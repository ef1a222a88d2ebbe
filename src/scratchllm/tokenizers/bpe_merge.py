"""Applying merges to one pre-token: the inner loop of BPE encoding.

The symbols form a linked list over the positions of the start array and a
heap holds (rank, position) for every adjacent pair that can merge. Each
step takes the lowest rank (ties: leftmost, as tiktoken and Hugging Face do),
merges it into the left position, and pushes the at most two new pairs it
forms with its neighbours. Entries made stale by earlier merges are
recognised on the way out (the pair at that position no longer has that
rank) and dropped. O(n log n) for n bytes, so a long piece (a run of
spaces, or a whole text when there is no split pattern) costs no more than
its length warrants.
"""
from __future__ import annotations

from heapq import heapify, heappop, heappush


def merge_piece(ids: list[int], table: dict) -> list[int]:
    """Merge `ids` (changed in place) by `table`: (left, right) -> (rank, new id)."""
    n = len(ids)
    get = table.get
    heap = []
    for i in range(n - 1):
        m = get((ids[i], ids[i + 1]))
        if m is not None:
            heap.append((m[0], i))
    if not heap:
        return ids
    heapify(heap)
    nxt = list(range(1, n + 1))  # n means "no next"
    prv = list(range(-1, n - 1))  # -1 means "no previous"
    while heap:
        rank, i = heappop(heap)
        j = nxt[i]
        if j == n:
            continue
        m = get((ids[i], ids[j]))  # a merged-away left symbol is -1: no match
        if m is None or m[0] != rank:
            continue
        ids[i] = m[1]
        ids[j] = -1
        k = nxt[j]
        nxt[i] = k
        if k != n:
            prv[k] = i
            m = get((ids[i], ids[k]))
            if m is not None:
                heappush(heap, (m[0], i))
        p = prv[i]
        if p != -1:
            m = get((ids[p], ids[i]))
            if m is not None:
                heappush(heap, (m[0], p))
    return [t for t in ids if t != -1]
