"""`python -m training ARGS` is `eespec train-exits ARGS`."""

from training.cli import main_train_exits

raise SystemExit(main_train_exits())
