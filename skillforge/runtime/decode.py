"""Decoding from a splice: the first step's logits (already computed by the splice) and greedy
generation, over one stream or, for the contrast edit mode, over the guided streams at once."""

from __future__ import annotations

import time

import torch

from skillforge.model.forward import eos_ids, greedy, run
from skillforge.model.loader import LoadedModel
from skillforge.runtime.splice import SpliceResult


def next_logits(result: SpliceResult) -> torch.Tensor:
    """Logits [vocab] (float32) after the whole prompt: the first decoding step, which the splice
    already computed (with guides: the guided log-probabilities). Leaves each cache holding every
    prompt token (crop(-1) undoes that)."""
    for r in (result, *(g for g, _ in result.guides)):
        r.cache.set_length(r.input_ids.shape[1])
    return guided(result.logits, [(g.logits, w) for g, w in result.guides])


@torch.no_grad()
def generate(lm: LoadedModel, result: SpliceResult, max_new_tokens: int = 64) -> tuple[list[int], float]:
    """Greedy decoding from a splice -> (new token ids, time to first token in ms incl. the splice)."""
    t0 = time.perf_counter()
    logits = next_logits(result)
    ttft = result.splice_ms + (time.perf_counter() - t0) * 1000
    device = result.input_ids.device
    streams = [result, *(g for g, _ in result.guides)]

    def step(tok: int, i: int) -> torch.Tensor:
        ids = torch.tensor([[tok]], device=device)
        out = [run(lm.model, ids, cache=r.cache, positions=torch.tensor([[r.input_ids.shape[1] + i]], device=device))
               for r in streams]
        return guided(out[0], [(x, w) for x, (_, w) in zip(out[1:], result.guides)])

    return greedy(logits, step, max_new_tokens, eos_ids(lm.model, lm.tokenizer)).tokens, ttft


def guided(logits: torch.Tensor, guides: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """`logits` alone, or the log-softmax of log p + sum(weight * log p_guide) (float32)."""
    if not guides:
        return logits
    out = torch.log_softmax(logits.float(), -1)
    for g, w in guides:
        out = out + w * torch.log_softmax(g.float(), -1)
    return torch.log_softmax(out, -1)
