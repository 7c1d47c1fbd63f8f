"""Queries spent on a remote classifier, as an extra log column.

A classifier behind an API costs per image sent. When the base classifier (or the
classifier inside a composed f(D(.))) counts its queries (`queries` attribute, e.g.
`sources.remote.RemoteClassifier`), the result log gets a `queries` column after
the standard ones: the images sent while certifying that row, retries included.
"""

from __future__ import annotations

from collections.abc import Callable

#: The column, after the standard ones (chosen with the others in dsmooth.runs.local).
QUERIES = "queries"


def query_counter(base) -> Callable[[], int] | None:
    """A function reading the queries spent so far by `base`, or None if it does not count."""
    for obj in (base, getattr(base, "classifier", None)):
        if obj is not None and isinstance(getattr(obj, "queries", None), int):
            return lambda obj=obj: int(obj.queries)
    return None


def count_queries(smooth, rows: Callable[[int], dict]) -> Callable[[int], dict]:
    """`rows` with a `queries` entry added when the base classifier counts them."""
    counter = query_counter(smooth.base_classifier)
    if counter is None:
        return rows

    def counted(i: int) -> dict:
        before = counter()
        row = rows(i)
        return {**row, QUERIES: counter() - before}

    return counted
