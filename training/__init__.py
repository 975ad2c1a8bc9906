"""Training commands: self-distillation of the target's exit heads (`eespec train-exits`)."""

from training.cli import main_train_exits
from training.exits import train_exits

__all__ = ["main_train_exits", "train_exits"]
