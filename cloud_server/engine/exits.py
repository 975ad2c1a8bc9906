"""Exit heads: a small trainable adapter per exit layer, read through the model's own norm and LM head.

An exit after decoder layer L (1-based: "after layer L") maps that layer's hidden state h to logits
lm_head(norm(adapter(h))). Adapters are residual (h + f(h)) and zero-initialised, so an untrained head is
exactly the base model's own intermediate read-out. Stored as `exits.safetensors` + `exits.json`.

An exit may read a *shortlist* instead of the whole vocabulary (`shortlist.json` beside the heads, made by
`python -m training.exit_shortlist`): logits only for frequent tokens plus the window's draft tokens, the
rest −inf. An early verdict is a prediction, so this trades a few misses (a target token off the list)
for a read-out ~10× cheaper than the full LM head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shared.vlm import text_config

AdapterKind = Literal["linear", "lowrank"]
CONFIG_NAME = "exits.json"
WEIGHTS_NAME = "exits.safetensors"
SHORTLIST_NAME = "shortlist.json"


@dataclass(frozen=True)
class ExitConfig:
    layers: tuple[int, ...]
    hidden_size: int
    kind: AdapterKind = "linear"
    rank: int = 64
    base_model: str = ""
    notes: dict[str, object] = field(default_factory=dict)
    # What the heads were trained on (`model_fingerprint`): checked against the model they are loaded for.
    # Empty in files written before it existed; then only the hidden size and the layer count are checked.
    model: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers or any(layer < 1 for layer in self.layers):
            raise ValueError("exit layers are 1-based decoder layer counts (≥ 1)")
        if self.kind not in ("linear", "lowrank"):
            raise ValueError(f"unknown adapter kind {self.kind!r}")


class ExitAdapter(nn.Module):
    """h + f(h), f zero at initialisation: a full linear map or a low-rank (down, up) pair."""

    def __init__(self, hidden_size: int, kind: AdapterKind = "linear", rank: int = 64) -> None:
        super().__init__()
        if kind == "linear":
            self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            self.proj = nn.Sequential(
                nn.Linear(hidden_size, rank, bias=False), nn.Linear(rank, hidden_size, bias=False)
            )
            nn.init.normal_(self.proj[0].weight, std=hidden_size**-0.5)
            nn.init.zeros_(self.proj[1].weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(hidden)


def exit_logits(
    hidden: torch.Tensor, adapter: nn.Module, norm: nn.Module, lm_head: nn.Module
) -> torch.Tensor:
    """The exit's logits from a decoder layer's hidden states, through the model's own norm and head."""
    return lm_head(norm(adapter(hidden)))


