"""Splice: assemble caches from artifacts, repair seams, apply field edits, generate.

The public surface is here; runtime/facade.py holds the Runtime that ties the parts together.
"""

from skillforge.runtime.facade import Context, Runtime
from skillforge.runtime.repair import Repair
from skillforge.runtime.splice import Missed, Resolved, SpliceResult

__all__ = ["Context", "Missed", "Repair", "Resolved", "Runtime", "SpliceResult"]
