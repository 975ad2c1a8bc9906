"""Shared pieces of the benchmark scripts: workloads, placement on cores, a served target process."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

from eespec.processes import ServerProcess, free_port, pin_to_core

__all__ = ["ServerProcess", "free_port", "pin_to_core", "load_workload", "machine_line", "summary"]

WORKLOADS_DIR = Path(__file__).parent / "workloads"


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[str]
    chat: bool
    system: str | None = None

    def encode(self, tokenizer, prompt: str) -> list[int]:
        if not self.chat:
            return [int(t) for t in tokenizer(prompt).input_ids]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        return [int(t) for t in ids]


def load_workload(name: str) -> Workload:
    raw = json.loads((WORKLOADS_DIR / f"{name}.json").read_text())
    return Workload(raw["name"], list(raw["prompts"]), bool(raw.get("chat")), raw.get("system"))


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
