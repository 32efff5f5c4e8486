"""Splice a compiled skill into a new context, answer, and compare with a full prefill of the same prompt."""

from __future__ import annotations

import argparse
import time

import torch

from skillforge import config
from skillforge.model import load_model
from skillforge.model.forward import new_cache, run
from skillforge.registry import Registry
from skillforge.runtime import Context, Runtime
from skillforge.store import open_store


@torch.no_grad()
def full_prefill_answer(lm, ids: list[int], max_new_tokens: int) -> tuple[str, float]:
    """The baseline a plain transformers user runs: prefill the whole prompt, then decode greedily. Its
    answer comes from transformers' own `generate`, on purpose: an independent check of the splice's."""
    t0 = time.perf_counter()
    run(lm.model, torch.tensor([ids]), cache=new_cache())
    ttft = (time.perf_counter() - t0) * 1000
    generated = lm.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return lm.tokenizer.decode(generated[0, len(ids):], skip_special_tokens=True), ttft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skill", default="sql-tools")
    ap.add_argument("--system", default="", help="system text before the skill (the skill then needs repair)")
    ap.add_argument("--user", default="Which tool call lists the tables in the sales schema? Reply with the JSON call only.")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    lm = load_model("smollm2-135m")
    rt = Runtime(lm, Registry(config.db_url()), open_store(config.store_url()))
    ctx = Context(skills=[args.skill], system=args.system, user=args.user)
    rt.splice(ctx)  # warm: first use reads and verifies the artifact, then keeps it in memory
    result = rt.splice(ctx, extra_capacity=args.max_new_tokens + 1)
    tokens, ttft_splice = rt.generate(result, args.max_new_tokens)
    spliced = lm.tokenizer.decode(tokens, skip_special_tokens=True)
    full, ttft_full = full_prefill_answer(lm, result.prompt.ids, args.max_new_tokens)

    print(f"skill      {args.skill} ({result.skill_tokens} tokens) in a {len(result.prompt.ids)}-token prompt")
    print(f"user       {args.user}")
    print(f"answer     {spliced.strip()}")
    print(f"full       {'identical' if full == spliced else 'differs: ' + full.strip()}")
    print(f"reused     {result.reused} tokens, computed {result.computed} ({result.repaired} of them repair)")
    print(f"TTFT       splice {ttft_splice:.0f} ms vs full prefill {ttft_full:.0f} ms: {ttft_full / ttft_splice:.1f}x faster")


if __name__ == "__main__":
    main()
