"""Decoding from a splice: the first step's logits (already computed by the splice), a one-token step
over one stream or, for the contrast edit mode, over the guided streams at once (`Decoder`, which the
server drives token by token), and greedy generation built on that step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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


@dataclass
class Stream:
    """One cache being decoded: its prompt length (the first new token's position) and its weight in
    the guided sum (1 for the request's own cache; contrast edits add guide streams, runtime/edits.py)."""

    cache: Any
    prompt_len: int
    weight: float = 1.0


def streams_of(result: SpliceResult) -> list[Stream]:
    """A splice's own cache, then its guide streams with their weights."""
    return [Stream(result.cache, result.input_ids.shape[1]),
            *(Stream(g.cache, g.input_ids.shape[1], w) for g, w in result.guides)]


class Decoder:
    """Steps a request's streams one token at a time. `logits` holds the next token's distribution."""

    def __init__(self, model: Any, streams: list[Stream], first: torch.Tensor):
        """`first`: the distribution after the prompt (next_logits, guides already applied)."""
        self.model = model
        self.streams = streams
        self.logits = first
        self.step = 0

    @torch.no_grad()
    def advance(self, token: int) -> None:
        """Feed `token` to every stream; `logits` becomes the distribution of the token after it."""
        device = self.model.device
        ids = torch.tensor([[token]], device=device)
        outs = [run(self.model, ids, cache=s.cache, positions=torch.tensor([[s.prompt_len + self.step]], device=device))
                for s in self.streams]
        self.step += 1
        self.logits = guided(outs[0], [(x, s.weight) for x, s in zip(outs[1:], self.streams[1:])])


@torch.no_grad()
def generate(lm: LoadedModel, result: SpliceResult, max_new_tokens: int = 64) -> tuple[list[int], float]:
    """Greedy decoding from a splice -> (new token ids, time to first token in ms incl. the splice)."""
    t0 = time.perf_counter()
    logits = next_logits(result)
    ttft = result.splice_ms + (time.perf_counter() - t0) * 1000
    decoder = Decoder(lm.model, streams_of(result), logits)

    def step(tok: int, i: int) -> torch.Tensor:
        decoder.advance(tok)
        return decoder.logits

    return greedy(logits, step, max_new_tokens, eos_ids(lm.model, lm.tokenizer)).tokens, ttft


def guided(logits: torch.Tensor, guides: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """`logits` alone, or the log-softmax of log p + sum(weight * log p_guide) (float32)."""
    if not guides:
        return logits
    out = torch.log_softmax(logits.float(), -1)
    for g, w in guides:
        out = out + w * torch.log_softmax(g.float(), -1)
    return torch.log_softmax(out, -1)
