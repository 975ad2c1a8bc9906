"""Training commands: self-distillation of the target's exit heads (`eespec train-exits`) and
distillation of the draft (`eespec train-draft`)."""

from training.cli import main_train_draft, main_train_exits
from training.exits import train_exits

__all__ = ["main_train_draft", "main_train_exits", "train_exits"]
