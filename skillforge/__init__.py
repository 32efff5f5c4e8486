"""skillforge: compile reused prompt segments into KV artifacts once, splice them anywhere later."""

__version__ = "0.1.0"
