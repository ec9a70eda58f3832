"""Disjoint sets, for grouping images that must stay on one side of every split."""

from __future__ import annotations


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the set's smallest member, so the
    first item of a sorted order names its set (:mod:`radiographs` relies on it)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
