"""Defaults of the deployment: which models and exits run when the user names none."""

from __future__ import annotations

DEFAULT_TARGET = "smollm2-135m-instruct"
# Provisional: the target's first 4 layers with its own norm and head, untrained (near-zero acceptance)
# until the distilled draft of the training issue ships and replaces it.
DEFAULT_DRAFT = "smollm2-135m-draft-provisional"
# Untrained (zero-initialised) exits until trained heads ship; 1-based "after layer L".
DEFAULT_EXIT_LAYERS = (10, 20)
DEFAULT_WINDOW = 4
