"""A helper process of `eespec bench` that holds draft and target in one process.

    python -m eespec.bench.worker --target NAME|PATH --draft NAME|PATH --cores 0 --threads 1

It runs the modes that need no network — `colocated-sd` (our speculative decoder with both models in one
process: what the server side would run for itself) and `hf-assisted` (transformers'
`generate(assistant_model=draft)`) — and the greedy references (the target's own `generate()`).
The harness starts it on the server's placement (core 0, the server's threads) for colocated-sd and the
references, and on both cores with both processes' threads for hf-assisted, while the server and the
edge process sit idle.

Protocol: one JSON object per line on stdin (a job), one JSON object per line on stdout (its result, or
{"error": ...}); {"ready": ...} first, once the models are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def _eos_ids(model, tokenizer) -> list[int]:
    from cloud_server.engine import eos_ids_of

    return eos_ids_of(model, tokenizer)


class _FirstTokenClock:
    """A transformers streamer that notes when the first generated tokens arrive (the prompt comes first)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class Worker:
    def __init__(self, target: str, draft: str, dtype: str = "auto") -> None:
        from edge_client.proposers import split_draft_name
        from shared.models import load_model
        from shared.precision import load_in_precision

        # The reference is the served model in the served precision (its own generate()).
        self.target_model, self.tokenizer = load_in_precision(target, dtype)
        draft_name, self.ngram = split_draft_name(draft)
        self.draft_model, _ = load_model(draft_name)
        self.eos = _eos_ids(self.target_model, self.tokenizer)
        self.calls = {"target": 0, "draft": 0}
        self.target_model.register_forward_pre_hook(lambda *_: self._count("target"))
        self.draft_model.register_forward_pre_hook(lambda *_: self._count("draft"))

    def _count(self, which: str) -> None:
        self.calls[which] += 1

    # -- jobs --------------------------------------------------------------------------------------

    def reference(self, job: dict[str, Any]) -> dict[str, Any]:
        import torch

        ids = torch.tensor([job["prompt_ids"]])
        with torch.inference_mode():
            out = self.target_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=int(job["max_tokens"]),
                eos_token_id=self.eos or None,
                pad_token_id=self.eos[0] if self.eos else 0,
            )
        return {"token_ids": out[0, ids.shape[1] :].tolist()}

    def colocated_sd(self, job: dict[str, Any]) -> dict[str, Any]:
        from cloud_server.engine import EarlyExitTarget, EngineLimits, TargetSession
        from edge_client.decoder import SpeculativeDecoder
        from edge_client.draft import DraftEngine
        from edge_client.proposers import make_proposer

        window = job["window"]
        if not isinstance(window, int):
            raise ValueError(
                "colocated-sd runs fixed windows only (the in-process decoder has no adaptive window)"
            )
        # No exits: with both models in one process nothing can be pre-drafted while the target runs, so
        # exits would only cost time.
        session = TargetSession(
            EarlyExitTarget(self.target_model, None),
            eos_ids=self.eos,
            tokenizer=self.tokenizer,
            limits=EngineLimits(max_window=16),
        )
        clock: dict[str, float] = {}

        class Timed:
            def start(self, *args, **kwargs):
                started = session.start(*args, **kwargs)
                clock["first"] = time.perf_counter()
                clock["prefill_s"] = started.server_ms / 1000.0
                return started

            def verify(self, *args, **kwargs):
                return session.verify(*args, **kwargs)

        proposer = make_proposer(DraftEngine(self.draft_model), ngram=self.ngram)
        decoder = SpeculativeDecoder(proposer, Timed(), window=window, preempt=False)
        t0 = time.perf_counter()
        result = decoder.generate(
            job["prompt_ids"], max_tokens=int(job["max_tokens"]), sampling=_sampling(job.get("sampling"))
        )
        t_end = time.perf_counter()
        m = result.metrics
        n = len(result.token_ids)
        verify_s = m.server_busy_s - clock["prefill_s"]
        return {
            "token_ids": result.token_ids,
            "tokens": n,
            "latency_s": t_end - t0,
            "ttft_s": clock["first"] - t0,
            "rounds": m.rounds,
            "drafted": m.drafted,
            "accepted": m.accepted,
            "cloud_busy_s": m.draft_s + m.server_busy_s,  # the whole model time of the "server" process
            "draft_ms_per_round": 1000.0 * m.draft_s / m.rounds if m.rounds else None,
            "server_ms_per_round": 1000.0 * verify_s / m.rounds if m.rounds else None,
        }

    def hf_assisted(self, job: dict[str, Any]) -> dict[str, Any]:
        import torch

        window = job["window"]
        config = self.draft_model.generation_config
        if isinstance(window, int):  # a fixed window: k draft tokens every round
            config.num_assistant_tokens = window
            config.num_assistant_tokens_schedule = "constant"
            config.assistant_confidence_threshold = 0.0
        else:  # transformers' own adaptivity: up to 20 tokens, cut where the draft's confidence drops
            config.num_assistant_tokens = 20
            config.num_assistant_tokens_schedule = "constant"
            config.assistant_confidence_threshold = 0.4
        sampling = job.get("sampling")
        kwargs: dict[str, Any] = {"do_sample": False}
        if sampling is not None and sampling["temperature"] > 0:
            kwargs = {
                "do_sample": True,
                "temperature": sampling["temperature"],
                "top_p": sampling["top_p"],
                "top_k": sampling["top_k"],
            }
            torch.manual_seed(int(sampling["seed"]))
        ids = torch.tensor([job["prompt_ids"]])
        clock = _FirstTokenClock()
        calls0 = dict(self.calls)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.target_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                assistant_model=self.draft_model,
                max_new_tokens=int(job["max_tokens"]),
                eos_token_id=self.eos or None,
                pad_token_id=self.eos[0] if self.eos else 0,
                streamer=clock,
                **kwargs,
            )
        t_end = time.perf_counter()
        generated = out[0, ids.shape[1] :].tolist()
        rounds = self.calls["target"] - calls0["target"]  # assisted decoding verifies in every target call
        drafted = self.calls["draft"] - calls0["draft"]  # one draft forward per drafted token
        accepted = max(0, len(generated) - rounds)
        return {
            "token_ids": generated,
            "tokens": len(generated),
            "latency_s": t_end - t0,
            "ttft_s": (clock.first or t_end) - t0,
            "rounds": rounds,
            "drafted": drafted,
            "accepted": accepted,
            "cloud_busy_s": t_end - t0,  # one process doing nothing but this generation
            "draft_ms_per_round": None,
            "server_ms_per_round": None,
        }


def _sampling(raw: dict[str, Any] | None):
    from shared.sampling import SamplingParams

    if raw is None:
        return SamplingParams()
    return SamplingParams(
        temperature=raw["temperature"], top_k=raw["top_k"], top_p=raw["top_p"], seed=int(raw["seed"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--cores", default=None, help="comma-separated CPU cores to pin to")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="the target's precision (shared.precision)")
    args = parser.parse_args(argv)
    if args.cores and hasattr(os, "sched_setaffinity"):
        cores = {int(c) for c in args.cores.split(",")}
        available = os.sched_getaffinity(0)
        if cores <= available:
            os.sched_setaffinity(0, cores)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but results on the protocol stream
    worker = Worker(args.target, args.draft, args.dtype)
    jobs = {
        "reference": worker.reference,
        "colocated-sd": worker.colocated_sd,
        "hf-assisted": worker.hf_assisted,
    }

    def reply(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    reply({"ready": True, "threads": torch.get_num_threads(), "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            reply(jobs[job["op"]](job))
        except Exception as exc:  # report and keep serving
            reply({"error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
