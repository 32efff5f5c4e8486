"""What the server adds to the runtime's one-token step (runtime/decode.py's `Decoder`, the same step
Runtime.generate takes, so a greedy request's tokens equal the Python API's): sampling with a seed of
the request's own, and stop strings held back until they can no longer match.
"""

from __future__ import annotations

from typing import Any

import torch


class Sampler:
    """Temperature 0 is greedy (argmax, as Runtime.generate); above it, nucleus sampling with a
    generator of the request's own, so a seed reproduces an answer whatever else the server runs."""

    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device):
        self.temperature = temperature
        self.top_p = top_p
        self.generator: torch.Generator | None = None
        if temperature > 0:
            self.generator = torch.Generator(device=device)
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.temperature, -1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # the smallest set whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter_(-1, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))


class StopText:
    """Token ids -> text deltas safe to send: text that may still become a stop string, or an
    incomplete UTF-8 character, is held back. The stop string itself is never sent (as OpenAI)."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """The new text that `token` makes safe to send; sets `stopped` when a stop string appeared."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        hold = int(self.text.endswith("\ufffd"))  # a character whose bytes are not all decoded yet
        for s in self.stops:  # the longest tail that a stop string may still complete
            hold = max([hold, *(k for k in range(1, len(s)) if self.text.endswith(s[:k]))])
        return self._send(len(self.text) - hold)

    def flush(self) -> str:
        """What is held back, once the answer is over without a stop string."""
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : upto], upto
        return out
