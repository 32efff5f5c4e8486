"""The drift a repair carries (runtime/drift.py): what moves, what must not, and that it helps on a real model.

A skill after unseen text gets its recomputed tokens' mean K/V change added to its other reused tokens
within its horizon. Nothing else may change: a skill behind its anchor, tokens past the horizon, and
layer 0, whose keys and values depend on a token and its position alone (so the change measured
there is zero)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from skillforge.build import compile_manifests
from skillforge.eval.metrics import kl
from skillforge.manifest import Manifest, discover
from skillforge.model.forward import run
from skillforge.registry import Registry
from skillforge.runtime import Context, Repair, Runtime
from skillforge.store import LocalStore

from tiny_models import build

STILL = Repair(drift=False)


def _runtime(lm, home: Path, manifests: list[Manifest]) -> Runtime:
    registry, store = Registry(), LocalStore(home)
    compile_manifests(lm, manifests, registry, store)
    return Runtime(lm, registry, store, pool_bytes=0)


@pytest.fixture()
def rt(home: Path, demo_tokenizer, skills_dir: Path) -> Runtime:
    manifests = [m for m in discover(skills_dir) if m.name in ("pirate-voice", "json-contract")]
    return _runtime(build("llama", demo_tokenizer), home, manifests)


def _kv(result) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = result.input_ids.shape[1] - 1
    return [(l.keys[0, :, :n], l.values[0, :, :n]) for l in result.cache.layers]


def _changed(a, b) -> set[int]:
    """Positions whose K or V differ in any layer above layer 0."""
    out: set[int] = set()
    for (ka, va), (kb, vb) in list(zip(a, b))[1:]:
        diff = (ka - kb).abs().amax(dim=(0, 2)) + (va - vb).abs().amax(dim=(0, 2))
        out |= set(diff.nonzero().flatten().tolist())
    return out


def test_the_drift_moves_only_the_unrepaired_tokens_of_skills_after_unseen_text_within_the_horizon(rt: Runtime):
    ctx = Context(skills=["json-contract", "pirate-voice"], user="Ahoy?")
    horizon = Repair(blend=0.05, blend_horizon=64, horizon_per_unseen=0.0)  # the second skill's first 64 tokens
    moved, still = rt.splice(ctx, repair=horizon), rt.splice(ctx, repair=replace(horizon, drift=False))
    first, second = [sorted(moved.prompt.tokens_within(s, e)) for s, e in moved.prompt.skill_spans]
    computed = set(moved.computed_positions.tolist())
    assert computed == set(still.computed_positions.tolist())  # the same repair set
    reach = set(second[:64])
    assert moved.drifted == len(reach - computed) > 0 and still.drifted == 0
    changed = _changed(_kv(moved), _kv(still))
    # the moved tokens and those computed after them; never the exact first skill nor past the horizon
    assert reach - computed <= changed and not changed & set(first) and not changed & (set(second[64:]) - computed)
    for (km, vm), (ks, vs) in zip(_kv(moved)[:1], _kv(still)[:1]):  # layer 0: nothing to carry
        torch.testing.assert_close(km, ks, rtol=0, atol=1e-5)
        torch.testing.assert_close(vm, vs, rtol=0, atol=1e-5)


def test_a_skill_behind_its_anchor_drifts_nothing(rt: Runtime):
    ctx = Context(skills=["pirate-voice"], user="Ahoy?")
    result, still = rt.splice(ctx), rt.splice(ctx, repair=STILL)
    assert result.drifted == 0 and torch.equal(result.logits, still.logits)


SKILLS = {
    "returns": "# Returns\n\nItems can be returned within 30 days of delivery with the receipt. Opened software, gift cards "
               "and custom-cut fabric cannot be returned. Refunds go back to the original payment method within 5 "
               "business days of the item reaching the warehouse; store credit is issued the same day. A damaged "
               "item is replaced free of charge if reported within 48 hours, with a photo of the damage.\n",
    "lockers": "## Locker API\n\n```\nGET /lockers?near=<postcode>   -> [{id, address, free_slots}]\n"
               "POST /lockers/<id>/reserve {parcel_id}   -> {code, expires_at}\n```\n\nA reservation holds a slot for "
               "24 hours. Codes are six digits and single use. A parcel over 20 kg or 60 cm on any side cannot go "
               "to a locker; offer home delivery instead.\n",
    "tone": "Style: answer in plain words, at most three sentences. Start with the answer, then the reason. Never "
            "promise dates the policy does not give. If the customer is upset, acknowledge it once, briefly, and move on "
            "to what you can do. Sign off with the shop's name, Hartley & Sons.\n",
}


def test_the_drift_brings_compositions_closer_to_a_full_prefill_on_the_demo_model(demo_lm, home: Path):
    """Skills and contexts written for this test (not the eval corpus): two and three skills after a
    system text. The drift must lower their summed KL from a full prefill (on skills this short the repair
    already recomputes a third of their tokens; measured 0.0076 -> 0.0067)."""
    rt = _runtime(demo_lm, home, [Manifest.from_dict({"name": n, "version": "1.0.0", "template": t}, source=f"test:{n}")
                                  for n, t in SKILLS.items()])
    contexts = [
        Context(skills=["returns", "tone"], system="You work the help desk of a hardware shop.",
                user="I bought a drill 20 days ago and it is broken. Can I get my money back?"),
        Context(skills=["lockers", "returns"], system="Answer briefly.", user="Can my 25 kg parcel go to a locker?"),
        Context(skills=["tone", "lockers", "returns"], system="Be kind.", user="My locker code does not work!"),
    ]
    with_drift, without = [], []
    for ctx in contexts:
        moved, still = rt.splice(ctx), rt.splice(ctx, repair=STILL)
        full = run(demo_lm.model, moved.input_ids)
        assert moved.drifted > 0 and moved.prompt.ids == still.prompt.ids
        with_drift.append(kl(full, moved.logits))
        without.append(kl(full, still.logits))
    assert sum(with_drift) < sum(without), (with_drift, without)
