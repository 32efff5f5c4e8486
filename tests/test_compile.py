"""Compiler, artifact format and fingerprint: real (tiny and demo) models, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skillforge import artifact, sensitivity
from skillforge.build import compile_manifests
from skillforge.compile import compile_skill
from skillforge.errors import ArtifactMismatch, BadInput, CorruptBlob, UnsupportedModel
from skillforge.manifest import Manifest, discover
from skillforge.model.forward import prefill
from skillforge.model.loader import LoadedModel
from skillforge.prompt import resolve_anchor, template_anchor
from skillforge.registry import Registry
from skillforge.rope import rope_spec
from skillforge.store import LocalStore

from tiny_models import build, build_model

TEXT = ("Refunds are approved only for verified accounts. The current role is {{role}}. "
        "Orders older than thirty days are refused, and every refund above the limit needs a manager. ") * 2


def manifest(template: str = TEXT, version: str = "1.0.0", name: str = "policy") -> Manifest:
    return Manifest.from_dict({"name": name, "version": version, "description": "", "template": template,
                               "fields": {"role": {"default": "verified_admin", "description": "", "label": "The role"}}},
                              source="test")


def test_anchor_is_the_chat_template_prefix(demo_tokenizer):
    ids = template_anchor(demo_tokenizer)
    assert demo_tokenizer.decode(ids) == "<|im_start|>system\n"


def test_an_unknown_anchor_names_the_valid_ones(demo_tokenizer, home: Path, skills_dir: Path):
    with pytest.raises(BadInput, match="unknown anchor 'bogus'; choose one of template, none"):
        resolve_anchor(demo_tokenizer, "bogus")
    # the installed command refuses it with exit 2 before it loads any model (this one does not exist)
    script = Path(sys.executable).parent / "skillforge"
    done = subprocess.run([str(script), "compile", str(skills_dir / "refund-desk"), "--anchor", "bogus", "--model", "/nonexistent"],
                          capture_output=True, text=True, env={**os.environ, "SKILLFORGE_HOME": str(home)}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "BadInput: unknown anchor 'bogus'; choose one of template, none" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([str(script), "compile", str(skills_dir / "refund-desk"), "--sensitivity", "guessed", "--model", "/nonexistent"],
                          capture_output=True, text=True, env={**os.environ, "SKILLFORGE_HOME": str(home)}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "BadInput: unknown sensitivity 'guessed'; choose one of measured, estimate" in done.stderr and "Traceback" not in done.stderr


def test_compiled_kv_equals_a_direct_prefill(demo_tokenizer):
    lm = build("llama", demo_tokenizer)
    m = manifest()
    meta, kv = compile_skill(lm, m)
    ids = meta.anchor_ids + meta.token_ids
    # A longer prefill of the same tokens followed by more text: causal attention means the skill's
    # KV must be the same slice of it.
    extra = demo_tokenizer(" And one more sentence after the skill.", add_special_tokens=False)["input_ids"]
    direct = prefill(lm.model, ids + extra)
    n = len(meta.anchor_ids)
    for (k, v), (dk, dv) in zip(kv, direct):
        torch.testing.assert_close(k, dk[:, n : n + meta.tokens], rtol=0, atol=1e-5)
        torch.testing.assert_close(v, dv[:, n : n + meta.tokens], rtol=0, atol=1e-5)
    assert meta.offset == n and meta.fingerprint == lm.fingerprint.digest


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def test_sensitivity_is_measured_or_estimated_from_the_compile_forward_alone(demo_lm, skills_dir: Path):
    """`--sensitivity estimate` reads it off the compile's one forward: the skill's KV is bit for bit a
    plain prefill's, and the estimate ranks the tokens as the measured sensitivity (a second prefill
    behind the lead) does (Spearman 0.87 for this skill on the demo model); each records its kind."""
    text = discover(skills_dir / "pirate-voice")[0].render().text
    ids = demo_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    anchor = resolve_anchor(demo_lm.tokenizer, "template")
    kv, estimate = sensitivity.prefill_with_sensitivity(demo_lm, rope_spec(demo_lm.model), text, ids, anchor)
    plain = prefill(demo_lm.model, anchor + ids, start=len(anchor))
    assert all(torch.equal(k, pk) and torch.equal(v, pv) for (k, v), (pk, pv) in zip(kv, plain))
    measured = torch.tensor(sensitivity.sensitivity(demo_lm, rope_spec(demo_lm.model), text, ids, len(anchor), kv))
    assert len(estimate) == len(ids) and min(estimate) >= 0
    rho = torch.corrcoef(torch.stack([_ranks(measured), _ranks(torch.tensor(estimate))]))[0, 1]
    assert rho > 0.7, rho
    m = discover(skills_dir / "pirate-voice")[0]
    for kind, expected in (("measured", measured.tolist()), ("estimate", estimate)):
        meta, _ = compile_skill(demo_lm, m, sensitivity=kind)
        assert meta.sensitivity_kind == kind and meta.sensitivity == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("window", [None, 24])
def test_log_sum_exp_beside_the_model_attention_matches_the_kernels(window):
    """Off CPU the estimate computes each query's log-sum-exp itself; it must equal what the flash
    kernel returns, causal and under a sliding-window mask, with grouped KV heads."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 16, generator=g) for h in (4, 2, 2))
    mask = None
    if window:
        i = torch.arange(40)
        mask = ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window))[None, None]
    additive = None if mask is None else torch.zeros(mask.shape).masked_fill_(~mask, -torch.inf)
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), 0.0, mask is None, attn_mask=additive, scale=0.25)[:2]
    torch.testing.assert_close(sensitivity._logsumexp(q, k, mask, 0.25), lse, rtol=0, atol=1e-5)
    if additive is not None:
        torch.testing.assert_close(sensitivity._logsumexp(q, k, additive, 0.25), lse, rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [None, 12, 3])
