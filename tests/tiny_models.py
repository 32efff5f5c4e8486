"""Tiny randomly initialised models, one per RoPE family, for exactness tests without a model hub.

`build(family)` makes a float32 model from a config (2-3 layers, hidden 64-128) with the demo
tokenizer's vocabulary (49152) so the SmolLM2 tokenizer and its ChatML template drive it, and wraps it
as a `LoadedModel`. Models are seeded, so a family always gets the same weights, and cached per
process (building one costs a few hundred milliseconds, mostly the embedding).

Families that can be spliced exactly (SHIFTABLE) cover every rotary layout skillforge.rope handles:
full and partial rotary dims, the rotate-half and the interleaved (GPT-J) pair layouts, frequency
scalings (linear, llama3, yarn with its attention factor), per-layer-type frequencies (Gemma 3) and
sliding-window attention (Mistral, Gemma 3) with a window smaller than the test sequences. REFUSED
families use RoPE variants whose keys cannot be moved (dynamic, longrope).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

VOCAB = 49152
MAX_POS = 4096
WINDOW = 16  # sliding window of mistral / gemma3, smaller than every test sequence

_COMMON = dict(vocab_size=VOCAB, max_position_embeddings=MAX_POS, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _llama(max_pos: int = MAX_POS, **rope: Any) -> Any:
    from transformers import LlamaConfig

    params = {"rope_type": "default", "rope_theta": 10000.0, **rope}
    return LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, rope_parameters=params, **{**_COMMON, "max_position_embeddings": max_pos})


def _qwen3() -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                       **_COMMON)


def _mistral() -> Any:
    from transformers import MistralConfig

    return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, **_COMMON)


def _gemma3() -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, sliding_window=WINDOW, query_pre_attn_scalar=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        # as the real Gemma 3: local layers at theta 10k, global layers at theta 1M with linear scaling
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}},
        **_COMMON,
    )


def _phi3(**rope: Any) -> Any:
    from transformers import Phi3Config

    params = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, **rope}
    return Phi3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_parameters=params, original_max_position_embeddings=512,
                      **_COMMON)


def _gpt_neox() -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
                         **_COMMON)


def _gptj() -> Any:
    from transformers import GPTJConfig

    return GPTJConfig(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=128, n_layer=2, n_head=4, rotary_dim=16,
                      bos_token_id=1, eos_token_id=2)


def _longrope() -> Any:
    n = 128 // 4 // 2 // 2  # head_dim 32, partial_rotary_factor 0.5 -> 16 rotary dims -> 8 factors
    return _phi3(rope_type="longrope", short_factor=[1.0] * n, long_factor=[2.0 + i for i in range(n)])


FAMILIES: dict[str, tuple[Callable[[], Any], str]] = {
    # name: (config factory, attention implementation)
    "llama": (lambda: _llama(), "sdpa"),
    "llama3": (lambda: _llama(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=256), "sdpa"),
    "yarn": (lambda: _llama(max_pos=2048, rope_type="yarn", factor=4.0, original_max_position_embeddings=512), "sdpa"),
    "qwen3": (_qwen3, "sdpa"),
    "mistral": (_mistral, "sdpa"),
    "gemma3": (_gemma3, "sdpa"),
    "phi3": (lambda: _phi3(), "sdpa"),
    "gpt_neox": (_gpt_neox, "sdpa"),
    "gptj": (_gptj, "sdpa"),
    # the same Gemma 3 through eager attention: additive float masks sliced per layer, no SDPA shortcuts
    "gemma3_eager": (_gemma3, "eager"),
    # refused: keys cannot be moved
    "llama_dynamic": (lambda: _llama(rope_type="dynamic", factor=2.0), "sdpa"),
    "phi3_longrope": (_longrope, "sdpa"),
}
SHIFTABLE = ["llama", "llama3", "yarn", "qwen3", "mistral", "gemma3", "gemma3_eager", "phi3", "gpt_neox", "gptj"]
REFUSED = ["llama_dynamic", "phi3_longrope"]
SLIDING = {"mistral", "gemma3", "gemma3_eager"}

_BUILT: dict[tuple[str, int], Any] = {}


def config(family: str) -> Any:
    return FAMILIES[family][0]()


def build_model(family: str, seed: int = 0) -> Any:
    """The bare transformers model (float32, eval mode), seeded."""
    from transformers import AutoModelForCausalLM

    factory, attn = FAMILIES[family]
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(factory(), attn_implementation=attn, dtype=torch.float32)
    except ValueError:  # the architecture has no SDPA path
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(factory(), attn_implementation="eager", dtype=torch.float32)
    assert model.config._attn_implementation in (attn, "eager")
    return model.eval()


def build(family: str, tokenizer: Any = None, seed: int = 0) -> Any:
    """A tiny random model of `family` wrapped as a LoadedModel (cached per process and seed)."""
    from skillforge.model.loader import LoadedModel

    key = (family, seed)
    if key not in _BUILT:
        if tokenizer is None:
            from transformers import AutoTokenizer

            from conftest import DEMO  # tests/ is on sys.path under pytest (no __init__.py)

            tokenizer = AutoTokenizer.from_pretrained(str(DEMO))
        _BUILT[key] = LoadedModel.from_parts(build_model(family, seed), tokenizer, name=family)
    return _BUILT[key]
