"""Runtime behaviour around the splice: artifact resolution, the hot cache, limits, raw prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skillforge.build import compile_manifests
from skillforge.errors import BadInput, BadReference, ContextTooLong, CorruptBlob, NotFound
from skillforge.manifest import discover
from skillforge.registry import Registry
from skillforge.runtime import Context, Repair, Runtime
from skillforge.runtime.hotcache import HotCache
from skillforge.prompt import align
from skillforge.store import LocalStore

from tiny_models import build


class CountingStore(LocalStore):
    """A local store that counts artifact reads, to see whether a splice touched the disk."""

    reads = 0

    def local_path(self, digest: str) -> Path:
        type(self).reads += 1
        return super().local_path(digest)


@pytest.fixture()
def compiled(home: Path, demo_tokenizer, skills_dir: Path):
    lm = build("llama", demo_tokenizer)
    registry, store = Registry(), CountingStore(home)
    manifests = [m for m in discover(skills_dir) if m.name in ("pirate-voice", "json-contract")]
    compile_manifests(lm, manifests, registry, store)
    CountingStore.reads = 0
    return lm, registry, store


def test_repeated_splices_are_served_from_memory(compiled):
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store)
    ctx = Context(skills=["pirate-voice", "json-contract@1.0.0"], system="Be brief.", user="Hello?")
    first = rt.splice(ctx)
    assert CountingStore.reads == 2
    second = rt.splice(ctx)
    assert CountingStore.reads == 2 and rt.hot.hits == 2
    assert second.prompt.ids == first.prompt.ids
    assert torch.equal(rt.next_logits(first), rt.next_logits(second))


def test_hot_cache_is_bounded_by_bytes():
    cache = HotCache(max_bytes=100)
    cache.put("a", 1, 60)
    cache.put("b", 2, 30)
    assert cache.get("a") == 1  # a becomes most recent
    cache.put("c", 3, 30)  # evicts b, the least recently used
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and cache.bytes == 90
    cache.put("huge", 4, 1000)
    assert "huge" not in cache


def test_memory_settings_are_read_when_a_runtime_is_made(demo_tokenizer, monkeypatch: pytest.MonkeyPatch):
    lm = build("llama", demo_tokenizer)
    monkeypatch.setenv("SKILLFORGE_HOT_CACHE_BYTES", "12345")
    monkeypatch.setenv("SKILLFORGE_CACHE_POOL_BYTES", "0")
    rt = Runtime(lm)
    assert rt.hot.max_bytes == 12345 and rt.pool.max_bytes == 0
    assert Runtime(lm, hot_bytes=7).hot.max_bytes == 7  # an argument wins over the setting
    monkeypatch.setenv("SKILLFORGE_HOT_CACHE_BYTES", "2GB")
    with pytest.raises(BadInput, match="SKILLFORGE_HOT_CACHE_BYTES='2GB' is not a byte count"):
        Runtime(lm)


def test_tampered_artifact_is_refused_on_load(compiled, home: Path):
    lm, registry, store = compiled
    row = registry.find_artifact("pirate-voice", lm.fingerprint.digest)
    blob = home / "blobs" / "sha256" / row.digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptBlob, match=row.digest.removeprefix("sha256:")[:12]):
        Runtime(lm, registry, store).splice(Context(skills=["pirate-voice"], user="Hi"))


def test_unknown_skill_names_what_exists(compiled):
    lm, registry, store = compiled
    with pytest.raises(NotFound, match="skillforge compile"):
        Runtime(lm, registry, store).splice(Context(skills=["nope"], user="Hi"))


def test_prompt_longer_than_the_model_allows_is_refused(compiled):
    lm, registry, store = compiled
    with pytest.raises(ContextTooLong, match="allows"):
        Runtime(lm, registry, store).splice(Context(skills=["pirate-voice"], user="word " * (lm.max_positions + 10)))


def test_raw_prompt_has_no_template_and_matches_plain_tokenization(compiled):
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store, repair=Repair(seam=10_000, blend=0))
    result = rt.splice(Context(skills=["pirate-voice"], system="Notes:", user="Q: hi", raw=True))
    text = result.prompt.text
    assert "<|im_start|>" not in text and text.startswith("Notes:\n\n") and text.endswith("\n\nQ: hi")
    assert result.prompt.ids == lm.tokenizer(text)["input_ids"]
    with torch.no_grad():
        full = lm.model(input_ids=result.input_ids, logits_to_keep=1).logits[0, -1]
    assert (rt.next_logits(result) - full).abs().max() < 1e-4  # everything recomputed: exact


def test_resolve_prefers_the_artifact_compiled_behind_the_contexts_own_anchor(compiled, skills_dir: Path):
    lm, registry, store = compiled
    pirate = [m for m in discover(skills_dir) if m.name == "pirate-voice"]
    compile_manifests(lm, pirate, registry, store, anchor="none")  # newer than the template-anchored one
    rt = Runtime(lm, registry, store)
    chat, raw = rt.resolve("pirate-voice"), rt.resolve("pirate-voice", raw=True)
    assert chat.digest != raw.digest and raw.meta.anchor_ids == [] and chat.meta.anchor_ids
    # a chat splice behind the template anchor it was compiled behind is exact: no token repaired
    assert rt.splice(Context(skills=["pirate-voice"], user="Ahoy?")).repaired == 0


def test_a_skill_compiled_behind_the_contexts_system_text_splices_exactly(compiled, skills_dir: Path):
    lm, registry, store = compiled
    system = "You are the support desk of Northwind. Be brief."
    pirate = [m for m in discover(skills_dir) if m.name == "pirate-voice"]
    compile_manifests(lm, pirate, registry, store, system=system)
    rt = Runtime(lm, registry, store)
    ctx = Context(skills=["pirate-voice"], system=system, user="Ahoy?")
    behind = rt.resolve("pirate-voice", system=system)
    template_digest = rt.resolve("pirate-voice").digest
    assert behind.digest != template_digest and len(behind.meta.anchor_ids) > len(rt.resolve("pirate-voice").meta.anchor_ids)
    assert rt.resolve("pirate-voice", system="Other text.").digest == template_digest  # other system texts: the template one
    result = rt.splice(ctx)
    assert result.artifacts == [behind.digest] and result.repaired == 0  # nothing unseen: no repair
    with torch.no_grad():
        full = lm.model(input_ids=result.input_ids, logits_to_keep=1).logits[0, -1].float()
    torch.testing.assert_close(rt.next_logits(result), full, rtol=0, atol=1e-4)
    # the template-anchored artifact in the same context misses the system text: repaired, and not exact
    template = rt.splice(ctx, skills=[rt.resolve("pirate-voice")])
    assert template.repaired > 0
    # behind another skill, only what follows the system text is unseen, so it is repaired again
    assert rt.splice(Context(skills=["json-contract", "pirate-voice"], system=system, user="Ahoy?")).repaired > 0


def test_compiling_behind_a_system_text_needs_the_template_anchor(compiled, skills_dir: Path):
    lm, registry, store = compiled
    pirate = [m for m in discover(skills_dir) if m.name == "pirate-voice"]
    with pytest.raises(BadReference, match="template anchor"):
        compile_manifests(lm, pirate, registry, store, anchor="none", system="Be brief.")


def test_align_reuses_around_a_changed_token():
    blocks = align([1, 2, 3, 4, 5, 6], [1, 2, 9, 9, 4, 5, 6])
    assert [(b.art_start, b.ctx_start, b.length) for b in blocks] == [(0, 0, 2), (3, 4, 3)]
    assert align([1, 2], [1, 2])[0].length == 2 and align([], [3]) == []


def test_released_cache_is_reused_by_the_next_splice(compiled):
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store)
    ctx = Context(skills=["pirate-voice"], system="Be brief.", user="Hello?")
    first = rt.splice(ctx)
    expected = rt.next_logits(first).clone()
    buffers = [l.keys.data_ptr() for l in first.cache.layers]
    rt.release(first)
    assert first.cache is None and len(rt.pool.caches) == 1
    second = rt.splice(ctx)  # same size: takes the released memory
    assert [l.keys.data_ptr() for l in second.cache.layers] == buffers and not rt.pool.caches
    assert torch.equal(rt.next_logits(second), expected)
    longer = rt.splice(Context(skills=["pirate-voice", "json-contract"], system="Be brief.", user="Hello?"))
    assert [l.keys.data_ptr() for l in longer.cache.layers] != buffers  # too small to reuse: fresh memory


def test_cache_pool_is_bounded_by_bytes(compiled):
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store, pool_bytes=1)
    result = rt.splice(Context(skills=["pirate-voice"], user="Hello?"))
    rt.release(result)
    assert rt.pool.caches == []  # larger than the pool: dropped, not kept


def test_repair_refuses_an_unknown_blend_selection():
    with pytest.raises(BadReference, match="deviation, attention or both"):
        Repair(select="attn")


@pytest.mark.parametrize("spec, seam, expected", [
    (None, None, Repair()),
    ("auto", 8, Repair(seam=8)),
    ("auto:0.3", None, Repair(blend=0.3)),  # only the share moves
    ("seam", None, Repair(blend=0.0, drift=False)),  # the research's seam repair, nothing carried
    ("none", None, Repair(seam=0, blend=0.0, drift=False)),
    ("blend:0.2", None, Repair(seam=0, blend=0.2, blend_per_unseen=float("inf"), blend_horizon=0, min_blend=1, select="deviation",
                               drift=False)),
])
def test_repair_spec_parses(spec, seam, expected):
    assert Repair.parse(seam, spec) == expected


@pytest.mark.parametrize("spec", ["auto:1.5", "auto:x", "blend:-0.1", "seam:3", "cacheblend"])
def test_bad_repair_spec_is_refused_with_the_choices(spec):
    with pytest.raises(BadReference, match="invalid --repair") as err:
        Repair.parse(None, spec)
    assert spec in str(err.value)


def test_multi_turn_history_is_computed_after_the_skills_and_matches_a_full_prefill(compiled):
    """Earlier user/assistant turns sit between the skills and the last user turn, tokenized exactly as
    apply_chat_template does; the skill behind its anchor stays reused and the splice stays exact."""
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store)
    history = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Arr, ahoy matey!"}]
    result = rt.splice(Context(skills=["pirate-voice"], history=history, user="And what now?"))
    messages = [{"role": "system", "content": result.prompt.text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>")[0]},
                *history, {"role": "user", "content": "And what now?"}]
    ids = lm.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert result.prompt.ids == ids
    skill_end = max(result.prompt.tokens_within(*result.prompt.skill_spans[0]))
    assert "Arr, ahoy matey!" in result.prompt.text[result.prompt.offsets[skill_end][1]:]
    skill_start = min(result.prompt.tokens_within(*result.prompt.skill_spans[0]))
    # the template's prefix and everything after the skill are computed; the skill itself is reused whole
    expected = [*range(skill_start), *range(skill_end + 1, len(ids))]
    assert result.computed_positions.tolist() == expected and result.repaired == 0
    with torch.no_grad():
        full = lm.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
    assert torch.allclose(rt.next_logits(result), full, atol=1e-4)


def test_history_turns_must_be_user_or_assistant_messages(compiled):
    lm, registry, store = compiled
    rt = Runtime(lm, registry, store)
    with pytest.raises(BadInput, match="history turn 0"):
        rt.splice(Context(skills=["pirate-voice"], history=[{"role": "system", "content": "x"}], user="Hi"))