def test_the_estimates_movement_is_the_change_inserting_the_lead_makes_to_one_attention(window):
    """At one layer, inserting the lead's keys and values before a token's own moves its attention
    output by exactly share x (lead read - output): the estimate computes that from the output and
    log-sum-exp alone. Checked against attention over both key sets, grouped KV heads, with a sliding
    window that keeps part of the lead from the later tokens (3: all of it from every token but the first two)."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, m, lead, dim, scale = 4, 2, 20, 6, 16, 0.25
    q = torch.randn(heads, m, dim, generator=g)
    k, v = torch.randn(kv_heads, m, dim, generator=g), torch.randn(kv_heads, m, dim, generator=g)
    lk, lv = 2 * torch.randn(kv_heads, lead, dim, generator=g), torch.randn(kv_heads, lead, dim, generator=g)
    pos = torch.cat([torch.arange(-lead, 0), torch.arange(m)])  # the lead right before the skill's first token
    seen = (pos[None, :] <= torch.arange(m)[:, None]) & (pos[None, :] >= 0)
    allowed = (pos[None, :] <= torch.arange(m)[:, None]) & ((torch.arange(m)[:, None] - pos[None, :] < window) if window else True)

    def attend(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = (q @ torch.cat([lk, k], 1).repeat_interleave(2, 0).transpose(1, 2) * scale).masked_fill(~mask, -torch.inf)
        return s.softmax(-1) @ torch.cat([lv, v], 1).repeat_interleave(2, 0), s.logsumexp(-1)

    out, lse = attend(seen & allowed)
    moved_out, _ = attend(allowed)
    expected = (moved_out - out).pow(2).sum((0, 2)).sqrt()
    torch.testing.assert_close(sensitivity._moved(q, out, lse, lk, lv, scale, window, lead), expected, rtol=1e-4, atol=1e-6)
    if window == 3:
        assert expected[2:].eq(0).all() and expected[:2].gt(0).all()


def test_field_spans_point_at_the_value_tokens(demo_tokenizer):
    lm = build("llama", demo_tokenizer)
    meta, _ = compile_skill(lm, manifest())
    assert [f.name for f in meta.fields] == ["role", "role"]
    for f in meta.fields:
        assert "verified_admin" in demo_tokenizer.decode(meta.token_ids[f.start : f.end])


def test_artifact_round_trip_is_bit_identical(tmp_path: Path, demo_tokenizer):
    lm = build("llama", demo_tokenizer)
    meta, kv = compile_skill(lm, manifest())
    path = tmp_path / "a.safetensors"
    artifact.save(path, meta, kv)
    meta2, kv2 = artifact.load(path)
    assert meta2 == meta
    for (k, v), (k2, v2) in zip(kv, kv2):
        assert torch.equal(k, k2) and torch.equal(v, v2)
        assert k2.shape == (lm.model.config.num_key_value_heads, meta.tokens, k.shape[-1])


def test_truncated_artifact_is_refused(tmp_path: Path, demo_tokenizer):
    lm = build("llama", demo_tokenizer)
    meta, kv = compile_skill(lm, manifest())
    path = tmp_path / "a.safetensors"
    artifact.save(path, meta, kv)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptBlob, match="invalid dtype or extent"):
        artifact.read_header(path)


def test_fingerprint_is_stable_and_sensitive(demo_tokenizer):
    base = LoadedModel.from_parts(build_model("llama"), demo_tokenizer).fingerprint
    assert LoadedModel.from_parts(build_model("llama"), demo_tokenizer).fingerprint == base

    changed_weight = build_model("llama")
    with torch.no_grad():
        changed_weight.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert LoadedModel.from_parts(changed_weight, demo_tokenizer).fingerprint.digest != base.digest

    half = build_model("llama").to(torch.bfloat16)
    assert LoadedModel.from_parts(half, demo_tokenizer).fingerprint.digest != base.digest

    other_rope = build_model("llama")
    other_rope.config.rope_parameters = {**other_rope.config.rope_parameters, "rope_theta": 20000.0}
    assert LoadedModel.from_parts(other_rope, demo_tokenizer).fingerprint.digest != base.digest

    import copy

    tok = copy.deepcopy(demo_tokenizer)
    tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert LoadedModel.from_parts(build_model("llama"), tok).fingerprint.digest != base.digest


def test_unshiftable_rope_is_refused_at_compile(demo_tokenizer):
    lm = build("llama_dynamic", demo_tokenizer)
    with pytest.raises(UnsupportedModel, match="dynamic"):
        compile_skill(lm, manifest())


def test_compile_is_idempotent_and_indexed(home: Path, demo_tokenizer, skills_dir: Path):
    lm = build("llama", demo_tokenizer)
    registry, store = Registry(), LocalStore(home)
    manifests = discover(skills_dir)[:2]
    first = compile_manifests(lm, manifests, registry, store)
    assert all(o.created for o in first)
    blobs = set(store.digests())
    second = compile_manifests(lm, manifests, registry, store)
    assert [o.created for o in second] == [False, False]
    assert [o.digest for o in second] == [o.digest for o in first]
    assert set(store.digests()) == blobs
    row = registry.find_artifact(manifests[0].name, lm.fingerprint.digest)
    assert row.meta.skill == manifests[0].name and row.tokens == row.meta.tokens


def test_artifact_for_another_model_is_refused(home: Path, demo_tokenizer):
    from skillforge.runtime import Context, Resolved, Runtime

    a = build("llama", demo_tokenizer)
    b = build("llama", demo_tokenizer, seed=1)
    meta, kv = compile_skill(a, manifest())
    with pytest.raises(ArtifactMismatch) as err:
        Runtime(b).splice(Context(skills=["policy"], user="hi"), skills=[Resolved(meta, kv)])
    assert a.fingerprint.digest in str(err.value) and b.fingerprint.digest in str(err.value)


@pytest.mark.demo
def test_demo_skill_spliced_as_the_whole_prefix_matches_full_recompute(demo_lm, skills_dir: Path):
    from skillforge.runtime import Context, Resolved, Runtime

    m = next(x for x in discover(skills_dir) if x.name == "pirate-voice")
    meta, kv = compile_skill(demo_lm, m)
    rt = Runtime(demo_lm)
    result = rt.splice(Context(skills=["pirate-voice"], user="How do I reset my password?"), skills=[Resolved(meta, kv)])
    expected = demo_lm.tokenizer.apply_chat_template(
        [{"role": "system", "content": meta.text}, {"role": "user", "content": "How do I reset my password?"}],
        tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if not isinstance(expected, list) else expected
    assert result.prompt.ids == expected
    assert result.reused == meta.tokens
    spliced = rt.next_logits(result)
    with torch.no_grad():
        full = demo_lm.model(input_ids=torch.tensor([expected]), logits_to_keep=1).logits[0, -1]
    assert (spliced - full).abs().max() < 1e-3
