"""`skillforge bench`: time to first token of a full prefill against splices and edits, by skill length.

For a synthetic skill of N tokens (bundled skill text behind one field, `tier`) it times, per length:
  full          a full prefill of the whole prompt
  cold          a splice of a new layout: the artifact read from the store (page cache warm, hot cache
                empty) into pooled memory that last held something else, so every reused key is
                rotated and copied (the first request for a set of skills)
  store         the same splice again, as a server sees the next request for the same skills: the
                pooled cache still holds the skill's KV in place, only the slots that changed are written
  hot           a splice from the hot cache
  floor         only the splice's own forward passes against an already assembled cache: the repair's
                ranking pass, if it ran one (the tokens computed anyway and the seams, for the attention
                the user turn pays), and the pass over every token the splice computes (template pieces,
                system and user text, seams, repaired tokens, last token)
  edit_full     a full prefill of the prompt with the field edited (what an edit costs without skillforge);
                where the edited prompt has as many tokens as the original (one-token values: always here),
                that is the same computation as `full`, so the round's `full` time stands in for it
  edit_inplace  a splice with the field edited in place (its tokens recomputed)
  edit_erratum  a splice with the field edited by field+erratum (in place plus the appended erratum)

A shared CPU is noisy, and a ratio whose two arms ran minutes apart measures the machine. So the arms
run in rounds, every arm once per round in a rotating order, and each ratio is taken within a round;
the result reports the median of the per-round ratios with its spread (min, max), the median time
of each arm, and the machine's load average around every round.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from skillforge.build import compile_manifests
from skillforge.sensitivity import lead_anchor
from skillforge.errors import ContextTooLong, EditError
from skillforge.manifest import Manifest, discover
from skillforge.model.forward import new_cache, run
from skillforge.model.loader import LoadedModel
from skillforge.prompt import build_prompt, has_chat_template, resolve_anchor, tokenize_with_offsets
from skillforge.registry import Registry
from skillforge.runtime import Context, Runtime
from skillforge.store import LocalStore
from skillforge.store.local import RACY_WINDOW_NS

BENCH_SYSTEM = "You are a helpful assistant."
BENCH_USER = "Summarize the most important rule above in one sentence."
FIELD, OLD, NEW = "tier", "A", "B"  # one-token values, so the in-place edit applies
HEADER = "Customer tier: {{tier}}.\n\n"  # the field sits at the start: the worst case for a prefix cache
ARMS = ("full", "cold", "store", "hot", "floor", "edit_full", "edit_inplace", "edit_erratum")
ARM_KEYS = {a: f"splice_{a}_ms" if a in ("cold", "store", "hot") else f"{a}_ms" for a in ARMS}  # row key of each arm's median
# (ratio name, numerator arm, denominator arm), each taken within one round
RATIOS = (("speedup_cold", "full", "cold"), ("speedup_store", "full", "store"), ("speedup_hot", "full", "hot"),
          ("cold_over_floor", "cold", "floor"), ("store_over_floor", "store", "floor"), ("hot_over_floor", "hot", "floor"),
          ("edit_speedup_inplace", "edit_full", "edit_inplace"), ("edit_speedup_erratum", "edit_full", "edit_erratum"))

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


def bench_manifest(tokenizer: Any, n: int) -> Manifest:
    """A skill of about `n` tokens whose first line holds the field `tier` (default A)."""
    def make(body: int) -> Manifest:
        return Manifest.from_dict({"name": f"bench-{n}", "version": "1.0.0", "template": HEADER + synthetic_text(tokenizer, body),
                                   "fields": {FIELD: {"default": OLD, "description": "the customer's tier", "label": "customer tier"}}},
                                  source=f"bench-{n}")

    count = lambda m: len(tokenizer(m.render().text, add_special_tokens=False)["input_ids"])  # noqa: E731
    body = max(8, n - len(tokenizer(HEADER.replace("{{tier}}", OLD), add_special_tokens=False)["input_ids"]))
    manifest = make(body)
    missed = count(manifest) - n  # the header's line break can merge with the text after it
    return make(max(8, body - missed)) if missed else manifest


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def _load() -> float:
    """The 1-minute load average (what else competes for the cores), or -1 where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of per-round values: the figure, and how far the machine moved it."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def round_ratios(rounds: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Every ratio of RATIOS, taken within each round, summarised over the rounds that have both arms."""
    out = {}
    for name, a, b in RATIOS:
        vals = [r[a] / r[b] for r in rounds if r.get(a) and r.get(b)]
        if vals:
            out[name] = spread(vals)
    return out


