"""Compile manifests into the registry: skip what exists, write each artifact atomically, index it.

Kept apart from compile.py (pure model work) and the store/registry (no torch): this is the glue the
CLI and the Python API share. The artifact is written to a staging file inside the data home
(`<home>/blobs/tmp/`, never $TMPDIR), so a killed compile leaves at most a staging file or an
unreferenced blob (never a half-written visible one, never an index row without its blob); the next
compile and `skillforge gc` sweep stale staging files. Of concurrent compiles of the same skill one
indexes its artifact; the others report that winner and delete their own blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from skillforge import artifact
from skillforge.compile import compile_skill
from skillforge.manifest import Manifest
from skillforge.model.loader import LoadedModel
from skillforge.prompt import check_anchor, resolve_anchor, system_anchor
from skillforge.store.crashpoint import crash_point


@dataclass
class CompileOutcome:
    name: str
    version: str
    digest: str
    tokens: int
    bytes: int
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def compile_manifests(lm: LoadedModel, manifests: list[Manifest], registry: Any, store: Any, anchor: str | list[int] = "template",
                      on_done: Callable[[CompileOutcome], None] | None = None, system: str = "",
                      sensitivity: str = "measured") -> list[CompileOutcome]:
    """Compile every manifest not yet compiled for this model and anchor (a name, explicit token ids,
    or behind `system`), recording sensitivity of the kind given (compile.py); idempotent: an artifact
    already indexed is kept, whatever kind it records."""
    from skillforge.artifact import anchor_digest
    from skillforge.errors import BadReference, NotFound

    if system and (isinstance(anchor, list) or check_anchor(anchor) != "template"):
        raise BadReference("--system goes with the template anchor: a raw prompt has no system message to compile behind")
    anchor_ids = resolve_anchor(lm.tokenizer, anchor)
    store.clean_staging()
    outcomes = []
    for m in manifests:
        rendered = m.render()
        if system:  # the tokens before the skill depend on its first characters
            anchor_ids = system_anchor(lm.tokenizer, system, rendered.text)
        a_digest = anchor_digest(anchor_ids)
        registry.record_skill_version(m.name, m.version, rendered.digest, m.description, m.to_dict())
        try:
            row = registry.find_artifact(m.name, lm.fingerprint.digest, version=m.version, anchor_digest=a_digest)
            outcome = CompileOutcome(m.name, m.version, row.digest, row.tokens, row.bytes, False)
        except NotFound:
            meta, kv = compile_skill(lm, m, anchor=anchor_ids, sensitivity=sensitivity)
            with store.staging(".safetensors") as path:
                artifact.save(path, meta, kv)
                crash_point("compile:saved")
                digest, size = store.put_staged(path)
            crash_point("compile:stored")
            row, added = registry.add_artifact(meta, digest, size)
            if row.digest != digest:  # another compile of the same skill indexed first: report that one
                registry.release(store, digest)
            outcome = CompileOutcome(m.name, m.version, row.digest, row.tokens, row.bytes, added)
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return outcomes
