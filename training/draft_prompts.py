"""Prompts for the text the target generates to teach the draft: code heads from the standard library,
English openings, robot instructions in chat form. Built from offline material and templates, seeded, with
anything that overlaps a benchmark workload prompt removed (the workloads are what the draft is judged on).
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from training.corpus import (
    TextFile,
    assign_splits,
    contains_prompt,
    prompt_pattern,
    stdlib_files,
    workload_prompts,
)


@dataclass(frozen=True)
class GenPrompt:
    """One generation prompt: plain text to continue, or a chat (`system` + `user`)."""

    kind: str
    text: str
    system: str | None = None
    chat: bool = False

    def encode(self, tokenizer) -> list[int]:
        if not self.chat:
            return [int(t) for t in tokenizer(self.text).input_ids]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": self.text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        return [int(t) for t in ids]


def function_heads(files: list[TextFile], limit: int, rng: random.Random) -> list[str]:
    """`def name(args):` plus its docstring (when it has one), as written in the source, from `files`."""
    heads: list[str] = []
    for f in rng.sample(files, len(files)):
        try:
            source = f.read()
            tree = ast.parse(source)
        except (SyntaxError, ValueError, UnicodeError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.col_offset != 0 or not node.body:
                continue
            first = node.body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            end = first.end_lineno if has_doc and first.end_lineno else node.body[0].lineno - 1
            head = "".join(lines[node.lineno - 1 : end])
            if 10 < len(head) < 600:
                heads.append(head)
            if len(heads) >= limit * 4:
                break
        if len(heads) >= limit * 4:
            break
    return rng.sample(heads, min(limit, len(heads)))


_OPENINGS = (
    "In the early years of",
    "Most people who study",
    "The first thing to know about",
    "It was late in the evening when",
    "Nobody in the town had ever seen",
    "A short introduction to",
    "When she opened the letter about",
    "The old map showed",
    "Scientists have long wondered about",
    "Every spring, the farmers near",
    "He had always believed that",
    "The museum's new exhibit on",
    "On the morning of the festival,",
    "The reason so many travellers visit",
    "Before the invention of",
    "There is an old story about",
    "The captain looked out over",
    "Our understanding of",
    "The letter began with a question about",
    "In a quiet corner of the library,",
)
_TOPICS = (
    "the northern mountains",
    "river trade",
    "the steam engine",
    "ancient Rome",
    "the life of bees",
    "the lighthouse keeper",
    "modern cities",
    "the desert caravan",
    "the human heart",
    "clockmakers",
    "the first railways",
    "glass making",
    "the winter market",
    "a lost violin",
    "volcanoes",
    "the school garden",
    "the moon landing",
    "sailing ships",
    "the baker's daughter",
    "forest fires",
    "paper money",
    "the telescope",
    "a small island",
    "coral reefs",
)
_CHAT_QUESTIONS = (
    "Explain in two sentences what {topic} is.",
    "Write a short paragraph about {topic}.",
    "Give three facts about {topic}.",
    "Describe {topic} to a child.",
)

_ROBOTS = (
    (
        "You drive a wheeled warehouse robot. Reply with one command per line using only: "
        "forward(meters), backward(meters), rotate(degrees), lift(), lower(), wait(seconds).",
        ("forward", "backward", "rotate", "lift", "lower", "wait"),
    ),
    (
        "You control a robot arm on a table. Answer with one call per line from: "
        "move_to(x, y, z), open_gripper(), close_gripper(), home().",
        ("move_to", "open_gripper", "close_gripper", "home"),
    ),
    (
        "You pilot a small drone. Output one action per line, chosen from: takeoff(), land(), "
        "fly(dx, dy, dz), yaw(degrees), hover(seconds).",
        ("takeoff", "land", "fly", "yaw", "hover"),
    ),
    (
        "You command a legged robot. Respond with one action per line from: "
        "walk(vx, vy, yaw_rate, seconds), sit(), rise(), halt().",
        ("walk", "sit", "rise", "halt"),
    ),
)
_ROBOT_VERBS = (
    "go {dist} meters forward",
    "turn {deg} degrees to the {side}",
    "pick up the {obj}",
    "move to the {place}",
    "carry the {obj} to the {place}",
    "back up {dist} meters",
    "wait {sec} seconds",
    "put the {obj} down next to the {place}",
    "rise, then go {dist} meters ahead",
    "stop and sit",
)
_OBJECTS = ("red box", "blue cup", "pallet", "small crate", "tool bag", "bottle", "package", "sensor")
_PLACES = ("loading dock", "charging station", "shelf", "window", "table", "front door", "corner")


def robot_instruction(rng: random.Random) -> str:
    steps = []
    for _ in range(rng.randint(1, 3)):
        steps.append(
            rng.choice(_ROBOT_VERBS).format(
                dist=rng.choice(("one", "two", "three", "0.5", "1.5", "4")),
                deg=rng.choice(("45", "90", "180", "30")),
                side=rng.choice(("left", "right")),
                obj=rng.choice(_OBJECTS),
                place=rng.choice(_PLACES),
                sec=rng.choice(("2", "5", "10")),
            )
        )
    text = ", then ".join(steps)
    return text[0].upper() + text[1:] + "."


def build_prompts(count: int, *, seed: int = 0, heldout_fraction: float = 0.03) -> list[GenPrompt]:
    """About `count` prompts: 40 % code heads (training-split stdlib files only), 30 % English (openings and
    chat questions), 30 % robot instructions (chat), none overlapping a workload prompt."""
    rng = random.Random(seed)
    files = stdlib_files()
    splits = assign_splits(files, seed, heldout_fraction)
    train_files = [f for f in files if splits[f.name] == "train"]
    n_code = int(count * 0.4)
    n_prose = int(count * 0.3)
    n_robot = count - n_code - n_prose
    prompts = [GenPrompt("code", head) for head in function_heads(train_files, n_code, rng)]
    for i in range(n_prose):
        topic = rng.choice(_TOPICS)
        if i % 3 == 2:
            question = rng.choice(_CHAT_QUESTIONS).format(topic=topic)
            prompts.append(GenPrompt("prose", question, chat=True))
        else:
            prompts.append(GenPrompt("prose", f"{rng.choice(_OPENINGS)} {topic}"))
    for _ in range(n_robot):
        system, _actions = rng.choice(_ROBOTS)
        prompts.append(GenPrompt("robot", robot_instruction(rng), system=system, chat=True))
    pattern = prompt_pattern(workload_prompts())
    kept = [p for p in prompts if not contains_prompt(p.text, pattern)]
    rng.shuffle(kept)
    return kept
