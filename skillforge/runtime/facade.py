"""Runtime: the one object a caller holds to splice compiled skills into new contexts and decode.

    rt = Runtime(load_model("smollm2-135m"), registry, store)
    result = rt.splice(Context(skills=["refund-desk"], system="...", user="..."))
    out = lm.model.generate(result.input_ids, past_key_values=result.cache, max_new_tokens=64)

It puts the runtime's parts together and holds their state for one model: artifact lookup through
the hot cache (runtime/lookup.py), field edits (edits.py) and the policies that combine splices
(policies.py), the splice core that assembles the cache (splice.py) with the pool of released caches,
and decoding (decode.py). Reuse one Runtime per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from skillforge import config
from skillforge.artifact import anchor_digest
from skillforge.model.loader import LoadedModel
from skillforge.prompt import Prompt, build_prompt
from skillforge.refs import SkillRef
from skillforge.runtime import decode
from skillforge.runtime.cache import CachePool, SpliceCache
from skillforge.runtime.edits import DEFAULT_ERRATUM, EditPlan, check_erratum_template, count_edit_tokens, plan_edits
from skillforge.runtime.hotcache import HotCache
from skillforge.runtime.lookup import ArtifactLookup, check_fingerprint
from skillforge.runtime.policies import splice_auto, splice_contrast
from skillforge.runtime.repair import Repair
from skillforge.runtime.splice import Missed, Resolved, SpliceResult, Splicer


@dataclass
class Context:
    """What the prompt is made of (the layout contract is in skillforge/prompt.py)."""

    skills: list[str] = field(default_factory=list)
    system: str = ""
    user: str = ""
    raw: bool = False
    set: dict[str, str] = field(default_factory=dict)  # "skill.field" -> value
    # earlier turns between the skills and `user`: [{"role": "user" | "assistant", "content": ...}, ...]
    history: list[dict[str, str]] = field(default_factory=list)


class Runtime:
    """Splices artifacts for one loaded model. `hot_bytes` and `pool_bytes` default to the settings
    SKILLFORGE_HOT_CACHE_BYTES and SKILLFORGE_CACHE_POOL_BYTES (skillforge/config.py)."""

    def __init__(self, lm: LoadedModel, registry: Any = None, store: Any = None, hot_bytes: int | None = None,
                 pool_bytes: int | None = None, repair: Repair | None = None, erratum: str | None = None):
        self.lm = lm
        self.registry = registry
        self.store = store
        self.hot = HotCache(config.hot_cache_bytes() if hot_bytes is None else hot_bytes)
        self.pool = CachePool(config.cache_pool_bytes() if pool_bytes is None else pool_bytes)
        self.repair = repair or Repair()
        self.erratum = check_erratum_template(erratum or DEFAULT_ERRATUM)  # wording of the override line for edits
        self.core = Splicer(lm, self.pool)  # refuses models whose keys cannot be moved
        self.rope = self.core.rope
        self.lookup = ArtifactLookup(lm, registry, store, self.hot, self.core.layer_shapes)

    def resolve(self, ref: str, raw: bool = False, system: str = "") -> Resolved:
        """`name`, `name@version` or `name@sha256:...` -> artifact for this model (see runtime/lookup.py)."""
        return self.lookup.resolve(ref, raw, system)

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(kv_heads, key_dim, value_dim) per layer."""
        return self.core.layer_shapes()

    @torch.no_grad()
    def splice(self, context: Context, skills: list[Resolved] | None = None, repair: Repair | None = None,
               edit_mode: str = "field+erratum", rotate: bool = True, extra_capacity: int = 256) -> SpliceResult:
        """Assemble the cache for `context`. `skills` overrides resolution (already loaded artifacts)."""
        t0 = time.perf_counter()
        repair = repair or self.repair
        resolved = skills if skills is not None else [self.resolve(s, context.raw, context.system) for s in context.skills]
        if edit_mode == "auto" and context.set:
            return splice_auto(self.splice, context, resolved, repair, rotate, extra_capacity, t0)
        if edit_mode == "contrast" and context.set:
            return splice_contrast(self.splice, context, resolved, repair, rotate, extra_capacity, t0)
        for r in resolved:
            check_fingerprint(r.meta, self.lm, r.digest or "artifact")
        edit = plan_edits(self.lm, resolved, context.set, edit_mode, self.erratum)
        prompt = build_prompt(self.lm.tokenizer, context.system, edit.texts, context.user, context.raw, edit.errata,
                              context.history)
        missed = self._exact_variants(context.skills, resolved, edit, prompt) if skills is None else []
        result, uncovered = self.core.assemble(prompt, edit.skills, repair, rotate, extra_capacity)
        result.missed = missed
        result.edits = count_edit_tokens(edit, prompt, uncovered)
        result.splice_ms = (time.perf_counter() - t0) * 1000
        return result

    def _exact_variants(self, refs: list[str], resolved: list[Resolved], edit: EditPlan, prompt: Prompt) -> list[Missed]:
        """Put in, for every skill the prompt holds as compiled (no edit) and not pinned to a digest, the
        variant compiled behind exactly the tokens before it where the registry has one (lookup.behind).
        -> the skills still spliced behind other tokens than precede them."""
        missed = []
        for i, (ref, r, (start, _)) in enumerate(zip(refs, resolved, prompt.skill_spans)):
            if edit.skills[i] is not r or edit.texts[i] != r.meta.text or SkillRef.parse(ref).digest is not None:
                continue
            before = prompt.ids_before(start)
            if r.meta.anchor_ids == before:
                continue
            digest = anchor_digest(before)
            edit.skills[i] = self.lookup.behind(r, before, digest)
            if edit.skills[i].meta.anchor_ids != before:
                missed.append(Missed(edit.skills[i].meta, before, digest))
        return missed

    def compute(self, cache: SpliceCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Forward the tokens at sorted `positions` against `cache` (see Splicer.compute)."""
        return self.core.compute(cache, ids, positions)

    def next_logits(self, result: SpliceResult) -> torch.Tensor:
        """Logits [vocab] (float32) after the whole prompt (see runtime/decode.py)."""
        return decode.next_logits(result)

    def release(self, result: SpliceResult) -> None:
        """Hand a finished result's caches back for the next splice to reuse (their memory is already
        mapped). The result, and anything still pointing into its caches, must not be used afterwards."""
        for g, _ in result.guides:
            self.release(g)
        if result.cache is not None:
            self.pool.put(result.cache)
            result.cache = None

    def generate(self, result: SpliceResult, max_new_tokens: int = 64) -> tuple[list[int], float]:
        """Greedy decoding from a splice -> (new token ids, time to first token in ms incl. the splice)."""
        return decode.generate(self.lm, result, max_new_tokens)
