"""The splice core: a tokenized prompt and loaded artifacts -> one assembled cache and the first logits.

It knows nothing of registries, stores, edits or decoding (runtime/lookup.py, edits.py, policies.py,
decode.py; runtime/facade.py puts them together). Steps: (1) align each skill's artifact tokens with
the context tokens of its span in the prompt (skillforge/prompt.py); (2) allocate one cache at its
final length and write every reused key, rotated from its compile position to its new one, and every
value into its slot; (3) choose the tokens to recompute: every token no artifact covers (template
pieces, system and user text, boundary tokens that tokenized differently, edited fields, errata) plus
the repair set (runtime/repair.py), unless that repair would cost more than a full prefill (a long
history computed anyway, the repair's passes on top: `repair.plan`), when every token is computed
instead, exactly; (4) compute them and the last prompt token against the assembled
cache in one forward pass, whose attention skips the cache beyond each position-ordered group of them
(runtime/passes.py) and which carries the repaired tokens' change to the rest of their skills
(runtime/drift.py). The cache then holds every prompt token but the last, so the result plugs into
`model.generate`, and the last token's logits (the first decoding step) come with it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from skillforge.artifact import ArtifactMeta
from skillforge.errors import ContextTooLong
from skillforge.model.forward import KV, AttentionFn, layer_shapes, run, wrapped_attention
from skillforge.model.loader import LoadedModel
from skillforge.prompt import Prompt, align
from skillforge.rope import RopeSpec, rope_spec
from skillforge.runtime.cache import CachePool, SpliceCache
from skillforge.runtime.drift import Drift, drifting
from skillforge.runtime.masks import scattered_mask
from skillforge.runtime.passes import PASS_COST, grouped_attention, plan_passes
from skillforge.runtime.repair import Repair, plan, select_repair


@dataclass
class Resolved:
    """A skill ready to splice: its artifact's metadata and KV, and the digest it was read from."""

    meta: ArtifactMeta
    kv: KV
    digest: str | None = None  # names the KV's content: a pooled cache that holds this digest's blocks keeps them


class Missed(NamedTuple):
    """A skill spliced behind other tokens than its artifact was compiled behind: the artifact, the
    tokens that precede it in this prompt, and their anchor digest (hashed once, by the lookup, for
    the server's count of recurring contexts)."""

    meta: ArtifactMeta
    before: list[int]
    anchor_digest: str


@dataclass
class SpliceResult:
    """An assembled cache covering every prompt token but the last, the logits after the last, and how
    they were made."""

    cache: SpliceCache | None  # None once released (Runtime.release)
    input_ids: torch.Tensor
    prompt: Prompt
    reused: int
    computed: int
    repaired: int
    skill_tokens: int
    drifted: int  # reused tokens the repaired tokens' change was carried to (runtime/drift.py)
    artifacts: list[str]
    edits: list[dict] = field(default_factory=list)
    computed_positions: torch.Tensor | None = None  # every position the splice computed, the last included
    ranking_passes: list[torch.Tensor] = field(default_factory=list)  # positions of each pass the repair ran to rank
    logits: torch.Tensor | None = None  # after the last prompt token (its KV sits in the slot after the cache)
    splice_ms: float = 0.0
    # (splice, weight): streams decoded alongside this one, whose log-probabilities are added with
    # these weights at every step (edit mode contrast: the stale splice +1, the null erratum -1)
    guides: list[tuple["SpliceResult", float]] = field(default_factory=list)
    # the unedited skills spliced behind other tokens than their artifact was compiled behind, with the
    # tokens that precede them here: what a variant compiled behind them would splice exactly (serve --learn-after)
    missed: list[Missed] = field(default_factory=list)


