"""MongoDB-style queries on entity documents: validation at call time, matching, sorting.

`compile_query` checks every operator and argument and normalizes the query, so that a bad query
fails when a finder is called, not while its results are iterated. Matching follows MongoDB: a
dotted path reaches into objects and through arrays of objects, a condition on an array holds when
an element meets it, `$ne`/`$nin`/`$not` mean "no value meets the condition", `null` matches a
missing field, booleans never equal numbers, numbers compare by exact value across int and float,
and NaN equals NaN but compares with no other number. `$regex` runs on RE2, in time linear in the
text, so no pattern can hang a search. Queries nest at most `MAX_QUERY_DEPTH` levels, which keeps
every recursive step far from Python's recursion limit. Sorting (which mongoquery lacks) follows
MongoDB's type order, missing first when ascending, with the entity id breaking ties.
"""

from ..errors import InvalidQuery
from .match import MongoQuery, compile_query, matches
from .sort import check_sort, extract, sort_docs
from .validate import MAX_QUERY_DEPTH
from .values import MISSING

__all__ = [
    "MAX_QUERY_DEPTH",
    "MISSING",
    "InvalidQuery",
    "MongoQuery",
    "check_sort",
    "compile_query",
    "extract",
    "matches",
    "sort_docs",
]
