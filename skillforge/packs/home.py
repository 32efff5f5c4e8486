"""The local side that publish and pull share: this home's registry and store, and the progress bar."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

from skillforge import config
from skillforge.registry import Registry
from skillforge.store import BlobStore, open_store


def opened(stack: ExitStack, registry: Registry | None, store: BlobStore | None) -> tuple[Registry, BlobStore]:
    """`registry` and `store`, defaulting to the current home's (a registry opened here closes with `stack`)."""
    if registry is None:
        registry = stack.enter_context(Registry(config.db_url()))
    if store is None:
        store = open_store(config.store_url())
    return registry, store


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A byte progress bar on stderr (stdout stays for results); disabled when not asked or empty."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not enabled or total == 0, leave=False, dynamic_ncols=True)
