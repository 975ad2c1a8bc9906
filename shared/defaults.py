"""Defaults of the deployment: which models and exits run when the user names none."""

from __future__ import annotations

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