def lm_head_rows(lm_head: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The LM head's weight rows for `ids` [n, hidden] (dequantised when the head is int8 weight-only)."""
    weight = getattr(lm_head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight[ids]
    scales = lm_head.scales  # shared.precision.Int8WeightLinear
    return lm_head.weight_int8[ids].to(scales.dtype) * scales[ids, None]


class ShortlistReadout:
    """Exit logits over a fixed shortlist plus per-window extra ids; every other id is −inf."""

    def __init__(self, lm_head: nn.Module, ids: Sequence[int], vocab_size: int) -> None:
        self.lm_head = lm_head
        self.vocab_size = vocab_size
        self.ids = torch.tensor(
            sorted(set(int(i) for i in ids if 0 <= int(i) < vocab_size)), dtype=torch.long
        )
        self.weight = lm_head_rows(lm_head, self.ids).detach()

    def to(self, device: torch.device) -> ShortlistReadout:
        self.ids = self.ids.to(device)
        self.weight = self.weight.to(device)
        return self

    def logits(self, normed: torch.Tensor, extra_ids: Sequence[int] = ()) -> torch.Tensor:
        """normed [n, hidden] (after adapter and final norm) → logits [n, vocab]."""
        out = torch.full(
            (normed.shape[0], self.vocab_size), float("-inf"), dtype=normed.dtype, device=normed.device
        )
        out[:, self.ids] = normed @ self.weight.T
        if extra_ids:
            extra = torch.tensor(sorted(set(extra_ids)), dtype=torch.long, device=normed.device)
            out[:, extra] = normed @ lm_head_rows(self.lm_head, extra).T
        return out


class ExitHeads(nn.Module):
    """The adapters of every exit, keyed by layer."""

    def __init__(self, config: ExitConfig, shortlist: Sequence[int] | None = None) -> None:
        super().__init__()
        self.config = config
        # Token ids the exits read instead of the whole vocabulary (None: the full LM head).
        self.shortlist: tuple[int, ...] | None = tuple(shortlist) if shortlist is not None else None
        self.adapters = nn.ModuleDict(
            {str(layer): ExitAdapter(config.hidden_size, config.kind, config.rank) for layer in config.layers}
        )

    @property
    def layers(self) -> tuple[int, ...]:
        return self.config.layers

    def adapter(self, layer: int) -> nn.Module:
        return self.adapters[str(layer)]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        payload = asdict(self.config) | {"layers": list(self.config.layers)}
        (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
        if self.shortlist is not None:
            (directory / SHORTLIST_NAME).write_text(json.dumps({"ids": list(self.shortlist)}) + "\n")
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, dtype: torch.dtype | None = None, *, shortlist: bool = True
    ) -> ExitHeads:
        """The heads in `directory`, with its `shortlist.json` unless `shortlist` is False."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        raw = json.loads(config_path.read_text())
        config = ExitConfig(
            layers=tuple(int(x) for x in raw["layers"]),
            hidden_size=int(raw["hidden_size"]),
            kind=raw.get("kind", "linear"),
            rank=int(raw.get("rank", 64)),
            base_model=str(raw.get("base_model", "")),
            notes=dict(raw.get("notes", {})),
            model=dict(raw.get("model", {})),
        )
        state = load_file(str(directory / WEIGHTS_NAME))
        shortlist_path = directory / SHORTLIST_NAME
        ids = (
            json.loads(shortlist_path.read_text())["ids"] if shortlist and shortlist_path.is_file() else None
        )
        heads = cls(config, ids)
        heads.to(next(iter(state.values())).dtype)  # load at the stored precision, then cast if asked
        heads.load_state_dict(state)
        if dtype is not None:
            heads.to(dtype)
        return heads.eval()

    def subset(self, layers: tuple[int, ...] | list[int]) -> ExitHeads:
        """The same heads restricted to `layers` (each must have a head here)."""
        missing = sorted(set(layers) - set(self.layers))
        if missing:
            raise ValueError(f"no trained exit head for layers {missing}; available: {list(self.layers)}")
        config = ExitConfig(
            layers=tuple(sorted(set(layers))),
            hidden_size=self.config.hidden_size,
            kind=self.config.kind,
            rank=self.config.rank,
            base_model=self.config.base_model,
            notes=self.config.notes,
            model=self.config.model,
        )
        heads = ExitHeads(config, self.shortlist).to(next(self.parameters()).dtype)
        for layer in config.layers:
            heads.adapters[str(layer)].load_state_dict(self.adapters[str(layer)].state_dict())
        return heads.eval()

    @classmethod
    def untrained(cls, layers: tuple[int, ...], hidden_size: int, kind: AdapterKind = "linear") -> ExitHeads:
        """Zero-initialised heads: each exit reads the base model's own intermediate state."""
        return cls(ExitConfig(layers=tuple(layers), hidden_size=hidden_size, kind=kind)).eval()


# Package data of `cloud_server` (cloud_server/exit_heads/<model>/), found through the package's resources.
# (It was Path(__file__).parent / "exit_heads" — cloud_server/engine/exit_heads, which does not exist —
# since the engine moved into cloud_server/engine, so the trained heads were silently not used.)
SHIPPED_DIR = Path(str(resources.files("cloud_server") / "exit_heads"))


def shipped_exit_heads(model_name: str) -> Path | None:
    """The trained heads shipped for a known model name (`cloud_server/exit_heads/<name>/`), if any."""
    directory = SHIPPED_DIR / Path(model_name).name
    return directory if (directory / CONFIG_NAME).is_file() else None


def model_fingerprint(model: nn.Module, tokenizer=None) -> dict[str, object]:
    """What exit heads depend on: the architecture's shape and, when given, the tokenizer's vocabulary
    (a vision-language model's: its language model's)."""
    config = text_config(model.config)
    fingerprint: dict[str, object] = {
        "model_type": str(getattr(config, "model_type", "")),
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "vocab_size": int(config.vocab_size),
    }
    if tokenizer is not None:
        from shared.hashing import vocab_hash

        fingerprint["vocab_hash"] = vocab_hash(tokenizer)
    return fingerprint


def check_heads_fit(heads: ExitHeads, fingerprint: dict[str, object], source: str) -> None:
    """Raise a clear error when `heads` were trained for another model than the one `fingerprint` names.

    A misfit head would not break exactness (the final verdict is the full model's) but its early verdicts
    would be noise: every early frame wasted, silently. Heads chosen by folder name alone were never checked.
    """
    trained_for = heads.config.base_model or "an unnamed model"
    problems = []
    if heads.config.hidden_size != fingerprint["hidden_size"]:
        problems.append(f"hidden size {heads.config.hidden_size}, the model has {fingerprint['hidden_size']}")
    too_deep = [layer for layer in heads.layers if layer > int(fingerprint["num_hidden_layers"])]
    if too_deep:
        problems.append(f"exit layers {too_deep}, the model has {fingerprint['num_hidden_layers']} layers")
    if heads.shortlist and max(heads.shortlist) >= int(fingerprint["vocab_size"]):
        problems.append(f"a shortlist id beyond the model's vocabulary ({fingerprint['vocab_size']})")
    for key, value in heads.config.model.items():
        if key in fingerprint and fingerprint[key] != value:
            problems.append(f"{key} {value!r}, the model has {fingerprint[key]!r}")
    if problems:
        raise ValueError(
            f"the exit heads in {source} were trained for {trained_for} and do not fit this model: "
            + "; ".join(problems)
            + " (pass the heads trained for this model with --exits-dir, or train them: eespec train-exits)"
        )


def resolve_exit_heads(
    model_name: str,
    hidden_size: int,
    layers: tuple[int, ...] | list[int],
    exits_dir: str | Path | None,
    *,
    fingerprint: dict[str, object] | None = None,
) -> ExitHeads | None:
    """Trained heads from `exits_dir` (or the shipped ones for `model_name`), restricted to `layers` when
    given; without trained heads, zero-initialised ones at `layers`; None when neither says any. With
    `fingerprint` (`model_fingerprint` of the model) the trained heads are checked to fit it."""
    directory = Path(exits_dir) if exits_dir else shipped_exit_heads(model_name)
    if directory is not None:
        heads = ExitHeads.load(directory)
        if fingerprint is not None:
            check_heads_fit(heads, fingerprint, str(directory))
        return heads.subset(layers) if layers else heads
    return ExitHeads.untrained(tuple(layers), hidden_size) if layers else None