class Splicer:
    """Assembles caches for one model: its RoPE layout (refused at construction when keys cannot be
    moved), its per-layer KV shapes, and the pool released caches go back to."""

    def __init__(self, lm: LoadedModel, pool: CachePool):
        self.lm = lm
        self.pool = pool
        self.rope: RopeSpec = rope_spec(lm.model)
        self._shapes: list[tuple[int, int, int]] | None = None

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(kv_heads, key_dim, value_dim) per layer, read once from a one-token forward."""
        if self._shapes is None:
            self._shapes = layer_shapes(self.lm.model, self.lm.tokenizer.eos_token_id or 0)
        return self._shapes

    @torch.no_grad()
    def assemble(self, prompt: Prompt, skills: list[Resolved], repair: Repair, rotate: bool = True,
                 extra_capacity: int = 256) -> tuple[SpliceResult, torch.Tensor]:
        """Splice `skills` (in prompt order, one per skill span) into `prompt` -> the result, and a mask
        [prompt tokens] of the positions no artifact covered (what an edit cost, before any repair)."""
        t0 = time.perf_counter()
        L = len(prompt.ids)
        if L + 1 > self.lm.max_positions:
            raise ContextTooLong(f"the prompt is {L} tokens; {self.lm.name} allows {self.lm.max_positions}")
        device = self.lm.model.device
        dtype = next(self.lm.model.parameters()).dtype
        cache = SpliceCache.allocate(self.layer_shapes(), L + extra_capacity, dtype, device, pool=self.pool)

        # Plan: which context positions come from which artifact token.
        reuse: list[tuple[int, list[tuple[int, int, int]]]] = []  # (skill index, [(art_start, ctx_start, n)])
        reused = torch.zeros(L, dtype=torch.bool)
        skill_tokens = 0
        for i, (r, (cs, ce)) in enumerate(zip(skills, prompt.skill_spans)):
            pos = prompt.tokens_within(cs, ce)
            ctx_ids = [prompt.ids[p] for p in pos]
            blocks = [(b.art_start, pos[0] + b.ctx_start, b.length) for b in align(r.meta.token_ids, ctx_ids)]
            blocks = [(a, c, min(n, L - 1 - c)) for a, c, n in blocks if c < L - 1]
            for a, c, n in blocks:
                reused[c : c + n] = True
            reuse.append((i, blocks))
            skill_tokens += len(pos)
        uncovered = ~reused
        if rotate and repair.prefill_fallback and plan(repair, prompt, skills, reuse, len(cache.layers)).cost >= L:
            # the repair would cost more than a full prefill: prefill instead, exact and no slower
            reuse, reused = [], torch.zeros(L, dtype=torch.bool)
        # Assemble: rotate and write reused K/V straight into their slots, except where a pooled
        # cache already holds that block from an earlier splice (only its since-written slots change).
        buffers, capacity = cache.buffers(), cache.layers[0].keys.shape[2]
        for i, blocks in reuse:
            r = skills[i]
            source = (r.digest, rotate) if r.digest else None
            for a, c, n in blocks:
                stale = cache.contents.stale(source, a, c, n, buffers) if source else None
                if stale is None:
                    self._write_block(cache, r.kv, r.meta.offset + a, a, c, n, rotate)
                elif stale.numel():
                    self._write_block(cache, r.kv, r.meta.offset + a, a, c, n, rotate, slots=stale)
                cache.contents.wrote(source, a, c, n, capacity)
        ids = torch.tensor(prompt.ids, device=device)
        ranking: list[torch.Tensor] = []

        def ranking_pass(positions: torch.Tensor, observe: Callable[[AttentionFn], AttentionFn] | None) -> torch.Tensor:
            ranking.append(positions)
            return self.compute(cache, ids, positions, observe)

        spans = drifting(repair, prompt, skills, reuse) if rotate else []
        drift = Drift(self.rope, cache, spans, skills, reuse, repair.seam) if spans else None
        chosen = select_repair(self.lm.model, repair, prompt, skills, reuse, cache, ranking_pass) if rotate else set()
        for p in chosen:
            reused[p] = False
        if drift:
            drift.plan(chosen)

        # Compute every token no artifact supplied, and the last prompt token, whose logits are the
        # first decoding step: one forward fewer than leaving it to the caller; the repaired tokens'
        # change carried to the rest of their skills as it goes (runtime/drift.py).
        compute = torch.cat([(~reused[: L - 1]).nonzero().flatten(), torch.tensor([L - 1])])
        logits = self.compute(cache, ids, compute, drift.carry if drift and drift.groups else None)
        cache.set_length(L - 1)
        n_reused = int(reused[: L - 1].sum())
        result = SpliceResult(
            cache=cache,
            input_ids=torch.tensor([prompt.ids], device=device),
            prompt=prompt,
            reused=n_reused,
            computed=L - n_reused,
            repaired=int((~uncovered & ~reused).sum()),  # covered by an artifact, computed anyway
            skill_tokens=skill_tokens,
            drifted=sum(moved.numel() for _, moved, _, _ in drift.groups) if drift else 0,
            artifacts=[r.digest for r in skills if r.digest],
            computed_positions=compute,
            ranking_passes=ranking,
            logits=logits,
            splice_ms=(time.perf_counter() - t0) * 1000,
        )
        return result, uncovered

    def compute(self, cache: SpliceCache, ids: torch.Tensor, positions: torch.Tensor,
                observe: Callable[[AttentionFn], AttentionFn] | None = None) -> torch.Tensor:
        """Forward the tokens at sorted `positions` against `cache`, writing their KV into their slots,
        in one pass whose attention skips what each position-ordered group cannot see
        (runtime/passes.py); `observe` wraps every layer's attention call (before the grouping) to read
        it. Returns the logits [vocab] (float32) of the last position."""
        device = ids.device
        dtype = cache.layers[0].keys.dtype
        q = positions.to(device)
        kv_len = int(positions[-1]) + 1
        groups = plan_passes(positions, PASS_COST["cpu" if device.type == "cpu" else "accelerator"])
        cache.set_length(kv_len)
        cache.scatter_next_update(q)
        try:
            with grouped_attention(self.lm.model, groups), \
                    (wrapped_attention(self.lm.model, observe) if observe else nullcontext()):
                return run(self.lm.model, ids[q][None], cache=cache, positions=q[None],
                           mask=scattered_mask(self.lm.config.get_text_config(), q, kv_len, dtype))
        finally:
            cache.scatter_next_update(None)

    def _write_block(self, cache: SpliceCache, kv: KV, src0: int, a: int, c: int, n: int, rotate: bool,
                     slots: torch.Tensor | None = None) -> None:
        """Write artifact tokens a..a+n (compiled at src0..) into slots c..c+n, rotating keys by the move;
        with `slots` (sorted, within c..c+n), only those slots."""
        device = cache.layers[0].keys.device
        if slots is None:
            src, dst, pick = torch.arange(src0, src0 + n), torch.arange(c, c + n), slice(a, a + n)
        else:
            src, dst = slots - c + src0, slots
            pick = (slots - c + a).to(kv[0][0].device)
            index = slots.to(device)
        moved = rotate and src0 != c
        trig: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, (k, v) in enumerate(kv):
            ck, cv = cache.layers[layer].keys[0], cache.layers[layer].values[0]
            keys = k[:, pick].to(device)
            if moved:
                freq = self.rope.layers[layer].inv_freq
                if id(freq) not in trig:
                    cos, sin = self.rope.angle_delta(layer, src, dst, wide=True)
                    trig[id(freq)] = (cos.to(device), sin.to(device))
                # a whole block is rotated straight into its slots; scattered slots go through a temporary
                keys = self.rope.shift(layer, keys, *trig[id(freq)], out=ck[:, c : c + n] if slots is None else None)
            if slots is None:
                if not moved:
                    ck[:, c : c + n] = keys
                cv[:, c : c + n] = v[:, pick]
            else:
                ck.index_copy_(1, index, keys.to(ck.dtype))
                cv.index_copy_(1, index, v[:, pick].to(device, cv.dtype))
