"""The planner's teacher and data set (training/planner_expert.py, training/planner_data.py), the compact
prompt, the adapted-model registry entries and the merge that builds them (on a tiny model)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import jsonschema
import pytest
import torch

from robot import PLAN_SCHEMA, parse_plan, shipped_tasks
from robot.actions import Move, Turn
from robot.geometry import wrap_angle
from robot.perception import OraclePerception
from robot.planner import Observation, build_prompt
from robot.tasks import holds, perturbed_start
from shared.models import KNOWN_MODELS, ModelError
from shared.models.registry import adapter_dir
from training.planner_data import _scene_key, _state, build_dataset, random_scene, rollout
from training.planner_expert import PlanTeacher, plan_text


def _run_exactly(actions, x, y, yaw):
    for a in actions:
        if isinstance(a, Turn):
            yaw = wrap_angle(yaw + math.radians(a.deg))
        elif isinstance(a, Move):
            x, y = x + a.vx * a.duration_s * math.cos(yaw), y + a.vx * a.duration_s * math.sin(yaw)
    return x, y, yaw


def _segment_hits(task, x0, y0, x1, y1) -> bool:
    n = max(2, int(math.hypot(x1 - x0, y1 - y0) / 0.05))
    return any(
        o.surface_distance(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) < 0.2
        for i in range(n + 1)
        for o in task.obstacles
    )


@pytest.mark.parametrize("task", shipped_tasks(), ids=lambda t: t.name)
def test_the_teachers_plans_executed_exactly_solve_every_shipped_task_without_touching_a_wall(task):
    teacher = PlanTeacher(task)
    x, y, yaw = task.start.x, task.start.y, task.start.yaw
    for _ in range(4):
        plan = teacher.plan(_state(x, y, yaw, 0.0, "standing", 0.0))
        if plan is None:
            break
        jsonschema.validate(json.loads(plan_text(plan)), PLAN_SCHEMA)
        assert parse_plan(plan_text(plan)) == plan
        for a in plan:  # every straight leg keeps clear of the obstacles
            nx, ny, yaw = _run_exactly([a], x, y, yaw)
            assert not _segment_hits(task, x, y, nx, ny)
            x, y = nx, ny
    assert holds(task.success.condition, task, x, y, yaw)


def test_plan_text_is_compact_and_leaves_defaults_out():
    text = plan_text([Turn(action="turn", deg=15), Move(action="move", vx=0.5, duration_s=2.0)])
    assert text == '[{"action":"turn","deg":15},{"action":"move","vx":0.5,"duration_s":2}]'


def test_random_scenes_are_valid_varied_and_never_a_shipped_scene():
    rng = random.Random(3)
    scenes = [random_scene(rng, k) for k in range(200)]
    kinds = {s.name.split("-")[1] for s in scenes}
    assert kinds == {"object", "behind", "wall", "door", "line", "two"}
    shipped = {_scene_key(t) for t in shipped_tasks()}
    assert not shipped & {_scene_key(s) for s in scenes}


def test_each_step_records_the_exact_compact_prompt_the_planner_sends():
    task = perturbed_start(shipped_tasks()[0], 2)
    step, prompt, plan = next(rollout(task, random.Random(0)))
    state = _state(task.start.x, task.start.y, task.start.yaw, 0.0, "standing", 0.0)
    obs = Observation(0.0, task.instruction, state, OraclePerception(task).perceive(None, state))
    assert (step, prompt) == (0, build_prompt(obs, style="compact"))
    assert prompt.startswith(f"Instruction: {task.instruction}\n") and prompt.endswith("Plan:")
    assert "Example" not in prompt and len(prompt) < len(build_prompt(obs))
    parse_plan(plan)


def test_the_dataset_is_seeded_and_split_by_scene():
    a = build_dataset(60, seed=5, shipped_seeds=1, progress=False)
    assert a == build_dataset(60, seed=5, shipped_seeds=1, progress=False)
    assert a != build_dataset(60, seed=6, shipped_seeds=1, progress=False)
    by_split: dict[str, set[str]] = {}
    for r in a:
        by_split.setdefault(r["split"], set()).add(r["scene"])
    assert set(by_split) == {"train", "heldout", "shipped"}
    assert not by_split["train"] & by_split["heldout"]
    assert all(not s.startswith("random") for s in by_split["shipped"])


def test_unknown_prompt_style_is_refused():
    task = shipped_tasks()[0]
    state = _state(0, 0, 0, 0, "standing", 0)
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt(Observation(0.0, task.instruction, state, None), style="terse")


def test_the_planner_models_are_registered_with_their_shipped_adapters():
    for name, base in (
        ("smollm2-135m-planner", "smollm2-135m-instruct"),
        ("smollm2-135m-planner-draft", "smollm2-135m-draft"),
    ):
        known = KNOWN_MODELS[name]
        assert known.derived_from == base and len(known.adapter_sha256) == 64
        weights = adapter_dir(known) / "adapter_model.safetensors"
        assert weights.stat().st_size < 8_000_000  # small package data
        from shared.models.fetch import sha256_file

        assert sha256_file(weights, progress=False) == known.adapter_sha256


def test_merging_an_adapter_equals_the_adapted_model_and_a_bad_adapter_is_refused(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from shared.models import pull
    from shared.models.derive import build_merged_adapter
    from shared.models.registry import KnownModel
    from shared.tiny import save_tiny_pair

    target_dir, _ = save_tiny_pair(tmp_path / "pair")
    base = AutoModelForCausalLM.from_pretrained(target_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, config).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    with torch.no_grad():
        want = adapted(ids).logits
    built = build_merged_adapter(
        Path(target_dir), tmp_path / "adapter", tmp_path / "merged", marker={"name": "m"}, progress=False
    )
    merged = AutoModelForCausalLM.from_pretrained(built)
    with torch.no_grad():
        got = merged(ids).logits
    torch.testing.assert_close(got, want)
    assert not any("lora" in k for k in merged.state_dict())

    bad = KnownModel(
        name="x-planner",
        description="",
        license="",
        derived_from="smollm2-135m-instruct",
        adapter="shared/models/adapters/smollm2-135m-planner",
        adapter_sha256="0" * 64,
    )
    monkeypatch.setenv("EESPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(pull, "adapter_dir", lambda model: tmp_path / "adapter")
    with pytest.raises(ModelError) as err:
        pull._build_adapted(bad, tmp_path / "home" / "x", progress=False, force=False)
    assert err.value.code == "hash_mismatch"


def test_the_planner_pair_is_selectable_and_gets_its_prompt_and_budget():
    import typer

    from eespec.robot_cli import planner_options, resolve_pair

    assert resolve_pair("planner", "a", "b") == ("smollm2-135m-planner", "smollm2-135m-planner-draft")
    assert resolve_pair(None, "a", "b") == ("a", "b")
    with pytest.raises(typer.BadParameter):
        resolve_pair("nope", "a", "b")
    assert planner_options("smollm2-135m-planner") == {"prompt_style": "compact", "max_tokens": 128}
    assert planner_options("smollm2-135m-instruct") == {}
