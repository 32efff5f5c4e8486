"""A KV cache allocated once at its final length and filled in place.

transformers' DynamicCache grows by concatenation, which would copy the whole assembled KV for every
computed segment. SpliceCache preallocates [1, kv_heads, capacity, head_dim] per layer; splice writes
reused keys/values straight into their slots and computes all missing tokens in one forward pass whose
`update` scatters the new KV into their (non-contiguous) slots. Afterwards it behaves like an ordinary
append-only cache, so `model.generate(..., past_key_values=cache)` continues from it. Every layer keeps
every token (sliding windows are enforced by the attention mask, never by dropping keys), which is
what a cache built for splicing needs.

A released cache remembers what it holds (`Contents`): which artifact token sits in which slot, until
something else writes there (computed tokens, decoded tokens, another skill). A serving loop splices
the same skills behind the same text again and again, so the next splice that takes it from the pool
rewrites only the slots that changed instead of rotating and copying the whole skill again
(runtime/splice.py).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

Source = tuple[str, bool]  # (artifact digest, keys rotated to their slots)


class Contents:
    """What a cache's slots hold: for each artifact (by digest, content-addressed, so equal digests
    are equal bytes), which of its tokens sits in which slot.

    Any write to a slot (another artifact's block, a computed or decoded token: SpliceLayer.update
    reports those) clears what the slot held, so every slot still listed holds exactly that artifact
    token's KV. Sub-blocks and shifted layouts are found slot by slot: after an in-place edit, the
    unedited splice finds everything but the field's slots still in place."""

    def __init__(self) -> None:
        self.held: dict[Source, torch.Tensor] = {}  # int64 [capacity]: artifact token per slot, -1 none
        self.buffers: tuple[int, ...] = ()  # data pointers of the buffers the slots live in

    def stale(self, source: Source, a: int, c: int, n: int, buffers: tuple[int, ...]) -> torch.Tensor | None:
        """Slots of c..c+n that do not hold artifact tokens a..a+n of `source`; None if none of them do."""
        if buffers != self.buffers:  # grown or replaced buffers: nothing known about them
            self.held, self.buffers = {}, buffers
        held = self.held.get(source)
        if held is None or held.numel() < c + n:
            return None
        wrong = held[c : c + n] != torch.arange(a, a + n)
        if bool(wrong.all()):
            return None
        return wrong.nonzero().flatten() + c

    def wrote(self, source: Source | None, a: int, c: int, n: int, capacity: int) -> None:
        """Slots c..c+n now hold artifact tokens a..a+n of `source` (None: something no digest names)."""
        self.clear(slice(c, c + n))
        if source is not None:
            held = self.held.setdefault(source, torch.full((capacity,), -1, dtype=torch.int64))
            held[c : c + n] = torch.arange(a, a + n)

    def forget(self) -> None:
        """Nothing is known about any slot any more (the memory itself is left as it is)."""
        self.held = {}

    def clear(self, slots: slice | torch.Tensor) -> None:
        """`slots` were written by something else: they no longer hold any artifact token."""
        for held in self.held.values():  # slots past a held map's end (the cache grew since) were never held
            held[slots if isinstance(slots, slice) else slots[slots < held.numel()]] = -1


