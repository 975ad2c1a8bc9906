"""The planner seam: observations in, actions out (DESIGN.md, "Planner").

A planner's `plan(obs, emit)` calls `emit(action, verified)` for each action as soon as it is known, so the
daemon can queue an action once the tokens that close it are verified; it returns what the episode log
records about the call. `ModelPlanner` asks a `PlanBackend` (the edge–cloud decoder, wired by the CLI: the
robot package never imports the cloud side) and parses its text strictly.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from robot.actions import MAX_ACTIONS, PLAN_SCHEMA, PlanError, StreamingPlanParser
from robot.interface import RobotState
from robot.perception import SceneDescription

Emit = Callable[[Any, bool], None]


class StreamSink(Protocol):
    """The planner's output as it is generated, for the dashboard; callable from any thread. Kinds:
    `tokens` {text, verified}, `verified` {text} (the oldest unverified text is confirmed), `retract`
    {text} (the newest unverified text is withdrawn), `round` {round, accepted, drafted, early:
    [{layer, hit}], predraft_hit}."""

    def __call__(self, kind: str, **data: Any) -> None: ...


def _no_stream(kind: str, **data: Any) -> None:
    pass


@dataclass(frozen=True)
class Observation:
    t: float  # episode time the observation was taken
    instruction: str
    state: RobotState
    scene: SceneDescription | None
    stream: StreamSink = _no_stream  # where the planner's text goes as it is generated


@dataclass
class PlanStats:
    """What one planning call cost: tokens generated and the decoder's figures (None where not applicable)."""

    tokens: int = 0
    mean_accepted_len: float | None = None
    predraft_hits: int | None = None
    text: str = ""
    rejected: str | None = None  # "code: message" when the text was not a valid plan
    extra: dict[str, Any] = field(default_factory=dict)


class Planner(Protocol):
    mode: str

    async def plan(self, obs: Observation, emit: Emit) -> PlanStats: ...


@dataclass
class Completion:
    text: str
    tokens: int
    mean_accepted_len: float | None = None
    predraft_hits: int | None = None
    constrained: bool = False  # whether the plan grammar constrained the decoding


TextSink = Callable[[str], None]


class PlanBackend(Protocol):
    """A text generator behind the planner: `cloud-ar`, `sd`, `sd-preempt` or `edge-only`.

    `verified` says whether its text is verified by the target (False for the draft alone). `complete`
    calls `on_verified` with each new piece of verified text as it is committed (at the end, for backends
    that cannot stream) and returns the whole completion. `grammar` is the plan's JSON schema; a backend
    passes it on when its decoder takes a grammar, otherwise the strict parser is the only check. A
    backend whose `complete` also takes `on_stream` (a `StreamSink`) reports its whole output there,
    unverified tokens, retractions and rounds included; for the others the verified text is streamed.
    """

    mode: str
    verified: bool
    constrained: bool

    async def complete(
        self, prompt: str, *, max_tokens: int, schema: dict[str, Any], on_verified: TextSink
    ) -> Completion: ...


SYSTEM_PROMPT = (
    "You control a four-legged robot. Answer with a JSON list of at most "
    f"{MAX_ACTIONS} actions and nothing else. Actions: "
    '{"action": "move", "vx": forward m/s (-1..1), "vy": left m/s (-0.5..0.5), "vyaw": left turn rad/s '
    '(-1.5..1.5), "duration_s": seconds (0..5)}; {"action": "turn", "deg": degrees, positive left}; '
    '{"action": "stop"}; {"action": "done"} when the instruction is fulfilled.'
)
EXAMPLE = (
    'Example: the red box is 40 deg left, 2.0 m away -> [{"action": "turn", "deg": 40}, '
    '{"action": "move", "vx": 0.5, "vy": 0, "vyaw": 0, "duration_s": 3}, {"action": "stop"}]'
)


def build_prompt(obs: Observation, *, style: str = "full") -> str:
    """`full`: the grammar spelled out with an example, for a general instruct model; `compact`: the
    observation alone, for a planner model fine-tuned on it (training/planner_data.py), which already knows
    the grammar: a third of the tokens, so a third of the prefill."""
    s = obs.state
    scene = obs.scene.to_text() if obs.scene is not None else "No camera view."
    if style == "compact":
        return (
            f"Instruction: {obs.instruction}\nRobot: {s.posture}, speed {math.hypot(s.vx, s.vy):.2f} m/s.\n"
            f"Camera: {scene}\nPlan:"
        )
    if style != "full":
        raise ValueError(f"unknown prompt style {style!r}: full or compact")
    return (
        f"{SYSTEM_PROMPT}\n{EXAMPLE}\n"
        f"Instruction: {obs.instruction}\n"
        f"Robot: x={s.x:.2f} m, y={s.y:.2f} m, heading {math.degrees(s.yaw):.0f} deg, {s.posture}, "
        f"speed {math.hypot(s.vx, s.vy):.2f} m/s.\n"
        f"Camera: {scene}\nPlan:"
    )


class ModelPlanner:
    """Prompt → backend text → strictly parsed actions, each emitted once its closing text is verified."""

    def __init__(self, backend: PlanBackend, *, max_tokens: int = 96, prompt_style: str = "full") -> None:
        self.backend = backend
        self.mode = backend.mode
        self.max_tokens = max_tokens
        self.prompt_style = prompt_style

    async def plan(self, obs: Observation, emit: Emit) -> PlanStats:
        parser = StreamingPlanParser()
        verified = self.backend.verified
        streams_itself = _takes(self.backend.complete, "on_stream")

        def on_verified(piece: str) -> None:
            if not streams_itself:
                obs.stream("tokens", text=piece, verified=verified)
            if parser.error is not None:
                return
            try:
                actions = parser.feed(piece)
            except ValueError:
                return  # recorded in parser.error; nothing after a malformed piece is acted on
            for action in actions:
                emit(action, verified)

        extra = {"on_stream": obs.stream} if streams_itself else {}
        prompt = build_prompt(obs, style=self.prompt_style)
        completion = await self.backend.complete(
            prompt, max_tokens=self.max_tokens, schema=PLAN_SCHEMA, on_verified=on_verified, **extra
        )
        try:
            parser.finish()
            rejected = None
        except PlanError as exc:  # the valid actions before the fault stay queued; nothing after it
            rejected = str(exc)
        return PlanStats(
            tokens=completion.tokens,
            mean_accepted_len=completion.mean_accepted_len,
            predraft_hits=completion.predraft_hits,
            text=completion.text,
            rejected=rejected,
            extra={"constrained": completion.constrained, "text": completion.text},
        )


def _takes(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def plan_schema_json() -> str:
    return json.dumps(PLAN_SCHEMA)
