"""Artifact lookup: a skill reference -> the artifact compiled for this model, ready to splice.

The registry says which blob; the store gives its bytes (digest verified on read); recently used
artifacts stay in memory (runtime/hotcache.py). This is the one place the runtime reads an artifact
file, and it reads it against this model's layout (artifact.ModelLayout: fingerprint, dtype, per-layer
KV shapes, context window, vocabulary), so a well-formed blob that does not fit the model (a hostile
or broken pack) is refused before any of it is spliced. The registry and store are duck-typed (their
find/list and local_path methods), so the runtime imports neither.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from skillforge import artifact
from skillforge.errors import ArtifactMismatch, NotFound
from skillforge.model.loader import LoadedModel
from skillforge.prompt import resolve_anchor, system_anchor
from skillforge.refs import SkillRef
from skillforge.runtime.hotcache import HotCache
from skillforge.runtime.splice import Resolved

SYSTEM_ANCHORS_MAX = 1024  # remembered (system text, artifact) anchor digests before the memo starts over


def check_fingerprint(meta: artifact.ArtifactMeta, lm: LoadedModel, where: str) -> None:
    """Refuse an artifact compiled for another model, naming both fingerprints and what to run."""
    if meta.fingerprint != lm.fingerprint.digest:
        raise ArtifactMismatch(
            f"{where} ({meta.skill}@{meta.version}) was compiled for model {meta.fingerprint}, "
            f"this model ({lm.name}) is {lm.fingerprint.digest}; run skillforge compile for this model"
        )


class ArtifactLookup:
    """Resolves references for one model against one registry and store, through a hot cache."""

    def __init__(self, lm: LoadedModel, registry: Any, store: Any, hot: HotCache,
                 layer_shapes: Callable[[], list[tuple[int, int, int]]]):
        self.lm = lm
        self.registry = registry
        self.store = store
        self.hot = hot
        self._layer_shapes = layer_shapes  # (kv_heads, key_dim, value_dim) per layer, from the splice core
        self._layout: artifact.ModelLayout | None = None
        self._anchors: dict[bool, str] = {}
        self._system_anchors: dict[tuple[str, str], str] = {}  # (system text, artifact digest) -> anchor digest
        self._finite: set[str] = set()  # digests whose every value was checked finite in this process

    def resolve(self, ref: str, raw: bool = False, system: str = "") -> Resolved:
        """`name`, `name@version` or `name@sha256:...` -> artifact for this model (hot cache first).

        Where a skill was compiled behind more than one anchor, the one the context starts with wins:
        the context's own `system` text (`skillforge compile --system`: exact after it), else the chat
        template's system prefix, or none for a `raw` prompt. Any other still splices (its unseen
        tokens get repaired), so it is the fallback."""
        if self.registry is None or self.store is None:
            raise NotFound(f"cannot resolve {ref!r}: this Runtime has no registry and store; pass resolved artifacts to splice()")
        r = SkillRef.parse(ref)
        find = partial(self.registry.find_artifact, r.name, self.lm.fingerprint.digest, version=r.version, digest=r.digest)
        try:
            row = find(anchor_digest=self._anchor_digest(raw))
        except NotFound:
            row = find()
        if system and not raw and r.digest is None:
            row = self._behind_system(row, system)
        return self._load(row)

    def behind(self, resolved: Resolved, before: list[int], digest: str) -> Resolved:
        """The same skill version compiled behind exactly `before` (the tokens that precede it in the
        prompt, other than `resolved`'s anchor; `digest` their anchor digest) if the registry has it,
        else `resolved`: a variant compiled for this context (`serve --learn-after`, `compile --system`)
        splices exactly there, with no repair. One indexed query; the variant's metadata is parsed
        once, from its blob (a version's text does not change, so a mismatch is a rare hostile case)."""
        meta = resolved.meta
        row = self.registry.variant(meta.skill, self.lm.fingerprint.digest, meta.version, digest)
        if row is None:
            return resolved
        found = self._load(row)
        return found if found.meta.text_digest == meta.text_digest else resolved  # not the text the prompt holds

    def _load(self, row: Any) -> Resolved:
        """An indexed artifact's metadata and KV, from the hot cache or read and checked (see resolve)."""
        hit = self.hot.get(row.digest)
        if hit is not None:
            return hit
        path = self.store.local_path(row.digest)  # verifies the digest
        # The finiteness check reads every value (~24 ms per 350 MB): once per digest and process is
        # enough, because local_path has just tied these bytes to the digest whose values passed it.
        meta, kv = artifact.load(path, expect=self.layout(), source=row.digest, check_values=row.digest not in self._finite)
        self._finite.add(row.digest)
        device = self.lm.model.device
        # On a CPU the hot cache keeps the artifact's memory map (no copy: its pages stay mapped and in
        # the page cache, so the next hit reads memory); on an accelerator this copies the KV over.
        kv = [(k.to(device), v.to(device)) for k, v in kv]
        resolved = Resolved(meta, kv, row.digest)
        self.hot.put(row.digest, resolved, sum(k.nbytes + v.nbytes for k, v in kv))
        return resolved

    def layout(self) -> artifact.ModelLayout:
        """What an artifact for this model must look like (built once, on the first load)."""
        if self._layout is None:
            self._layout = artifact.ModelLayout(
                fingerprint=self.lm.fingerprint.digest, dtype=self.lm.dtype, layers=tuple(self._layer_shapes()),
                max_positions=self.lm.max_positions, vocab_size=self.lm.model.get_input_embeddings().num_embeddings)
        return self._layout

    def _behind_system(self, row: Any, system: str) -> Any:
        """The same skill version compiled behind `system`, if the registry has it, else `row`. One
        query; the anchor (which depends on the skill's text) is computed once per system text."""
        key = (system, row.digest)
        if key not in self._system_anchors:
            if len(self._system_anchors) >= SYSTEM_ANCHORS_MAX:
                self._system_anchors.clear()
            self._system_anchors[key] = artifact.anchor_digest(system_anchor(self.lm.tokenizer, system, row.meta.text))
        wanted = self._system_anchors[key]
        if row.anchor_digest == wanted:
            return row
        hits = [x for x in self.registry.list_artifacts(self.lm.fingerprint.digest, row.name)
                if x.version == row.version and x.anchor_digest == wanted]
        return hits[-1] if hits else row

    def _anchor_digest(self, raw: bool) -> str:
        """Digest of the anchor a context starts with: the chat template's system prefix, or none when
        raw. Rendered once per lookup, not on every resolve (the template does not change)."""
        if raw not in self._anchors:
            self._anchors[raw] = artifact.anchor_digest(resolve_anchor(self.lm.tokenizer, "none" if raw else "template"))
        return self._anchors[raw]
