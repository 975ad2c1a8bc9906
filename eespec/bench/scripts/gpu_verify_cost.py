"""Verify cost on a GPU: one window forward (k draft tokens + the pending token) for k = 1..16, eager,
with and without early exits, on random-weight SmolLM2-135M- and Llama-2-7B-shaped targets (bf16).

    python -m eespec.bench.scripts.gpu_verify_cost --json out.json

Each figure is the median (min, max) of --repeats timed forwards after warm-ups, with CUDA synchronised
around each; the prefix holds --prefix tokens in a DynamicCache that is cropped back after each forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cloud_server.engine import EarlyExitTarget, ExitHeads
from shared.sampling import SamplingParams
from shared.verification import verify_window

SHAPES = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        exits=(10, 20),
    ),
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
        exits=(16,),
    ),
}


def build(shape: str) -> tuple[LlamaForCausalLM, tuple[int, ...]]:
    spec = dict(SHAPES[shape])
    exits = spec.pop("exits")
    config = LlamaConfig(**spec, max_position_embeddings=4096)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model, exits


def time_windows(target: EarlyExitTarget, vocab: int, prefix: int, windows: range, repeats: int, exits: bool):
    seq = target.new_kv_cache()
    gen = torch.Generator().manual_seed(1)
    seq.forward(torch.randint(0, vocab, (prefix,), generator=gen).tolist())
    greedy = SamplingParams()
    results = {}
    for k in windows:
        tokens = torch.randint(0, vocab, (k + 1,), generator=gen).tolist()

        def on_exit(layer, logits, t_ms, draft=tokens[1:]):
            verify_window(logits, draft, greedy)  # the early verdict: argmax + copy to the host

        samples = []
        for i in range(repeats + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits = target.forward(seq, tokens, keep=k + 1, on_exit=on_exit if exits else None)
            verify_window(logits, tokens[1:], greedy)
            torch.cuda.synchronize()
            if i >= 3:
                samples.append((time.perf_counter() - t0) * 1000.0)
            seq.truncate(prefix)
        results[k] = {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="smollm2-135m,llama2-7b")
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for shape in args.shapes.split(","):
        model, exit_layers = build(shape)
        plain = EarlyExitTarget(model)
        no_exit = time_windows(plain, model.config.vocab_size, args.prefix, range(1, 17), args.repeats, False)
        plain.close()
        heads = ExitHeads.untrained(exit_layers, model.config.hidden_size)
        with_exits = EarlyExitTarget(model, heads)
        exit_ms = time_windows(
            with_exits, model.config.vocab_size, args.prefix, range(1, 17), args.repeats, True
        )
        with_exits.close()
        report["shapes"][shape] = {"exit_layers": exit_layers, "no_exits": no_exit, "with_exits": exit_ms}
        print(f"\n{shape} ({report['device']}, bf16, eager, prefix {args.prefix}); exits after {exit_layers}")
        print("| window k | verify ms (no exits) | verify ms (with exits) | exit overhead |")
        print("| ---: | ---: | ---: | ---: |")
        for k in range(1, 17):
            a, b = no_exit[k]["median"], exit_ms[k]["median"]
            spread = f"{no_exit[k]['min']:.2f}–{no_exit[k]['max']:.2f}"
            print(f"| {k} | {a:.2f} ({spread}) | {b:.2f} | {100 * (b / a - 1):+.0f} % |")
        del model, plain, with_exits
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
