"""The benchmark workloads (`benchmarks/workloads/*.json`): prompts, and whether they use a chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The workloads live beside the benchmark scripts at the repository root (an editable install or a checkout).
WORKLOADS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "workloads"


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[str]
    chat: bool
    system: str | None = None

    def encode(self, tokenizer, prompt: str) -> list[int]:
        """The plain tokenizer call, or the chat template (with the workload's system message)."""
        if not self.chat:
            return [int(t) for t in tokenizer(prompt).input_ids]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]


def available_workloads(directory: Path | None = None) -> list[str]:
    directory = directory or WORKLOADS_DIR
    return sorted(p.stem for p in directory.glob("*.json"))


def load_workload(name: str, directory: Path | None = None) -> Workload:
    path = (directory or WORKLOADS_DIR) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_workloads(directory)) or "none"
        raise ValueError(f"unknown workload {name!r} (known: {known}; looked in {path.parent})")
    raw = json.loads(path.read_text())
    return Workload(raw["name"], list(raw["prompts"]), bool(raw.get("chat")), raw.get("system"))
