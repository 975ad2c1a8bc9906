"""The precision a model is served in: float32, bfloat16, float16, or int8 weight-only (bf16 activations);
`auto` is a known model's serving default (`SERVING_DEFAULTS`), else the precision its weights are stored in.

The exactness reference is always the served model *in the served precision*: a target loaded with
`apply_precision(model, p)` is compared with that same model's own `generate()`, never with float32.

`int8` stores each linear layer's weight as int8 with one bfloat16 scale per output row (symmetric,
round-to-nearest) and multiplies with `aten._weight_int8pack_mm` (the kernel gpt-fast uses for CPU int8).
Activations stay bfloat16 and every row of a window is computed on its own (no per-batch activation
scale, unlike `torch.ao` dynamic quantisation, whose scale would make a window's logits depend on its
later tokens and break window-vs-step exactness). The embedding stays bfloat16.

`bfloat16` linear layers become `RowStableLinear`: oneDNN's bfloat16 GEMM gives each row the same bits
whatever the row count, except for a single row, which some CPUs (AMD EPYC with AVX512-BF16, measured
2026-12-02) send through a GEMV whose float32 reduction order differs; a one-token step's logits then
differ from the same row's in a window, and near-ties flip. A one-row input is therefore fed as two
(itself twice) and the first row kept: about 5 % on a step's GEMMs, and a step equals a window's row.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

Precision = Literal["auto", "float32", "bfloat16", "float16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# What `auto` serves a known target in. SmolLM2-135M-Instruct: bfloat16, the fastest precision whose greedy
# output equals its own generate() (tests/test_precision.py, slow) and whose window forward costs about one
# token step on an AVX512-BF16 / AMX CPU (benchmarks/RESULTS.md, "Verify cost"). int8 is faster per token
# still but costs 1.5x a step per window of 5, and quantises the published weights.
SERVING_DEFAULTS: dict[str, str] = {"smollm2-135m-instruct": "bfloat16"}

# Precisions served with row-wise attention (shared.attention): in bfloat16 a window's logits must equal
# one-token steps' bit for bit, or near-ties flip (with SDPA, 3 of 9 real-model generations differed from
# generate()). bfloat16 GEMMs compute each row on its own on the CPUs measured (AMX / AVX512-BF16) once a
# one-row product is fed as two (`RowStableLinear`);
# float32 ones do not, but float32 differences are far below its argmax margins (the float32 path is
# unchanged, SDPA, as before).
ROW_WISE_PRECISIONS = frozenset({"bfloat16", "int8"})

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name  # type: ignore[return-value]


def resolve_precision(name_or_path, precision: str) -> str:
    """`auto` → the serving default of a known model name, else "stored"; any other precision as given."""
    precision = check_precision(precision)
    if precision != "auto":
        return precision
    return SERVING_DEFAULTS.get(str(name_or_path).rstrip("/").split("/")[-1], "stored")


def activation_dtype(precision: Precision) -> torch.dtype:
    """The dtype of the model's activations (and KV cache) in `precision`."""
    return torch.bfloat16 if precision == "int8" else _FLOAT_DTYPES[precision]


class Int8WeightLinear(nn.Module):
    """y = x Wᵀ (+ b) with W as int8 rows and a per-row scale; x in bfloat16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.float32)
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class RowStableLinear(nn.Linear):
    """`nn.Linear` whose one-row products go through the same GEMM kernel as many-row ones (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] != 1:
            return super().forward(x)
        return super().forward(rows.expand(2, -1))[:1].reshape(*x.shape[:-1], self.out_features)


def make_linears_row_stable(model: nn.Module) -> int:
    """Turn every plain `nn.Linear` of `model` into a `RowStableLinear` in place (same parameters, same
    state dict); returns how many."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowStableLinear
            changed += 1
    return changed


def quantize_int8_weights(model: nn.Module) -> int:
    """Replace every `nn.Linear` of the decoder stack and the LM head in place; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, Int8WeightLinear(child))
                replaced += 1
    return replaced


def load_in_precision(name_or_path, precision: str = "auto", *, device: str = "cpu"):
    """`shared.models.load_model` in `precision` (loaded in the activation dtype, then quantised)."""
    from shared.models import load_model

    resolved = resolve_precision(name_or_path, precision)
    if resolved == "stored":
        return load_model(name_or_path, device=device)
    model, tokenizer = load_model(name_or_path, dtype=activation_dtype(resolved), device=device)  # type: ignore[arg-type]
    return apply_precision(model, resolved), tokenizer


def apply_precision(model, precision: str):
    """Cast (or quantise) a loaded model in place to `precision` (not `auto`); returns it."""
    precision = check_precision(precision)
    if precision == "auto":
        raise ValueError("apply_precision needs a concrete precision; resolve `auto` first")
    model.to(activation_dtype(precision))
    if precision == "int8":
        quantize_int8_weights(model)
    elif precision == "bfloat16":
        make_linears_row_stable(model)
    if precision in ROW_WISE_PRECISIONS:
        from shared.attention import ROWWISE_ATTENTION

        model.set_attn_implementation(ROWWISE_ATTENTION)
    return model
