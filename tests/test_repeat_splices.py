"""What a repeated splice may skip, and what it may not.

A pooled cache that already holds a skill's blocks is reused without rewriting them, and every splice
into it equals a splice into fresh memory, whatever ran in it before (decoding, other layouts, edits).
An artifact's values are checked finite once per digest and process; its bytes are still checked
against the digest on every read from the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skillforge import artifact
from skillforge.build import compile_manifests
from skillforge.errors import CorruptBlob
from skillforge.manifest import discover
from skillforge.registry import Registry
from skillforge.runtime import Context, Repair, Runtime
from skillforge.runtime.splice import Splicer
from skillforge.store import LocalStore

from tiny_models import build


@pytest.fixture()
def rt(home: Path, demo_tokenizer, skills_dir: Path) -> Runtime:
    lm = build("llama", demo_tokenizer)
    registry, store = Registry(), LocalStore(home)
    manifests = [m for m in discover(skills_dir) if m.name in ("pirate-voice", "refund-desk")]
    compile_manifests(lm, manifests, registry, store)
    return Runtime(lm, registry, store)


def fresh(rt: Runtime, ctx: Context, **kw) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """KV of every prompt token but the last, and the first logits, spliced into new memory."""
    other = Runtime(rt.lm, rt.registry, rt.store, pool_bytes=0)
    return snapshot(other.splice(ctx, **kw))


def snapshot(result) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    n = result.input_ids.shape[1] - 1
    kv = [(l.keys[0, :, :n].clone(), l.values[0, :, :n].clone()) for l in result.cache.layers]
    return kv, result.logits.clone()


def assert_same(got, expected) -> None:
    (kv, logits), (kv_e, logits_e) = got, expected
    assert len(kv) == len(kv_e)
    for (k, v), (ke, ve) in zip(kv, kv_e):
        assert torch.equal(k, ke) and torch.equal(v, ve)
    assert torch.equal(logits, logits_e)


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tokens written per _write_block call (slots given: their count, else the block length)."""
    calls: list[int] = []
    original = Splicer._write_block

    def counting(self, cache, kv, src0, a, c, n, rotate, slots=None):
        calls.append(n if slots is None else slots.numel())
        return original(self, cache, kv, src0, a, c, n, rotate, slots=slots)

    monkeypatch.setattr(Splicer, "_write_block", counting)
    return calls


def test_a_repeated_splice_rewrites_only_the_slots_computed_since(rt: Runtime, monkeypatch: pytest.MonkeyPatch):
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    expected = fresh(rt, ctx)
    first = rt.splice(ctx)
    rt.generate(first, 4)  # decoding appends after the prompt
    rt.release(first)
    writes = count_writes(monkeypatch)
    second = rt.splice(ctx)
    assert_same(snapshot(second), expected)
    # only the seam and repaired slots and those the drift moved (within the horizon), not the whole skill
    assert second.repaired and second.drifted
    assert sum(writes) == second.repaired + second.drifted < second.skill_tokens


def test_without_drift_a_repeated_splice_rewrites_only_the_computed_slots(rt: Runtime, monkeypatch: pytest.MonkeyPatch):
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    still = Repair(drift=False)
    expected = fresh(rt, ctx, repair=still)
    rt.release(rt.splice(ctx, repair=still))
    writes = count_writes(monkeypatch)
    second = rt.splice(ctx, repair=still)
    assert_same(snapshot(second), expected)
    assert second.drifted == 0 and writes and sum(writes) == second.repaired < second.skill_tokens / 2


def test_after_the_pool_forgets_a_splice_rewrites_the_whole_skill(rt: Runtime, monkeypatch: pytest.MonkeyPatch):
    """The bench's new-layout arm: the pooled memory is reused, nothing in it is trusted."""
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    expected = fresh(rt, ctx)
    rt.release(rt.splice(ctx))
    rt.pool.forget()
    writes = count_writes(monkeypatch)
    again = rt.splice(ctx)
    assert_same(snapshot(again), expected)
    assert sum(writes) == again.skill_tokens


@pytest.mark.parametrize("between", [
    Context(skills=["refund-desk"], system="A much longer system text, so the skill moves to other slots.", user="Hi"),
    Context(skills=["pirate-voice"], system="Be brief.", user="Hello?"),
    Context(skills=["refund-desk"], system="Be brief.", user="Hello?", set={"refund-desk.refund_window_days": "45"}),
    Context(skills=["refund-desk"], system="Be brief.", user="Hello?", raw=True),
])
def test_a_splice_after_another_layout_equals_a_fresh_one(rt: Runtime, between: Context):
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    expected = fresh(rt, ctx)
    rt.release(rt.splice(ctx))
    other = rt.splice(between)
    rt.generate(other, 3)
    rt.release(other)
    assert_same(snapshot(rt.splice(ctx)), expected)


def test_after_an_in_place_edit_only_the_field_and_computed_slots_are_rewritten(rt: Runtime, monkeypatch: pytest.MonkeyPatch):
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    still = Repair(drift=False)  # the drift's moved slots are rewritten too (the test above)
    expected = fresh(rt, ctx, repair=still)
    edited = rt.splice(Context(skills=["refund-desk"], system="Be brief.", user="Hello?",
                               set={"refund-desk.account_role": "suspended_user"}), edit_mode="in-place", repair=still)
    rt.release(edited)
    writes = count_writes(monkeypatch)
    again = rt.splice(ctx, repair=still)
    assert_same(snapshot(again), expected)
    assert 0 < sum(writes) < again.skill_tokens / 2  # the field's slots and the repaired ones, not the skill


def test_without_rotation_blocks_are_not_mistaken_for_rotated_ones(rt: Runtime):
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    expected = fresh(rt, ctx)
    rt.release(rt.splice(ctx, rotate=False))
    assert_same(snapshot(rt.splice(ctx)), expected)


def test_values_are_checked_once_per_digest_but_bytes_on_every_read(rt: Runtime, home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    checks: list[bool] = []
    original = artifact.load

    def recording(*args, **kw):
        checks.append(kw.get("check_values", True))
        return original(*args, **kw)

    monkeypatch.setattr(artifact, "load", recording)
    ctx = Context(skills=["refund-desk"], system="Be brief.", user="Hello?")
    for _ in range(2):
        rt.hot.clear()
        rt.release(rt.splice(ctx))
    assert checks == [True, False]
    # tamper with every blob: the bytes no longer match their digest, remembered values or not
    blobs = [p for p in (home / "blobs").rglob("*") if p.is_file()]
    for p in blobs:
        data = bytearray(p.read_bytes())
        data[-1] ^= 1
        p.write_bytes(bytes(data))
    rt.hot.clear()
    with pytest.raises(CorruptBlob):
        rt.splice(ctx)
