"""Splice compiled skills into a new context: re-rotate, assemble one cache, compute only what is missing.

    rt = Runtime(load_model("smollm2-135m"))
    result = rt.splice(Context(skills=["refund-desk"], system="...", user="..."))
    out = lm.model.generate(result.input_ids, past_key_values=result.cache, max_new_tokens=64)

Steps: (1) resolve each skill to an artifact compiled for this model's fingerprint (digest verified on
load; recently used ones stay in memory); (2) render and tokenize the prompt exactly as transformers
would and align each skill's tokens with it; (3) allocate one cache at its final length and write
every reused key, rotated from its compile position to its new one, and every value into its slot;
(4) choose the tokens to recompute: every token no artifact covers (template pieces, system and user
text, boundary tokens that tokenized differently) plus the repair set; (5) compute them and the last
prompt token against the assembled cache in one forward pass, whose attention skips the cache
beyond each position-ordered group of them (runtime/passes.py). The cache then holds every prompt
token but the last, so the result plugs into `model.generate`, and the last token's logits (the
first decoding step) come with it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch

from skillforge.artifact import ArtifactMeta
from skillforge.errors import ArtifactMismatch, ContextTooLong, NotFound
from skillforge.model.forward import eos_ids, greedy, layer_shapes, run
from skillforge.model.loader import LoadedModel
from skillforge.rope import RopeSpec, rope_spec
from skillforge.runtime.cache import CachePool, SpliceCache
from skillforge.runtime.edits import DEFAULT_ERRATUM, check_erratum_template
from skillforge.runtime.hotcache import HotCache
from skillforge.prompt import Prompt, align, build_prompt, resolve_anchor, system_anchor
from skillforge.runtime.masks import scattered_mask
from skillforge.runtime.passes import PASS_COST, grouped_attention, plan_passes
from skillforge.runtime.repair import Repair, select_repair

KV = list[tuple[torch.Tensor, torch.Tensor]]
DEFAULT_HOT_BYTES = int(os.environ.get("SKILLFORGE_HOT_CACHE_BYTES", 2 << 30))
DEFAULT_POOL_BYTES = int(os.environ.get("SKILLFORGE_CACHE_POOL_BYTES", 1 << 30))


@dataclass
class Resolved:
    """A skill ready to splice: its artifact's metadata and KV, and the text it stands for."""

    meta: ArtifactMeta
    kv: KV
    digest: str | None = None


@dataclass
class Context:
    """What the prompt is made of (the layout contract is in skillforge/prompt.py)."""

    skills: list[str] = field(default_factory=list)
    system: str = ""
    user: str = ""
    raw: bool = False
    set: dict[str, str] = field(default_factory=dict)  # "skill.field" -> value


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
    artifacts: list[str]
    edits: list[dict] = field(default_factory=list)
    computed_positions: torch.Tensor | None = None  # every position the splice computed, the last included
    logits: torch.Tensor | None = None  # after the last prompt token (its KV sits in the slot after the cache)
    splice_ms: float = 0.0
    # (splice, weight): streams decoded alongside this one, whose log-probabilities are added with
    # these weights at every step (edit mode contrast: the stale splice +1, the null erratum -1)
    guides: list[tuple["SpliceResult", float]] = field(default_factory=list)


def check_fingerprint(meta: ArtifactMeta, lm: LoadedModel, where: str) -> None:
    if meta.fingerprint != lm.fingerprint.digest:
        raise ArtifactMismatch(
            f"{where} ({meta.skill}@{meta.version}) was compiled for model {meta.fingerprint}, "
            f"this model ({lm.name}) is {lm.fingerprint.digest}; run skillforge compile for this model"
        )


