"""Splice: assemble caches from artifacts, repair seams, apply field edits, generate."""

from skillforge.runtime.repair import Repair
from skillforge.runtime.splice import Context, Resolved, Runtime, SpliceResult

__all__ = ["Context", "Repair", "Resolved", "Runtime", "SpliceResult"]