class _LengthBench:
    """The arms for one skill length, ready to run any number of times in any order."""

    def __init__(self, lm: LoadedModel, registry: Registry, store: LocalStore, n: int, say: Callable[[str], None]):
        self.lm = lm
        self.manifest = bench_manifest(lm.tokenizer, n)
        say(f"bench {n} tokens: compiling")
        self.outcome = compile_manifests(lm, [self.manifest], registry, store)[0]
        self.rt = Runtime(lm, registry, store)
        name = self.manifest.name
        raw = not has_chat_template(lm.tokenizer)  # a base model: the same texts as a raw prompt
        self.ctx = Context(skills=[name], system=BENCH_SYSTEM, user=BENCH_USER, raw=raw)
        self.edited = {mode: Context(skills=[name], system=BENCH_SYSTEM, user=BENCH_USER, raw=raw, set={f"{name}.{FIELD}": NEW})
                       for mode in ("in-place", "field+erratum")}
        self.base = self.rt.splice(self.ctx)  # warms the page cache and the hot cache; the floor's cache
        self.prompt_tokens = len(self.base.prompt.ids)
        if self.prompt_tokens + 1 > lm.max_positions:
            raise ContextTooLong(f"bench length {n}: the prompt is {self.prompt_tokens} tokens; {lm.name} allows {lm.max_positions}")
        device = lm.model.device
        self.ids = torch.tensor([self.base.prompt.ids], device=device)
        edited_text = self.manifest.render({FIELD: NEW}).text
        self.edited_ids = torch.tensor([build_prompt(lm.tokenizer, BENCH_SYSTEM, [edited_text], BENCH_USER, raw).ids], device=device)
        self.same_length = self.edited_ids.shape[1] == self.ids.shape[1]  # then `full` times the re-prefill too
        self.computed: dict[str, int] = {"splice": self.base.computed}
        for mode, ctx in self.edited.items():
            try:
                r = self.rt.splice(ctx, edit_mode=mode)
                self.computed[mode] = r.computed
                self.rt.release(r)
            except EditError:  # in-place needs a value of the same token length
                self.computed[mode] = -1
        # The store hashes a blob again on its next read while the blob is younger than the racy window
        # (store/local.py), so the first timed arm to read the just-compiled skill would pay a hash of
        # its whole KV (~240 ms at 8k tokens on the demo model). A served skill's blob is older than
        # that: wait the window out and read it once before any arm is timed.
        time.sleep(RACY_WINDOW_NS / 1e9)
        self._cold()

    def _splice(self, ctx: Context, mode: str = "field+erratum") -> None:
        result = self.rt.splice(ctx, edit_mode=mode)
        self.rt.next_logits(result)
        self.rt.release(result)  # as a serving loop does when a request is done

    def _cold(self) -> None:
        self.rt.hot.clear()
        self.rt.pool.forget()  # as if every pooled cache last held other skills: nothing is in place
        self._splice(self.ctx)

    def _store(self) -> None:
        self.rt.hot.clear()  # the next resolve reads the memory-mapped blob (page cache warm)
        self._splice(self.ctx)

    def _floor(self) -> None:
        for positions in [*self.base.ranking_passes, self.base.computed_positions]:
            self.rt.compute(self.base.cache, self.base.input_ids[0], positions)

    def arm(self, name: str) -> float | None:
        """Run arm `name` once -> wall-clock ms (None where it does not apply)."""
        fns: dict[str, Callable[[], Any]] = {
            "full": lambda: run(self.lm.model, self.ids, cache=new_cache()),
            "cold": self._cold,
            "store": self._store,
            "hot": lambda: self._splice(self.ctx),
            "floor": self._floor,
            "edit_full": lambda: run(self.lm.model, self.edited_ids, cache=new_cache()),
            "edit_inplace": lambda: self._splice(self.edited["in-place"], "in-place"),
            "edit_erratum": lambda: self._splice(self.edited["field+erratum"], "field+erratum"),
        }
        if (name == "edit_inplace" and self.computed["in-place"] < 0) or (name == "edit_full" and self.same_length):
            return None
        return round(_timed(fns[name])[1], 2)


