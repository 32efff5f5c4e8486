"""How far each skill token's state moves when other text precedes the skill.

compile records it in every artifact, the repair ranks the tokens to recompute by it
(runtime/repair.py), and an edit that re-prefills a skill records it again (runtime/edits.py); it
lives below both because compile and the runtime never import each other. The tokens that move most
are the ends of code blocks, paragraph breaks and sentence ends, which gather their section like
attention sinks.

Two kinds (`compile --sensitivity`, `prefill_recorded`):
  measured  (default) the relative distance of each token's keys and values between the compile's
            prefill and a second prefill behind SENSITIVITY_LEAD, summed over layers: compile at ~2x
            one forward.
  estimate  from the compile's own forward (prefill_with_sensitivity): at every layer the attention
            share the lead's tokens would take from each token and how far their values lie from
            what it reads, relative to its residual stream: compile at ~1.06x one forward. First
            order, so it misses what reaches a token through other moved tokens (list markers and
            section heads deep in a skill that read its first tokens): over 30 skills it ranks
            tokens like the measured kind with Spearman 0.86 on the demo model and 0.76 on
            qwen2.5-coder-0.5b (the measured kind from the first two layers alone: 0.73 / 0.59),
            but on 19 dev lone-system contexts qwen2.5-coder-0.5b's KL rose from 0.0063 to 0.0149
            (worse in 14); compositions came out about even (README, fidelity section).
The two are on different scales; a splice that mixes them compares each artifact's to its mean.
"""

from __future__ import annotations

from typing import Any

import torch

from skillforge.model.forward import KV, grouped_scores, prefill, wrapped_attention
from skillforge.model.loader import LoadedModel
from skillforge.prompt import has_chat_template, system_anchor
from skillforge.rope import RopeSpec

# the system text whose insertion before a skill sensitivity measures (or estimates); generic on
# purpose (written for this, not taken from any eval set)
SENSITIVITY_LEAD = ("You are a helpful, careful assistant. Answer the user's questions accurately and concisely. "
                    "Use the reference material below when it applies to the user's request.")


def lead_anchor(lm: LoadedModel, text: str, lead: str = SENSITIVITY_LEAD) -> list[int]:
    """The tokens before skill `text` when `lead` is the system text before it (a raw prompt's layout
    on a model without a chat template)."""
    return system_anchor(lm.tokenizer, lead, text, raw=not has_chat_template(lm.tokenizer))


@torch.no_grad()
def kv_behind_lead(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], offset: int,
                   lead: str = SENSITIVITY_LEAD) -> KV:
    """The skill's K/V prefilled behind `lead` (float32), keys rotated to the positions a compile behind
    an anchor of `offset` tokens puts them at, so the two compare token by token."""
    anchor = lead_anchor(lm, text, lead)
    return _prefilled_at(lm, spec, anchor + ids, len(anchor), offset)


def _prefilled_at(lm: LoadedModel, spec: RopeSpec, ids: list[int], start: int, to: int) -> KV:
    """A plain prefill of `ids`, the K/V of its tokens from `start` on (float32), keys rotated so the
    first of them sits at position `to`."""
    src = torch.arange(start, len(ids))
    dst = src - start + to
    out = []
    for layer, (k, v) in enumerate(prefill(lm.model, ids, start=start)):
        cos, sin = spec.angle_delta(layer, src, dst, wide=True)
        out.append((spec.shift(layer, k.float(), cos.to(k.device), sin.to(k.device)), v.float()))
    return out