class Runtime:
    """Splices artifacts for one loaded model. Holds the hot cache; reuse one Runtime per process."""

    def __init__(self, lm: LoadedModel, registry: Any = None, store: Any = None, hot_bytes: int = DEFAULT_HOT_BYTES,
                 pool_bytes: int = DEFAULT_POOL_BYTES, repair: Repair | None = None, erratum: str | None = None):
        # Let SDPA attend over the cache's KV heads directly instead of repeating them per query head
        # (transformers otherwise copies the whole cache per layer when a mask is given); same math.
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        self.lm = lm
        self.registry = registry
        self.store = store
        self.hot = HotCache(hot_bytes)
        self.pool = CachePool(pool_bytes)
        self.repair = repair or Repair()
        self.erratum = check_erratum_template(erratum or DEFAULT_ERRATUM)  # wording of the override line for edits
        self.rope: RopeSpec = rope_spec(lm.model)
        self._shapes: list[tuple[int, int, int]] | None = None
        self._anchors: dict[bool, str] = {}
        self._system_anchors: dict[tuple[str, str], str] = {}  # (system text, artifact digest) -> anchor digest

    # -- artifacts ---------------------------------------------------------------------------------
    def resolve(self, ref: str, raw: bool = False, system: str = "") -> Resolved:
        """`name`, `name@version` or `name@sha256:...` -> artifact for this model (hot cache first).

        Where a skill was compiled behind more than one anchor, the one the context starts with wins:
        the context's own `system` text (`skillforge compile --system`: exact after it), else the chat
        template's system prefix, or none for a `raw` prompt. Any other still splices (its unseen
        tokens get repaired), so it is the fallback."""
        from skillforge import artifact
        from skillforge.refs import SkillRef

        if self.registry is None or self.store is None:
            raise NotFound(f"cannot resolve {ref!r}: this Runtime has no registry and store; pass resolved artifacts to splice()")
        r = SkillRef.parse(ref)
        find = partial(self.registry.find_artifact, r.name, self.lm.fingerprint.digest, version=r.version, digest=r.digest)
        try:
            row = find(anchor_digest=self._anchor_digest(raw))
        except NotFound:
            row = find()
        if system and not raw and r.digest is None:
            row = self._behind_system(row, system)
        hit = self.hot.get(row.digest)
        if hit is not None:
            return hit
        path = self.store.local_path(row.digest)  # verifies the digest
        meta, kv = artifact.load(path)
        check_fingerprint(meta, self.lm, row.digest)
        device = self.lm.model.device
        # On a CPU the hot cache keeps the artifact's memory map (no copy: its pages stay mapped and in
        # the page cache, so the next hit reads memory); on an accelerator this copies the KV over.
        kv = [(k.to(device), v.to(device)) for k, v in kv]
        resolved = Resolved(meta, kv, row.digest)
        self.hot.put(row.digest, resolved, sum(k.nbytes + v.nbytes for k, v in kv))
        return resolved

    def _behind_system(self, row: Any, system: str) -> Any:
        """The same skill version compiled behind `system`, if the registry has it, else `row`. One
        query; the anchor (which depends on the skill's text) is computed once per system text."""
        from skillforge.artifact import anchor_digest

        key = (system, row.digest)
        if key not in self._system_anchors:
            if len(self._system_anchors) >= 1024:
                self._system_anchors.clear()
            self._system_anchors[key] = anchor_digest(system_anchor(self.lm.tokenizer, system, row.meta.text))
        wanted = self._system_anchors[key]
        if row.anchor_digest == wanted:
            return row
        hits = [x for x in self.registry.list_artifacts(self.lm.fingerprint.digest, row.name)
                if x.version == row.version and x.anchor_digest == wanted]
        return hits[-1] if hits else row

    def _anchor_digest(self, raw: bool) -> str:
        """Digest of the anchor a context starts with: the chat template's system prefix, or none when
        raw. Rendered once per Runtime, not on every resolve (the template does not change)."""
        if raw not in self._anchors:
            from skillforge.artifact import anchor_digest

            self._anchors[raw] = anchor_digest(resolve_anchor(self.lm.tokenizer, "none" if raw else "template"))
        return self._anchors[raw]

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(kv_heads, key_dim, value_dim) per layer, read once from a one-token forward."""
        if self._shapes is None:
            self._shapes = layer_shapes(self.lm.model, self.lm.tokenizer.eos_token_id or 0)
        return self._shapes

    # -- splice ------------------------------------------------------------------------------------
    @torch.no_grad()
    def splice(self, context: Context, skills: list[Resolved] | None = None, repair: Repair | None = None,
               edit_mode: str = "field+erratum", rotate: bool = True, extra_capacity: int = 256) -> SpliceResult:
        """Assemble the cache for `context`. `skills` overrides resolution (already loaded artifacts)."""
        from skillforge.runtime.edits import count_edit_tokens, plan_edits

        t0 = time.perf_counter()
        repair = repair or self.repair
        resolved = skills if skills is not None else [self.resolve(s, context.raw, context.system) for s in context.skills]
        if edit_mode == "auto" and context.set:
            return self._splice_auto(context, resolved, repair, t0)
        if edit_mode == "contrast" and context.set:
            return self._splice_contrast(context, resolved, repair, rotate, extra_capacity, t0)
        for r in resolved:
            check_fingerprint(r.meta, self.lm, r.digest or "artifact")
        edit = plan_edits(self, resolved, context.set, edit_mode, self.erratum)
        resolved = edit.skills
        prompt = build_prompt(self.lm.tokenizer, context.system, edit.texts, context.user, context.raw, edit.errata)
        L = len(prompt.ids)
        if L + 1 > self.lm.max_positions:
            raise ContextTooLong(f"the prompt is {L} tokens; {self.lm.name} allows {self.lm.max_positions}")
        device = self.lm.model.device
        dtype = next(self.lm.model.parameters()).dtype
        cache = SpliceCache.allocate(self.layer_shapes(), L + extra_capacity, dtype, device, pool=self.pool)

        # Plan: which context positions come from which artifact token.
        reuse: list[tuple[int, list[tuple[int, int, int]]]] = []  # (skill index, [(art_start, ctx_start, n)])
        reused = torch.zeros(L, dtype=torch.bool)
        skill_positions: list[list[int]] = []
        for i, (r, (cs, ce)) in enumerate(zip(resolved, prompt.skill_spans)):
            pos = prompt.tokens_within(cs, ce)
            ctx_ids = [prompt.ids[p] for p in pos]
            blocks = [(b.art_start, pos[0] + b.ctx_start, b.length) for b in align(r.meta.token_ids, ctx_ids)]
            blocks = [(a, c, min(n, L - 1 - c)) for a, c, n in blocks if c < L - 1]
            for a, c, n in blocks:
                reused[c : c + n] = True
            reuse.append((i, blocks))
            skill_positions.append(pos)
        skill_tokens = sum(len(p) for p in skill_positions)
        # Assemble: rotate and write reused K/V straight into their slots.
        for i, blocks in reuse:
            kv = resolved[i].kv
            for a, c, n in blocks:
                self._write_block(cache, kv, resolved[i].meta.offset + a, a, c, n, rotate)
        edits = count_edit_tokens(edit, prompt, ~reused)
        chosen = select_repair(self, repair, prompt, resolved, reuse, cache) if rotate else set()
        for p in chosen:
            reused[p] = False

        # Compute every token no artifact supplied, and the last prompt token, whose logits are the
        # first decoding step: one forward fewer than leaving it to the caller.
        compute = torch.cat([(~reused[: L - 1]).nonzero().flatten(), torch.tensor([L - 1])])
        logits = self.compute(cache, torch.tensor(prompt.ids, device=device), compute)
        cache.set_length(L - 1)
        n_reused = int(reused[: L - 1].sum())
        return SpliceResult(
            cache=cache,
            input_ids=torch.tensor([prompt.ids], device=device),
            prompt=prompt,
            reused=n_reused,
            computed=L - n_reused,
            repaired=len(chosen),
            skill_tokens=skill_tokens,
            artifacts=[r.digest for r in resolved if r.digest],
            edits=edits,
            computed_positions=compute,
            logits=logits,
            splice_ms=(time.perf_counter() - t0) * 1000,
        )

    def compute(self, cache: SpliceCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Forward the tokens at sorted `positions` against `cache`, writing their KV into their slots,
        in one pass whose attention skips what each position-ordered group cannot see
        (runtime/passes.py). Returns the logits [vocab] (float32) of the last position."""
        device = ids.device
        dtype = cache.layers[0].keys.dtype
        q = positions.to(device)
        kv_len = int(positions[-1]) + 1
        groups = plan_passes(positions, PASS_COST["cpu" if device.type == "cpu" else "accelerator"])
        cache.set_length(kv_len)
        cache.scatter_next_update(q)
        try:
            with grouped_attention(self.lm.model, groups):
                return run(self.lm.model, ids[q][None], cache=cache, positions=q[None],
                           mask=scattered_mask(self.lm.config.get_text_config(), q, kv_len, dtype))
        finally:
            cache.scatter_next_update(None)

    def _splice_auto(self, context: Context, resolved: list[Resolved], repair: Repair, t0: float) -> SpliceResult:
        """Pick in-place when its next-token decision equals field+erratum's, else field+erratum."""
        from skillforge.errors import EditError

        full = self.splice(context, resolved, repair, edit_mode="field+erratum")
        full_top = int(self.next_logits(full).argmax())
        full.cache.crop(-1)  # undo the diagnostic step: the result again ends before the last token
        try:
            inplace = self.splice(context, resolved, repair, edit_mode="in-place")
        except EditError:
            picked = full
        else:
            picked = inplace if int(self.next_logits(inplace).argmax()) == full_top else full
            if picked is inplace:
                inplace.cache.crop(-1)
        mode = "in-place" if picked is not full else "field+erratum"
        for e in picked.edits:
            e["mode"] = f"auto:{mode}"
        picked.splice_ms = (time.perf_counter() - t0) * 1000
        return picked

    def _splice_contrast(self, context: Context, resolved: list[Resolved], repair: Repair, rotate: bool,
                         extra_capacity: int, t0: float) -> SpliceResult:
        """field+erratum, guided by the stale splice (+1) and the null-erratum splice (-1): see
        runtime/edits.py. Each edit's tokens_computed adds the null erratum's tokens."""
        from skillforge.runtime.edits import NULL_ERRATUM

        run = partial(self.splice, skills=resolved, repair=repair, rotate=rotate, extra_capacity=extra_capacity)
        main = run(context, edit_mode="field+erratum")
        if not main.edits:  # every value equals the compiled one: nothing to contrast
            return main
        stale = run(replace(context, set={}))
        null = run(context, edit_mode=NULL_ERRATUM)
        for e, n in zip(main.edits, null.edits):
            e["tokens_computed"] += n["tokens_computed"]
            e["mode"] = "contrast"
        main.guides = [(stale, 1.0), (null, -1.0)]
        main.splice_ms = (time.perf_counter() - t0) * 1000
        return main

    def _write_block(self, cache: SpliceCache, kv: KV, src0: int, a: int, c: int, n: int, rotate: bool) -> None:
        """Write artifact tokens a..a+n (compiled at src0..) into slots c..c+n, rotating keys by the move."""
        device = cache.layers[0].keys.device
        src = torch.arange(src0, src0 + n)
        dst = torch.arange(c, c + n)
        moved = rotate and src0 != c
        trig: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, (k, v) in enumerate(kv):
            ck, cv = cache.layers[layer].keys[0], cache.layers[layer].values[0]
            if moved:
                freq = self.rope.layers[layer].inv_freq
                key = id(freq)
                if key not in trig:
                    cos, sin = self.rope.angle_delta(layer, src, dst)
                    trig[key] = (cos.to(device), sin.to(device))
                self.rope.shift(layer, k[:, a : a + n].to(device), *trig[key], out=ck[:, c : c + n])
            else:
                ck[:, c : c + n] = k[:, a : a + n]
            cv[:, c : c + n] = v[:, a : a + n]

    def next_logits(self, result: SpliceResult) -> torch.Tensor:
        """Logits [vocab] (float32) after the whole prompt: the first decoding step, which the splice
        already computed (with guides: the guided log-probabilities). Leaves each cache holding every
        prompt token (crop(-1) undoes that)."""
        for r in (result, *(g for g, _ in result.guides)):
            r.cache.set_length(r.input_ids.shape[1])
        return _guided(result.logits, [(g.logits, w) for g, w in result.guides])

    def release(self, result: SpliceResult) -> None:
        """Hand a finished result's caches back for the next splice to reuse (their memory is already
        mapped). The result, and anything still pointing into its caches, must not be used afterwards."""
        for g, _ in result.guides:
            self.release(g)
        if result.cache is not None:
            self.pool.put(result.cache)
            result.cache = None

    @torch.no_grad()
    def generate(self, result: SpliceResult, max_new_tokens: int = 64) -> tuple[list[int], float]:
        """Greedy decoding from a splice -> (new token ids, time to first token in ms incl. the splice)."""
        t0 = time.perf_counter()
        logits = self.next_logits(result)
        ttft = result.splice_ms + (time.perf_counter() - t0) * 1000
        device = result.input_ids.device
        streams = [result, *(g for g, _ in result.guides)]

        def step(tok: int, i: int) -> torch.Tensor:
            ids = torch.tensor([[tok]], device=device)
            logits = [run(self.lm.model, ids, cache=r.cache, positions=torch.tensor([[r.input_ids.shape[1] + i]], device=device))
                      for r in streams]
            return _guided(logits[0], [(x, w) for x, (_, w) in zip(logits[1:], result.guides)])

        out = greedy(logits, step, max_new_tokens, eos_ids(self.lm.model, self.lm.tokenizer))
        return out.tokens, ttft


def _guided(logits: torch.Tensor, guides: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """`logits` alone, or the log-softmax of log p + sum(weight * log p_guide) (float32)."""
    if not guides:
        return logits
    out = torch.log_softmax(logits.float(), -1)
    for g, w in guides:
        out = out + w * torch.log_softmax(g.float(), -1)
    return torch.log_softmax(out, -1)