class SpliceLayer(CacheLayerMixin):
    """One layer's preallocated keys and values; `length` slots are valid."""

    is_sliding = False
    is_croppable = True

    def __init__(self, heads: int, capacity: int, k_dim: int, v_dim: int, dtype: torch.dtype, device: str | torch.device):
        super().__init__()
        # uninitialised on purpose: splice writes every slot below `length` (reused or computed)
        self.keys = torch.empty(1, heads, capacity, k_dim, dtype=dtype, device=device)
        self.values = torch.empty(1, heads, capacity, v_dim, dtype=dtype, device=device)
        self.device = self.keys.device
        self.length = 0
        self.write_slots: torch.Tensor | None = None
        self.contents: Contents | None = None  # set on one layer of a SpliceCache: every forward writes every layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocated eagerly in __init__; nothing to do."""

    def _grow(self, needed: int) -> None:
        capacity = self.keys.shape[2]
        if needed <= capacity:
            return
        new = max(needed, capacity * 2)
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_empty(*old.shape[:2], new, old.shape[3])
            grown[:, :, :capacity] = old
            setattr(self, name, grown)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.write_slots is not None:
            slots = self.write_slots
            if self.contents is not None:
                self.contents.clear(slots.to("cpu"))
            self.keys.index_copy_(2, slots, key_states.to(self.keys.dtype))
            self.values.index_copy_(2, slots, value_states.to(self.values.dtype))
            return self.keys[:, :, : self.length], self.values[:, :, : self.length]
        self._grow(self.length + n)
        if self.contents is not None:
            self.contents.clear(slice(self.length, self.length + n))
        self.keys[:, :, self.length : self.length + n] = key_states
        self.values[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0


class SpliceCache(Cache):
    """A cache of SpliceLayers; see the module docstring."""

    def __init__(self, layers: list[SpliceLayer]):
        super().__init__(layers=layers)
        self.contents = Contents()
        layers[0].contents = self.contents

    def buffers(self) -> tuple[int, ...]:
        """Addresses of every layer's key and value buffers: a grown or replaced buffer no longer holds the blocks."""
        return tuple(t.data_ptr() for l in self.layers for t in (l.keys, l.values))

    @classmethod
    def allocate(cls, shapes: list[tuple[int, int, int]], capacity: int, dtype: torch.dtype, device: str | torch.device,
                 pool: "CachePool | None" = None) -> "SpliceCache":
        """shapes[i] = (kv_heads, key_dim, value_dim) of layer i; reuses a released cache from `pool` if one fits."""
        reused = pool.take(shapes, capacity, dtype, torch.device(device)) if pool is not None else None
        if reused is not None:
            return reused
        return cls([SpliceLayer(h, capacity, kd, vd, dtype, device) for h, kd, vd in shapes])

    def fits(self, shapes: list[tuple[int, int, int]], capacity: int, dtype: torch.dtype, device: torch.device) -> bool:
        first = self.layers[0].keys
        return (first.dtype == dtype and first.device == device and len(self.layers) == len(shapes)
                and all(l.keys.shape[1] == h and l.keys.shape[3] == kd and l.values.shape[3] == vd and l.keys.shape[2] >= capacity
                        for l, (h, kd, vd) in zip(self.layers, shapes)))

    @property
    def nbytes(self) -> int:
        return sum(l.keys.nbytes + l.values.nbytes for l in self.layers)

    def set_length(self, length: int) -> None:
        for layer in self.layers:
            layer._grow(length)
            layer.length = length

    def scatter_next_update(self, slots: torch.Tensor | None) -> None:
        """Make the next forward write its KV into `slots` (sorted positions) instead of appending."""
        for layer in self.layers:
            layer.write_slots = slots


class CachePool:
    """Released splice caches, kept for the next splice of a fitting size.

    A fresh cache is fresh memory: the kernel maps and zeroes every page on the first write, which for
    an 8k-token splice of the demo model (370 MB) cost ~100-150 ms, as much as the writes themselves.
    A serving loop that releases each result when it is done (Runtime.release) splices into memory
    that is already mapped. Bounded by bytes; the smallest fitting cache is taken.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.caches: list[SpliceCache] = []

    def put(self, cache: SpliceCache) -> None:
        if cache.nbytes > self.max_bytes:
            return
        self.caches.append(cache)
        while sum(c.nbytes for c in self.caches) > self.max_bytes:
            self.caches.pop(0)  # the oldest goes first

    def forget(self) -> None:
        """Forget what the pooled caches hold (their memory stays): the next splice writes every slot,
        as after a request for other skills. The bench's cold arm."""
        for cache in self.caches:
            cache.contents.forget()

    def take(self, shapes: list[tuple[int, int, int]], capacity: int, dtype: torch.dtype, device: torch.device) -> SpliceCache | None:
        fitting = [c for c in self.caches if c.fits(shapes, capacity, dtype, device)]
        if not fitting:
            return None
        cache = min(fitting, key=lambda c: c.nbytes)
        self.caches.remove(cache)
        for layer in cache.layers:
            layer.reset()
        return cache