def _row(b: _LengthBench, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    med = {a: statistics.median(v) for a in ARMS if (v := [r[a] for r in rounds if r.get(a)])}
    ratios = round_ratios(rounds)
    return {
        "tokens": b.outcome.tokens, "prompt_tokens": b.prompt_tokens, "computed_tokens": b.computed["splice"],
        "edit_computed_inplace": b.computed["in-place"], "edit_computed_erratum": b.computed["field+erratum"],
        "edit_full_timed_by": "full (same prompt length)" if b.same_length else "edit_full",
        **{ARM_KEYS[a]: round(v, 2) for a, v in med.items()},
        "speedup_store": ratios["speedup_store"]["median"], "speedup_hot": ratios["speedup_hot"]["median"],
        "ratios": ratios, "bytes_per_token": round(b.outcome.bytes / b.outcome.tokens, 1), "rounds": rounds,
    }


def _compile_rounds(lm: LoadedModel, registry: Registry, store: LocalStore, n: int, rounds: int) -> dict[str, Any]:
    """Compile (two prefills: behind the anchor, and behind the sensitivity lead; write, hash, index)
    against bare forwards of the same tokens, interleaved: `compile_over_bare` is the overhead above
    the two forwards compile must run, `compile_over_one_forward` what compiling costs against one,
    `compile_estimate_over_one_forward` what `compile --sensitivity estimate` (one forward) costs."""
    manifest = bench_manifest(lm.tokenizer, n)
    text = manifest.render().text
    ids, _ = tokenize_with_offsets(lm.tokenizer, text)
    device = lm.model.device
    x = torch.tensor([resolve_anchor(lm.tokenizer, "template") + ids], device=device)
    behind_lead = torch.tensor([lead_anchor(lm, text) + ids], device=device)
    per = []
    for i in range(rounds):
        m, e = (Manifest.from_dict({**manifest.to_dict(), "version": f"{major}.0.{i + 1}"}, source=manifest.name) for major in (1, 2))
        arms = {"compile": lambda: compile_manifests(lm, [m], registry, store), "bare": lambda: run(lm.model, x, cache=new_cache()),
                "lead": lambda: run(lm.model, behind_lead, cache=new_cache()),
                "estimate": lambda: compile_manifests(lm, [e], registry, store, sensitivity="estimate")}
        order = ["compile", "bare", "estimate", "lead"] if i % 2 == 0 else ["lead", "estimate", "bare", "compile"]
        per.append({a: _timed(arms[a])[1] for a in order})
    c, b = statistics.median(r["compile"] for r in per), statistics.median(r["bare"] for r in per)
    return {"compile_tokens": len(ids), "compile_tokens_per_s": round(len(ids) / (c / 1000), 1),
            "bare_forward_tokens_per_s": round(len(ids) / (b / 1000), 1),
            "compile_over_bare": spread([r["compile"] / (r["bare"] + r["lead"]) for r in per]),
            "compile_over_one_forward": spread([r["compile"] / r["bare"] for r in per]),
            "compile_estimate_over_one_forward": spread([r["estimate"] / r["bare"] for r in per])}


@torch.no_grad()
def run_bench(lm: LoadedModel, lengths: list[int], rounds: int = 3, progress: Progress = None,
              compile_tokens: int | None = None) -> dict:
    """TTFT of full prefills against splices, the floor and edits per synthetic skill length, in
    interleaved rounds (see the module docstring); compile is timed at `compile_tokens` (default: the
    longest length, at most 2048)."""
    say = progress or (lambda s: None)
    rows: list[dict[str, Any]] = []
    t_start, load_start = time.time(), _load()
    with tempfile.TemporaryDirectory(prefix="skillforge-bench-") as tmp:
        registry, store = Registry(f"sqlite:///{Path(tmp) / 'index.sqlite'}"), LocalStore(Path(tmp))
        try:
            for n in sorted(lengths):
                b = _LengthBench(lm, registry, store, n, say)
                per_round: list[dict[str, Any]] = []
                for i in range(rounds):
                    order = ARMS[i % len(ARMS):] + ARMS[: i % len(ARMS)]  # each arm leads a round in turn
                    got: dict[str, Any] = {"load_before": _load()}
                    for a in order:
                        got[a] = b.arm(a)
                    got["load_after"] = _load()
                    if b.same_length:
                        got["edit_full"] = got["full"]
                    per_round.append(got)
                    say(f"bench {n} tokens, round {i + 1}/{rounds}: " + ", ".join(f"{a} {got[a]:.0f}" for a in ARMS if got[a]))
                rows.append(_row(b, per_round))
                b.rt.release(b.base)
            compile_n = compile_tokens or min(max(lengths), 2048)
            say(f"bench: compile against a bare forward, {compile_n} tokens x{rounds}")
            compile_doc = _compile_rounds(lm, registry, store, compile_n, rounds)
        finally:
            registry.close()
    return {"model": lm.name, "device": str(lm.device), "dtype": lm.dtype, "rounds": rounds, "rows": rows,
            "raw_prompts": not has_chat_template(lm.tokenizer),
            **compile_doc, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "load": {"start": load_start, "end": _load()}, "wall_s": round(time.time() - t_start, 1),
            "floor": ("the splice's forward passes alone (template pieces, system and user text, seam and repaired "
                      "tokens, last token) over an already assembled cache: no tokenization, artifact read or rotation")}


def plot_bench(docs: dict | list[dict], path: str | Path) -> Path:
    """TTFT against skill length, log y, one panel per model and one line per arm (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [docs] if isinstance(docs, dict) else docs
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(docs), figsize=(6.4 * len(docs), 4.2), dpi=120, squeeze=False)
    for ax, doc in zip(axes[0], docs):
        xs = [r["tokens"] for r in doc["rows"]]
        for key, label in (("full_ms", "full prefill"), ("splice_cold_ms", "splice (new layout)"), ("splice_store_ms", "splice (store)"),
                           ("splice_hot_ms", "splice (hot cache)"), ("floor_ms", "floor (compute only)"),
                           ("edit_erratum_ms", "edit: field+erratum")):
            ys = [r.get(key) for r in doc["rows"]]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=label)
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
