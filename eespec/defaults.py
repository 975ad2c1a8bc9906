"""Defaults of the deployment: which models and exits run when the user names none."""

from __future__ import annotations

DEFAULT_TARGET = "smollm2-135m-instruct"
# Provisional: the target's first 4 layers with its own norm and head, untrained (near-zero acceptance)
# until the distilled draft of the training issue ships and replaces it.
DEFAULT_DRAFT = "smollm2-135m-draft-provisional"
# One exit after layer 20 of 30 (1-based "after layer L"), from the trained heads shipped for the default
# target (cloud_server/exit_heads/). Each exit costs a full LM-head read-out per window; layer 20 is the
# deepest whose verdict still leaves roughly a draft window's time of verification on this machine
# (benchmarks/RESULTS.md, "Early-verdict hit rate").
DEFAULT_EXIT_LAYERS = (20,)
DEFAULT_WINDOW = 4
