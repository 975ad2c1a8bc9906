"""The action grammar (DESIGN.md, "Planner"): a plan is a JSON list of bounded actions, parsed strictly.

The pydantic models below are the one definition; `PLAN_SCHEMA` (the JSON schema handed to the decoder as
its grammar) is derived from them, so the grammar and the parser cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_ACTIONS = 8
MAX_DURATION_S = 5.0

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
Number = Annotated[
    float, Field(allow_inf_nan=False)
]  # strict: a JSON int is a number, a string or bool is not


class Move(BaseModel):
    """A body-frame twist held for `duration_s`."""

    model_config = _STRICT
    action: Literal["move"]
    vx: Annotated[Number, Field(ge=-1.0, le=1.0)] = 0.0
    vy: Annotated[Number, Field(ge=-0.5, le=0.5)] = 0.0
    vyaw: Annotated[Number, Field(ge=-1.5, le=1.5)] = 0.0
    duration_s: Annotated[Number, Field(gt=0.0, le=MAX_DURATION_S)]


class Turn(BaseModel):
    """Turn in place by `deg` (positive = left), closed on the measured yaw."""

    model_config = _STRICT
    action: Literal["turn"]
    deg: Annotated[Number, Field(ge=-180.0, le=180.0)]


class Stop(BaseModel):
    model_config = _STRICT
    action: Literal["stop"]


class StandUp(BaseModel):
    model_config = _STRICT
    action: Literal["stand_up"]


class StandDown(BaseModel):
    model_config = _STRICT
    action: Literal["stand_down"]


class Done(BaseModel):
    model_config = _STRICT
    action: Literal["done"]


Action = Annotated[Move | Turn | Stop | StandUp | StandDown | Done, Field(discriminator="action")]
Plan = Annotated[list[Action], Field(min_length=1, max_length=MAX_ACTIONS)]
_ACTION = TypeAdapter(Action)
_PLAN = TypeAdapter(Plan)
PLAN_SCHEMA: dict[str, Any] = _PLAN.json_schema()


class PlanError(ValueError):
    """The planner's text is not a plan: malformed JSON, an unknown action or an argument out of range."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def parse_action(data: Any) -> Move | Turn | Stop | StandUp | StandDown | Done:
    try:
        return _ACTION.validate_python(data)
    except ValidationError as exc:
        code = "out_of_range" if _is_range_error(exc) else "bad_action"
        raise PlanError(code, _short(exc)) from None


def parse_plan(text: str) -> list[Move | Turn | Stop | StandUp | StandDown | Done]:
    """The whole text must be one JSON list of valid actions (surrounding whitespace allowed)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError("malformed", f"not JSON: {exc}") from None
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_ACTIONS:
        raise PlanError("malformed", f"a plan is a JSON list of 1 to {MAX_ACTIONS} actions")
    return [parse_action(item) for item in data]


class StreamingPlanParser:
    """Parses a plan while its text grows: each action is returned once the characters that close it have
    arrived (so an action is queued as soon as its closing tokens are verified).

    `feed(text)` takes the next piece and returns the actions it completed; it raises `PlanError` for text
    that cannot be a plan's beginning, after which the parser stays failed. `finish()` checks the end.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._item_start: int | None = None
        self._opened = False
        self._closed = False
        self.count = 0
        self.error: PlanError | None = None

    def feed(self, text: str) -> list[Any]:
        if self.error is not None:
            raise self.error
        self._buf += text
        out: list[Any] = []
        try:
            self._scan(out)
        except PlanError as exc:
            self.error = exc
            raise
        return out

    def finish(self) -> None:
        if self.error is not None:
            raise self.error
        if not self._closed:
            self.error = PlanError("malformed", "the plan's list was never closed")
            raise self.error

    def _scan(self, out: list[Any]) -> None:
        while self._pos < len(self._buf):
            ch = self._buf[self._pos]
            i = self._pos
            self._pos += 1
            if self._closed:
                if not ch.isspace():
                    raise PlanError("malformed", "text after the end of the plan")
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                continue
            if not self._opened:
                if ch == "[":
                    self._opened, self._depth = True, 1
                elif not ch.isspace():
                    raise PlanError("malformed", "a plan starts with '['")
                continue
            if ch == '"':
                if self._depth == 1:
                    raise PlanError("malformed", "a plan's items are objects")
                self._in_string = True
            elif ch in "[{":
                if self._depth == 1:
                    if ch == "[":
                        raise PlanError("malformed", "a plan's items are objects")
                    self._item_start = i
                self._depth += 1
            elif ch in "]}":
                self._depth -= 1
                if self._depth == 1 and ch == "}":
                    assert self._item_start is not None
                    item_text = self._buf[self._item_start : i + 1]
                    self._item_start = None
                    try:
                        item = json.loads(item_text)
                    except json.JSONDecodeError as exc:
                        raise PlanError("malformed", f"an action is not JSON: {exc}") from None
                    self.count += 1
                    if self.count > MAX_ACTIONS:
                        raise PlanError("malformed", f"a plan has at most {MAX_ACTIONS} actions")
                    out.append(parse_action(item))
                elif self._depth == 0:
                    if ch != "]" or self.count == 0:
                        raise PlanError("malformed", "a plan is a non-empty JSON list")
                    self._closed = True
                elif self._depth < 0:
                    raise PlanError("malformed", "unbalanced brackets")
            elif self._depth == 1 and not (ch.isspace() or ch == ","):
                raise PlanError("malformed", "a plan's items are objects")


def actions_text(actions: Iterator[Any] | list[Any]) -> str:
    return json.dumps([a.model_dump(mode="json") for a in actions], separators=(",", ":"))


def _is_range_error(exc: ValidationError) -> bool:
    kinds = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
    return any(e["type"] in kinds for e in exc.errors())


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