@torch.no_grad()
def sensitivity(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], offset: int, kv: KV,
                lead: str = SENSITIVITY_LEAD) -> list[float]:
    """Per skill token: the relative distance of its keys and values (averaged over KV heads, summed
    over layers) between `kv`, prefilled behind the anchor at `offset`, and a prefill behind `lead`
    (kv_behind_lead). Rounded to 4 decimals (metadata is JSON)."""
    score = torch.zeros(len(ids))
    for (k, v), (k2, v2) in zip(kv, kv_behind_lead(lm, spec, text, ids, offset, lead)):
        k, v = k.float(), v.float()
        score += ((k - k2).norm(dim=-1) / k.norm(dim=-1).clamp_min(1e-6)).mean(0).cpu()
        score += ((v - v2).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)).mean(0).cpu()
    return [round(x, 4) for x in score.tolist()]


def prefill_recorded(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], anchor: list[int],
                     kind: str) -> tuple[KV, list[float]]:
    """The skill's KV prefilled behind `anchor`, and its sensitivity of `kind` (module docstring)."""
    if kind == "estimate":
        return prefill_with_sensitivity(lm, spec, text, ids, anchor)
    kv = prefill(lm.model, anchor + ids, start=len(anchor))
    return kv, sensitivity(lm, spec, text, ids, len(anchor), kv)


@torch.no_grad()
def prefill_with_sensitivity(lm: LoadedModel, spec: RopeSpec, text: str, ids: list[int], anchor: list[int],
                             lead: str = SENSITIVITY_LEAD) -> tuple[KV, list[float]]:
    """The compile's prefill of `anchor + ids` (the skill's KV, as `prefill` returns it) and, from that
    same forward, each skill token's estimated sensitivity to text inserted before the skill.

    At every layer, from the token's own attention (output and log-sum-exp) and the keys and values
    of `lead`'s tokens (a prefill of the short lead alone), the first-order change that text would
    make: the attention share the lead would take (sigmoid of the two log-sum-exps) times the distance
    from the lead's attention-weighted values to the token's attention output, relative to the norm
    of the residual stream entering the layer; summed over layers."""
    inserted, lead_kv = _inserted_kv(lm, spec, text, anchor, lead)
    n = len(anchor)
    score = torch.zeros(len(ids))
    residual: dict[int, torch.Tensor] = {}

    def wrap(original: Any) -> Any:
        def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kw: Any) -> Any:
            out, lse = _attend(original, module, query, key, value, mask, **kw)
            layer = module.layer_idx
            k, v = lead_kv[layer]
            score.add_(_moved(query[0, :, n:], out[0, n:].transpose(0, 1), lse[0, :, n:], k, v, kw.get("scaling"),
                              kw.get("sliding_window"), inserted) / residual[layer][n:])
            return out, None
        return attention

    hooks = [block.register_forward_pre_hook(_norm_hook(residual, i), with_kwargs=True) for i, block in enumerate(_decoder_layers(lm.model))]
    try:
        with wrapped_attention(lm.model, wrap):
            kv = prefill(lm.model, anchor + ids, start=n)
    finally:
        for hook in hooks:
            hook.remove()
    return kv, [round(x, 6) for x in score.tolist()]


def _decoder_layers(model: Any) -> Any:
    """The model's decoder blocks in order (the module list as long as its layer count: `model.layers`,
    `gpt_neox.layers`, `transformer.h`, ...); block i holds the attention of layer index i."""
    n = model.config.get_text_config().num_hidden_layers
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n)


def _norm_hook(residual: dict[int, torch.Tensor], layer: int) -> Any:
    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        residual[layer] = h[0].float().norm(dim=-1).clamp_min(1e-6).cpu()
    return hook


def _inserted_kv(lm: LoadedModel, spec: RopeSpec, text: str, anchor: list[int], lead: str) -> tuple[int, KV]:
    """How many tokens `lead` inserts before the skill, and their per-layer K/V (float32), keys rotated
    to sit right before the skill's first token (positions len(anchor) - L .. len(anchor) - 1)."""
    ids = lead_anchor(lm, text, lead)
    common = next((i for i, (a, b) in enumerate(zip(ids, anchor)) if a != b), min(len(ids), len(anchor)))
    inserted = len(ids) - common
    key = ("inserted_kv", tuple(ids), common, len(anchor))
    if key not in lm.memo:  # the same for every skill of a compile run (one prefill of ~40 tokens, ~2% of a skill's)
        lm.memo[key] = _prefilled_at(lm, spec, ids, common, len(anchor) - inserted)
    return inserted, lm.memo[key]


