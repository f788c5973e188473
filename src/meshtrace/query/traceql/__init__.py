"""TraceQL: parse (``parser``), print (``str`` of the tree), evaluate on a trace (``evaluate``); the SQL
pushdown lives with the store (``meshtrace.store.traceql_sql``)."""

from .ast import Query
from .evaluate import Spanset, evaluate
from .parser import TraceQLError, TraceQLUnsupported, parse

__all__ = ["Query", "Spanset", "TraceQLError", "TraceQLUnsupported", "evaluate", "parse"]
