"""Defaults of the deployment: which models and exits run when the user names none."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TARGET = "smollm2-135m-instruct"
# Distilled from the target by `eespec train-draft`, shipped in edge_client/drafts/ (fp16, model card there).
DEFAULT_DRAFT = "smollm2-135m-draft"
# One exit after layer 24 of 30 (1-based "after layer L"), from the trained heads shipped for the default
# target (cloud_server/exit_heads/). Each exit costs a full LM-head read-out per window; layer 24 is the
# deepest trained exit whose verdict still leaves a draft window's time of verification (~25 ms left vs
# ~15 ms of drafting with the distilled draft; the exit heads' MODEL_CARD.md). cloud_server/settings.py
# defaults to the same layer.
DEFAULT_EXIT_LAYERS = (24,)
DEFAULT_WINDOW = 4
# The target's served precision (shared.precision). Its exactness reference is that same model in that
# precision (bf16 windows equal one-token steps bit for bit through shared.attention; slow tests show it).
DEFAULT_TARGET_DTYPE = "auto"  # bfloat16 for the default target (shared.precision.SERVING_DEFAULTS)


@dataclass(frozen=True)
class ModelPair:
    """A target and its draft (same tokenizer), with the exits the server runs for them."""

    target: str
    draft: str
    exits: tuple[int, ...]
    description: str


PAIRS: dict[str, ModelPair] = {
    "default": ModelPair(
        DEFAULT_TARGET, DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, "SmolLM2-135M-Instruct and its distilled draft"
    ),
    # The paper-scale pair (DESIGN.md, "Models"): a slow edge whose drafting is comparable to verification.
    # Qwen2.5-Coder-1.5B has 28 layers and no trained exit heads here, so the exit is the base model's own
    # read-out after layer 14 (the middle, where a slow edge needs its verdict). Pulling it downloads
    # 1.6 GB; running both needs ~11 GB of RAM. Never pulled by CI or the fast suite.
    "paper": ModelPair(
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        (14,),
        "Qwen2.5-Coder-1.5B-Instruct target, Qwen2.5-Coder-0.5B-Instruct draft",
    ),
    # The robot planner (issue 14): both models LoRA-tuned on the scripted expert's whole-path plans
    # (training/planner_train.py; model card in shared/models/adapters/), merged into their bases at first use
    "planner": ModelPair(
        "smollm2-135m-planner",
        "smollm2-135m-planner-draft",
        DEFAULT_EXIT_LAYERS,
        "SmolLM2-135M-Instruct and its distilled draft, each LoRA-tuned to write robot plans",
    ),
}