def _attend(original: Any, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any,
            **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's attention output [1, N, heads, dim] and each query's log-sum-exp [1, heads, N]. On CPU
    one call of the flash kernel SDPA itself dispatches to gives both (the output bit-identical to
    SDPA's: the artifact is what a plain prefill stores); elsewhere (or with logit soft-capping or
    attention sinks, which the kernel lacks) the model's own attention and the plain log-sum-exp
    computed beside it."""
    groups = query.shape[1] // key.shape[1]
    if query.device.type == "cpu" and not kw.get("softcap") and kw.get("s_aux") is None:
        if mask is not None and mask.dtype == torch.bool:  # the kernel takes an additive mask (as SDPA converts it)
            mask = torch.zeros(mask.shape, dtype=query.dtype).masked_fill_(~mask, -torch.inf)
        k, v = (key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)) if groups > 1 else (key, value)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, k, v, 0.0, mask is None, attn_mask=mask, scale=kw.get("scaling"))[:2]
        return out.transpose(1, 2).contiguous(), lse
    out = original(module, query, key, value, mask, **kw)[0]
    return out, _logsumexp(query, key, mask, kw.get("scaling"))


def _logsumexp(query: torch.Tensor, key: torch.Tensor, mask: Any, scale: float | None) -> torch.Tensor:
    """Each query's log-sum-exp [1, heads, N] of its scaled scores over the keys it attends to (causal
    where `mask` is None; else the boolean or additive mask), a block of 1,024 queries at a time."""
    scale = scale or query.shape[-1] ** -0.5
    n = query.shape[2]
    lse = []
    for start in range(0, n, 1024):
        q = query[0, :, start : start + 1024].float()
        s = grouped_scores(q, key[0].float()) * scale
        if mask is None:
            s = s + torch.full((q.shape[1], key.shape[2]), -torch.inf, device=q.device).triu(start + 1)
        elif mask.dtype == torch.bool:
            s = s.masked_fill(~mask[0, :, start : start + 1024], -torch.inf)
        else:
            s = s + mask[0, :, start : start + 1024]
        lse.append(s.logsumexp(-1))
    return torch.cat(lse, 1)[None]


def _moved(query: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
           window: int | None, inserted: int) -> torch.Tensor:
    """Per query [heads, m, d]: how far inserting the lead's keys `k` / values `v` [kv_heads, L, d] would
    move its attention output `out` [heads, m, d] (norm over heads), given its log-sum-exp `lse` [heads, m]."""
    q = query.float()
    s = grouped_scores(q, k.to(q.device)).mul_(scale or q.shape[-1] ** -0.5)  # [heads, m, L]
    if window:  # a sliding layer: a token farther than the window from a lead token never reads it
        t = torch.arange(q.shape[1], device=q.device)[:, None]
        s = s.masked_fill(t + inserted - torch.arange(inserted, device=q.device)[None] >= window, -torch.inf)
    # the lead's log-sum-exp and softmax from one exponential (a row whose window excludes every lead
    # token sums to 0: its share is 0 and its NaNs are zeroed below)
    top = s.amax(-1, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)
    p = s.sub_(top).exp_()
    total = p.sum(-1)
    share = torch.sigmoid(total.log() + top[..., 0] - lse.float())
    read = grouped_scores(p, v.transpose(1, 2).to(q.device)).div_(total[..., None])  # [heads, m, dv]
    # in place on `read`, the one [heads, m, dv] temporary (these products run at every layer)
    return read.sub_(out).mul_(share[..., None]).square_().sum((0, 2)).sqrt_().nan_to_num_(0.0).cpu()
