"""The benchmark workloads (package data `shared/workloads/*.json`): prompts, and their chat template.

They live in `shared` because two sides read them: every measurement runs them (`eespec bench` and the
benchmark scripts), and every training command must exclude them from its data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


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


def _shipped() -> dict[str, str]:
    """Shipped workload files by name, read through the package's resources (works from a wheel too)."""
    root = resources.files(__name__)
    return {
        entry.name.removesuffix(".json"): entry.read_text(encoding="utf-8")
        for entry in root.iterdir()
        if entry.name.endswith(".json")
    }


def available_workloads(directory: Path | None = None) -> list[str]:
    if directory is not None:
        return sorted(p.stem for p in directory.glob("*.json"))
    return sorted(_shipped())


def _parse(raw: dict) -> Workload:
    return Workload(raw["name"], list(raw["prompts"]), bool(raw.get("chat")), raw.get("system"))


def load_workload(name: str, directory: Path | None = None) -> Workload:
    """A shipped workload by name, or `DIR/NAME.json` when `directory` is given."""
    if directory is not None:
        path = directory / f"{name}.json"
        if not path.is_file():
            known = ", ".join(available_workloads(directory)) or "none"
            raise ValueError(f"unknown workload {name!r} (known: {known}; looked in {directory})")
        return _parse(json.loads(path.read_text(encoding="utf-8")))
    shipped = _shipped()
    if name not in shipped:
        known = ", ".join(sorted(shipped)) or "none"
        raise ValueError(f"unknown workload {name!r} (shipped: {known})")
    return _parse(json.loads(shipped[name]))


def load_workloads_file(path: Path) -> list[Workload]:
    """A user's prompts file: `{"workload name": [prompt, ...], ...}` (plain prompts, no chat template)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{path}: expected a JSON object {{"workload name": [prompt, ...]}}')
    workloads = []
    for name, prompts in raw.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f"{path}: workload {name!r} must be a non-empty list of non-empty strings")
        workloads.append(Workload(str(name), list(prompts), chat=False))
    return workloads


def exclusion_strings() -> list[str]:
    """Every `prompts` entry and `system` string of the shipped workloads: text no training set may contain.

    Never empty: a training command that excluded nothing would silently train on the benchmark.
    """
    strings: list[str] = []
    for name in available_workloads():
        workload = load_workload(name)
        strings.extend(workload.prompts)
        if workload.system:
            strings.append(workload.system)
    if not strings:
        raise RuntimeError(
            "no benchmark workloads found in the installed package: refusing to train without "
            "excluding them (is shared/workloads/*.json missing from the install?)"
        )
    return strings


__all__ = ["Workload", "available_workloads", "exclusion_strings", "load_workload", "load_workloads_file"]
