"""`skillforge bench`: time to first token of a full prefill against splices, by skill length.

For synthetic skills of N tokens it times a full prefill of the whole prompt against a splice reading
the artifact from the store (page cache warm, hot cache empty), a splice from the hot cache, and a
floor: only the splice's own forward passes over the tokens it must compute anyway (template pieces,
system and user text, seam, last token) against an already assembled cache, nothing else. Timings are
wall-clock medians on whatever machine runs this; on a shared CPU they are noisy.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from skillforge.build import compile_manifests
from skillforge.errors import ContextTooLong
from skillforge.manifest import Manifest, discover
from skillforge.model.forward import new_cache, run
from skillforge.model.loader import LoadedModel
from skillforge.prompt import resolve_anchor, tokenize_with_offsets
from skillforge.registry import Registry
from skillforge.runtime import Context, Runtime
from skillforge.store import LocalStore

BENCH_SYSTEM = "You are a helpful assistant."
BENCH_USER = "Summarize the most important rule above in one sentence."

Progress = Callable[[str], None] | None


def bundled_skills_dir() -> Path:
    """The repository's skills/ folder (the source of synthetic skill text)."""
    return Path(__file__).resolve().parent.parent.parent / "skills"


def synthetic_text(tokenizer: Any, n: int, source_dir: Path | None = None) -> str:
    """Text that tokenizes to exactly `n` tokens on its own: bundled skill texts, concatenated and cut."""
    folder = source_dir or bundled_skills_dir()
    texts = [m.render().text for m in discover(folder)] if folder.is_dir() else []
    if not texts:
        texts = ["Follow the policy exactly, answer briefly, and say what the user can do next."]
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    parts, ids = [], []
    while len(ids) < n + 128:
        parts.append(texts[len(parts) % len(texts)])
        ids = enc("\n\n".join(parts))
    best = None
    for start in range(64):  # windows of the token stream; the first that re-tokenizes to exactly n tokens
        for m in (n, n + 1, n - 1):
            if m <= 0 or start + m > len(ids):
                continue
            text = tokenizer.decode(ids[start : start + m])
            if text != text.strip():
                continue  # edge whitespace merges with the prompt around the skill
            got = len(enc(text))
            if got == n:
                return text
            if best is None or abs(got - n) < abs(best[1] - n):
                best = (text, got)
    return best[0]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


@torch.no_grad()
def run_bench(lm: LoadedModel, lengths: list[int], repeats: int = 3, full_repeats: int | None = None,
              progress: Progress = None) -> dict:
    """TTFT of a full prefill against splices (store, hot cache) and the floor, per synthetic skill length."""
    say = progress or (lambda s: None)
    model, device = lm.model, lm.model.device
    rows, compile_info = [], {}
    with tempfile.TemporaryDirectory(prefix="skillforge-bench-") as tmp:
        registry, store = Registry(f"sqlite:///{Path(tmp) / 'index.sqlite'}"), LocalStore(Path(tmp))
        try:
            for n in sorted(lengths):
                text = synthetic_text(lm.tokenizer, n)
                manifest = Manifest.from_dict({"name": f"bench-{n}", "version": "1.0.0", "template": text}, source=f"bench-{n}")
                say(f"bench {n} tokens: compiling")
                outcome, compile_ms = _timed(lambda: compile_manifests(lm, [manifest], registry, store)[0])
                ctx = Context(skills=[f"bench-{n}"], system=BENCH_SYSTEM, user=BENCH_USER)
                rt = Runtime(lm, registry, store)
                probe = rt.splice(ctx)
                L = len(probe.prompt.ids)
                if L + 1 > lm.max_positions:
                    raise ContextTooLong(f"bench length {n}: the prompt is {L} tokens; {lm.name} allows {lm.max_positions}")
                reps_full = full_repeats or (repeats if n < 4096 else min(repeats, 2))

                say(f"bench {n} tokens: full prefill x{reps_full}")
                ids = torch.tensor([probe.prompt.ids], device=device)
                full = [_timed(lambda: run(model, ids, cache=new_cache()))[1] for _ in range(reps_full)]

                say(f"bench {n} tokens: splices x{repeats}")
                rt.release(probe)
                store_ms, hot_ms = [], []

                def first_token() -> Any:
                    result = rt.splice(ctx)
                    rt.next_logits(result)
                    return result

                for _ in range(repeats):
                    rt.hot.clear()  # next resolve reads the mmap'd blob (from the page cache: warmed by the probe)
                    for arm in (store_ms, hot_ms):
                        result, ms = _timed(first_token)
                        arm.append(ms)
                        rt.release(result)  # as a serving loop does when a request is done

                # floor: the splice's own forward passes over an already assembled cache
                base = rt.splice(ctx)
                ids_1d = base.input_ids[0]
                floor = [_timed(lambda: rt.compute(base.cache, ids_1d, base.computed_positions))[1] for _ in range(repeats)]
                f_ms, s_ms, h_ms = statistics.median(full), statistics.median(store_ms), statistics.median(hot_ms)
                rows.append({
                    "tokens": outcome.tokens, "prompt_tokens": L, "computed_tokens": probe.computed,
                    "full_ms": round(f_ms, 2), "splice_store_ms": round(s_ms, 2), "splice_hot_ms": round(h_ms, 2),
                    "floor_ms": round(statistics.median(floor), 2),
                    "speedup_store": round(f_ms / s_ms, 2), "speedup_hot": round(f_ms / h_ms, 2),
                    "bytes_per_token": round(outcome.bytes / outcome.tokens, 1), "full_repeats": reps_full,
                })
                compile_info = {"tokens": outcome.tokens, "compile_ms": compile_ms, "manifest": manifest}
                say(f"bench {n} tokens: full {f_ms:.0f} ms, splice store {s_ms:.0f} ms, hot {h_ms:.0f} ms")
        finally:
            registry.close()
    result: dict[str, Any] = {"model": lm.name, "device": str(lm.device), "dtype": lm.dtype, "repeats": repeats,
                              "rows": rows, "compile_tokens_per_s": None, "bare_forward_tokens_per_s": None}
    if compile_info:
        n = compile_info["tokens"]
        result["compile_tokens_per_s"] = round(n / (compile_info["compile_ms"] / 1000), 1)
        ids, _ = tokenize_with_offsets(lm.tokenizer, compile_info["manifest"].render().text)
        x = torch.tensor([resolve_anchor(lm.tokenizer, "template") + ids], device=device)
        say(f"bench: bare forward of {x.shape[1]} tokens")
        _, bare_ms = _timed(lambda: run(model, x, cache=new_cache()))
        result["bare_forward_tokens_per_s"] = round(n / (bare_ms / 1000), 1)
    result["floor"] = ("the splice's forward passes alone (template pieces, system and user text, seam and repaired "
                       "tokens, last token) over an already assembled cache: no tokenization, artifact read or rotation")
    return result


def plot_bench(doc: dict, path: str | Path) -> Path:
    """TTFT against skill length, log y, one line per arm (PNG via matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xs = [r["tokens"] for r in doc["rows"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for key, label in (("full_ms", "full prefill"), ("splice_store_ms", "splice (store)"),
                       ("splice_hot_ms", "splice (hot cache)"), ("floor_ms", "floor (compute only)")):
        ax.plot(xs, [r[key] for r in doc["rows"]], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("skill tokens")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"{doc['model']} on {doc['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
