"""Edge perception (issue 15), fast: labels vs oracle, codings, op counts, resume, CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robot.perception.dataset import Dataset, scene_split
from robot.perception.labels import (
    DISTANCES,
    HEAD_SIZES,
    IGNORE,
    N_LABELS,
    N_OUTPUTS,
    decode,
    encode,
    head_correct,
    oracle_scene,
)
from robot.perception.models import ModelConfig, build_model, encode_input
from robot.perception.ops import ann_ops, energy_uj, snn_ops
from robot.perception.render import CAMERA_FOVY_DEG, CAMERA_HFOV_RAD
from robot.perception.scenes import random_poses, random_scene

TINY = ModelConfig(kind="snn", coding="direct", timesteps=2, widths=(4, 4, 8), height=12, width=16)


def one_hot_logits(labels: np.ndarray) -> torch.Tensor:
    """The logits a perfect model gives for `labels` (ignored groups: class 0)."""
    from robot.perception.labels import split_labels

    parts = []
    for head, group in split_labels(torch.as_tensor(labels[None])).items():
        classes = HEAD_SIZES[head] // group.shape[1]
        parts.append(torch.nn.functional.one_hot(group.clamp(min=0), classes).float().flatten(1))
    return torch.cat(parts, 1)[0]


def test_labels_decode_to_what_the_oracle_says():
    for i in range(20):
        task = random_scene(7, i)
        for pose in random_poses(task, 7, 5):
            truth = oracle_scene(task, *pose)
            labels = encode(truth)
            assert labels.shape == (N_LABELS,)
            back = decode(one_hot_logits(labels), truth.stamp, task)
            # colours are distinct in random scenes: every visible object comes back with the oracle's bins
            want = {(o.name, o.color, o.shape, o.bearing, o.distance) for o in truth.objects}
            assert {(o.name, o.color, o.shape, o.bearing, o.distance) for o in back.objects} == want
            assert (back.obstacle_ahead, back.free_direction) == (truth.obstacle_ahead, truth.free_direction)


def test_labels_keep_the_nearest_object_of_a_colour_and_use_the_camera_field_of_view():
    from robot.tasks import Task
    from tests.test_robot import DESIGN_EXAMPLE

    far = {"name": "far ball", "shape": "sphere", "color": "blue", "x": 5.0, "y": 0.0, "size": 0.15}
    near = {"name": "near box", "shape": "box", "color": "blue", "x": 0.9, "y": 0.1, "size": [0.1, 0.1, 0.1]}
    side = {"name": "side ball", "shape": "sphere", "color": "red", "x": 1.0, "y": 1.5, "size": 0.1}  # 56°
    task = Task.model_validate(
        DESIGN_EXAMPLE
        | {"objects": [far, near, side], "obstacles": [], "success": {"near": "far ball", "within_m": 0.5}}
    )
    labels = encode(oracle_scene(task, 0.0, 0.0, 0.0))
    blue, red = 2, 0  # COLORS order
    assert labels[blue] == 2 and labels[8 + blue] == 2 and DISTANCES[labels[16 + blue]] == "near"
    # 56° is inside the oracle's default 120° but outside the sim camera's 86°: not a label
    assert labels[red] == 0 and labels[8 + red] == IGNORE
    assert math.isclose(math.degrees(CAMERA_HFOV_RAD), 86.07, abs_tol=0.01)


def test_the_camera_field_of_view_is_the_sims():
    from robot.backends.sim import scene_xml

    xml = scene_xml(random_scene(0, 0), 0.3)
    assert f'fovy="{CAMERA_FOVY_DEG:g}"' in xml


def test_scenes_and_splits_are_seeded():
    assert random_scene(3, 5) == random_scene(3, 5) != random_scene(4, 5)
    task = random_scene(3, 5)
    assert random_poses(task, 1, 4) == random_poses(task, 1, 4)
    splits = [scene_split(0, i) for i in range(2000)]
    assert 0.07 < splits.count(2) / 2000 < 0.13 and 0.07 < splits.count(1) / 2000 < 0.13


def test_input_codings():
    frames = torch.rand(2, 3, 12, 16)
    direct = encode_input(frames, "direct", 3)
    assert direct.shape == (3, 2, 3, 12, 16) and torch.equal(direct[2], frames)
    torch.manual_seed(0)
    rate = encode_input(frames.new_full(frames.shape, 0.25), "rate", 400)
    assert set(rate.unique().tolist()) <= {0.0, 1.0} and abs(float(rate.mean()) - 0.25) < 0.01
    flat = encode_input(frames.new_full(frames.shape, 0.5), "event", 4)
    assert flat.shape == (4, 2, 6, 12, 16) and flat.sum() == 0  # no change, no event
    edge = frames.new_zeros(1, 3, 12, 16)
    edge[..., 8:] = 1.0
    events = encode_input(edge, "event", 4)
    assert events.sum() > 0 and set(events.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="unknown coding"):
        encode_input(frames, "morse", 2)


@pytest.mark.parametrize(
    "kind,coding", [("ann", "direct"), ("snn", "direct"), ("snn", "rate"), ("snn", "event")]
)
def test_models_give_one_logit_vector_per_frame(kind, coding):
    model = build_model(
        ModelConfig(kind=kind, coding=coding, timesteps=3, widths=(4, 4, 8), height=12, width=16)
    )
    out = model(torch.rand(5, 3, 12, 16))
    assert out.shape == (5, N_OUTPUTS) and torch.isfinite(out).all()
    if kind == "snn":
        assert model.step_outputs(torch.rand(5, 3, 12, 16)).shape == (3, 5, N_OUTPUTS)


def _brute_conv_pairs(spikes: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> int:
    """Every (input spike, non-zero weight) pair that lands on an output: the definition, looped."""
    c_out, c_in, k, _ = weight.shape
    _, h, w = spikes.shape
    h_out, w_out = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    total = 0
    for oy in range(h_out):
        for ox in range(w_out):
            for ky in range(k):
                for kx in range(k):
                    iy, ix = oy * stride + ky - pad, ox * stride + kx - pad
                    if 0 <= iy < h and 0 <= ix < w:
                        for ci in range(c_in):
                            if spikes[ci, iy, ix]:
                                total += int((weight[:, ci, ky, kx] != 0).sum())
    return total


def test_synops_count_each_spike_once_per_non_zero_outgoing_weight():
    torch.manual_seed(1)
    model = build_model(TINY)
    with torch.no_grad():
        model.convs[1].weight[:, :, 0, 0] = 0  # pruned weights cost nothing
    frames = torch.rand(1, 3, 12, 16)
    layers = snn_ops(model, frames)
    model.record = True
    model.step_outputs(frames)
    s1, s3 = model.spikes[0], model.spikes[2]
    want = sum(_brute_conv_pairs(s1[t, 0], model.convs[1].weight, 2, 1) for t in range(TINY.timesteps))
    assert layers[1].synops == want
    fc_nnz = (model.fc.weight != 0).sum(0)  # the readout sees 2×2-pooled cells of the last spike map
    pooled = torch.nn.functional.avg_pool2d(s3.flatten(0, 1), 2, divisor_override=1).flatten(1)
    assert layers[3].synops == pytest.approx(float((pooled * fc_nnz).sum()))
    assert (
        layers[0].macs > 0 and layers[0].synops == 0
    )  # direct coding: the first layer reads the analog frame
    assert layers[0].spikes == float(s1.sum())
    assert energy_uj(layers) == pytest.approx(
        (layers[0].macs * 4.6 + sum(op.synops for op in layers) * 0.9) * 1e-6
    )


def test_ann_macs_are_the_in_bounds_multiplies():
    model = build_model(ModelConfig(kind="ann", widths=(4, 4, 8), height=12, width=16))
    layers = ann_ops(model, torch.rand(2, 3, 12, 16))
    ones = torch.ones(3, 12, 16)
    assert layers[0].macs == _brute_conv_pairs(ones, model.convs[0].weight, 2, 1)
    assert layers[-1].macs == model.fc.weight.numel()


def _tiny_dataset(path, n=48, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, 12, 16, 3), dtype=np.uint8)
    task = random_scene(0, 1)
    labels = np.stack([encode(oracle_scene(task, *p)) for p in random_poses(task, seed, n)])
    split = np.array([0] * (n - 16) + [1] * 8 + [2] * 8)
    data = Dataset(frames, labels, np.arange(n) // 4, split, {"seed": seed})
    data.save(path)
    return data


def test_training_resumes_from_its_checkpoint(tmp_path):
    from robot.perception.train import TrainConfig, train

    data = _tiny_dataset(tmp_path / "d.npz")
    ckpt = tmp_path / "m.ckpt"
    _, h1 = train(
        TINY,
        TrainConfig(epochs=1, batch_size=16, fisher_probe=2),
        data.part("train"),
        data.part("val"),
        ckpt,
        progress=False,
    )
    _, h2 = train(
        TINY,
        TrainConfig(epochs=2, batch_size=16, fisher_probe=2),
        data.part("train"),
        data.part("val"),
        ckpt,
        progress=False,
    )
    assert [e["epoch"] for e in h2.epochs] == [1, 2] and h2.epochs[0] == h1.epochs[0]
    assert len(h2.epochs[1]["fisher"]) == TINY.timesteps and all(f >= 0 for f in h2.epochs[1]["fisher"])
    with pytest.raises(ValueError, match="different model"):
        train(
            ModelConfig(kind="ann", widths=(4, 4, 8), height=12, width=16),
            TrainConfig(epochs=3),
            data.part("train"),
            data.part("val"),
            ckpt,
            progress=False,
        )


def test_head_accuracy_counts_bins_only_where_an_object_is_seen():
    labels = np.full((1, N_LABELS), IGNORE)
    labels[0, :8] = 0
    labels[0, 24:26] = (1, 2)
    counts = head_correct(one_hot_logits(labels[0])[None], torch.as_tensor(labels))
    assert counts == {
        "shape": (8, 8),
        "bearing": (0, 0),
        "distance": (0, 0),
        "obstacle_ahead": (1, 1),
        "free_direction": (1, 1),
    }


def test_cli_trains_and_evaluates_on_a_tiny_dataset(tmp_path):
    from eespec.cli import app

    _tiny_dataset(tmp_path / "d.npz")
    runner = CliRunner()
    for model in ("ann", "snn"):
        r = runner.invoke(
            app,
            [
                "perception",
                "train",
                "--data",
                str(tmp_path / "d.npz"),
                "--model",
                model,
                "--timesteps",
                "2",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / f"{model}.safetensors"),
            ],
        )
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "perception",
            "eval",
            "--data",
            str(tmp_path / "d.npz"),
            "--json",
            "--timesteps",
            "1,2",
            "--weights",
            str(tmp_path / "ann.safetensors"),
            "--weights",
            str(tmp_path / "snn.safetensors"),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert set(report) == {"ann", "snn", "_meta"}
    assert report["ann"]["macs"] > 0 and "synops" in report["snn"] and report["snn"]["timesteps"] == 2
    for entry in (report["ann"], report["snn"]):
        assert 0 <= entry["accuracy"] <= 1 and entry["energy_uj"] > 0 and entry["latency_ms"] > 0
    assert set(report["snn"]["by_timesteps"]) == {"1", "2"}
    r = runner.invoke(
        app,
        [
            "perception",
            "train",
            "--data",
            str(tmp_path / "d.npz"),
            "--model",
            "cnn",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
    )
    assert r.exit_code != 0 and "ann or snn" in r.output


def test_learned_perception_reads_a_frame(tmp_path):
    from robot.interface import CameraFrame, RobotState
    from robot.perception.learned import LearnedPerception

    model = build_model(ModelConfig(kind="snn", timesteps=2, widths=(4, 4, 8), height=60, width=80))
    task = random_scene(0, 2)
    p = LearnedPerception(model, "snn", task)
    state = RobotState(0, 0, 0, 0, 0, 0, "standing", "move", 0, 1.5)
    frame = CameraFrame(rgb=np.zeros((120, 160, 3), np.uint8), stamp=1.5, name="head")
    scene = p.perceive(frame, state)
    assert scene.stamp == 1.5 and p.last_ms > 0
    assert p.perceive(None, state).objects == []
    random.seed(0)


# --- pruning ---------------------------------------------------------------------------------------------


def test_magnitude_masks_prune_globally_and_only_what_is_alive():
    from robot.perception.prune import magnitude_masks, prunable, sparsity

    torch.manual_seed(0)
    model = build_model(TINY)
    masks = magnitude_masks(model, 0.5)
    assert set(masks) == set(prunable(model)) and "norms.0.weight" not in masks
    assert sparsity(masks) == pytest.approx(0.5, abs=0.01)
    kept = torch.cat([p.detach().abs()[masks[n] > 0] for n, p in prunable(model).items()])
    dropped = torch.cat([p.detach().abs()[masks[n] == 0] for n, p in prunable(model).items()])
    assert kept.min() >= dropped.max()  # one global threshold across layers
    again = magnitude_masks(model, 0.5, masks)
    assert sparsity(again) == pytest.approx(0.75, abs=0.01)
    assert all(bool((again[n] <= masks[n]).all()) for n in masks)  # a pruned weight stays pruned


def test_imp_rewinds_survivors_and_keeps_pruned_weights_at_zero(tmp_path):
    from robot.perception.prune import imp_with_rewinding, train_ticket
    from robot.perception.train import TrainConfig

    data = _tiny_dataset(tmp_path / "d.npz")
    torch.manual_seed(0)
    dense = build_model(TINY)
    rewind = {k: v.clone() for k, v in build_model(TINY).state_dict().items()}
    search = imp_with_rewinding(
        dense,
        rewind,
        (data.part("train"), data.part("val")),
        rounds=2,
        rate=0.5,
        train_cfg=TrainConfig(epochs=1, batch_size=16),
        timesteps=1,
        workdir=tmp_path,
        progress=False,
    )
    assert [r["round"] for r in search.rounds] == [1, 2] and search.rounds[-1]["sparsity"] == pytest.approx(
        0.75, abs=0.01
    )
    assert search.model.config.timesteps == 1  # searched at T = 1 (the Early-Time ticket)
    ticket, _ = train_ticket(
        search.masks,
        rewind,
        TINY,
        (data.part("train"), data.part("val")),
        TrainConfig(epochs=1, batch_size=16),
        tmp_path / "final.ckpt",
        progress=False,
    )
    assert ticket.config.timesteps == TINY.timesteps
    for name, mask in search.masks.items():
        weight = dict(ticket.named_parameters())[name]
        assert bool((weight[mask == 0] == 0).all())


def test_channel_pruning_gives_a_smaller_dense_snn():
    from robot.perception.prune import channel_prune

    model = build_model(ModelConfig(kind="snn", timesteps=2, widths=(8, 8, 16), height=12, width=16))
    small = channel_prune(model, 0.5)
    assert small.config.widths == (4, 4, 8) and small.config.timesteps == 2
    assert small(torch.rand(3, 3, 12, 16)).shape == (3, N_OUTPUTS)


# --- the planner's side: scene-follow, sensing-to-action ---------------------------------------------------


def _scene(objects=(), obstacle_ahead=False, free="ahead"):
    from robot.perception.scene import SceneDescription, SeenObject

    seen = [
        SeenObject(name=n, shape=s, color=c, bearing=b, distance=d, bearing_rad=0.0, distance_m=1.0)
        for n, s, c, b, d in objects
    ]
    return SceneDescription(stamp=0.0, objects=seen, obstacle_ahead=obstacle_ahead, free_direction=free)


def test_scene_follow_steers_by_the_bins_it_is_given():
    from robot.interface import RobotState
    from robot.perception.follow import SceneFollowPlanner
    from robot.planner import Observation
    from robot.tasks import load_task

    task = load_task("blue-ball-ahead")
    planner = SceneFollowPlanner(task)
    state = RobotState(0, 0, 0, 0, 0, 0, "standing", "move", 0, 0.0)

    def act(scene, t=0.0):
        return [a.model_dump() for a in planner.next_actions(Observation(t, "", state, scene))]

    assert act(_scene())[0] == {"action": "turn", "deg": 40.0}  # not seen: search
    ball = ("blue ball", "sphere", "blue", "far left", "far")
    assert act(_scene([ball]))[0] == {"action": "turn", "deg": 30.0}
    ahead = ("blue ball", "sphere", "blue", "ahead", "mid")
    assert act(_scene([ahead]))[0]["action"] == "move" and act(_scene([ahead]))[0]["vx"] == 0.45
    near = ("blue ball", "sphere", "blue", "ahead", "near")
    assert [a["action"] for a in act(_scene([near]), t=1.0)] == ["move", "stop"]
    assert [a["action"] for a in act(_scene(), t=2.0)] == ["move", "stop"]  # just below the view: creep on
    assert act(_scene([ahead], obstacle_ahead=True, free="right"))[0] == {"action": "turn", "deg": -45.0}
    with pytest.raises(ValueError, match="near"):
        SceneFollowPlanner(load_task("stop-at-line"))


def test_adaptive_perception_senses_slowly_when_still_and_skips_unchanged_frames():
    from robot.interface import CameraFrame, RobotState
    from robot.perception.adaptive import ActionAwarePerception
    from robot.perception.learned import LearnedPerception

    model = build_model(ModelConfig(kind="ann", widths=(4, 4, 8), height=60, width=80))
    seer = ActionAwarePerception(LearnedPerception(model, "ann"), still_every=5)
    rng = np.random.default_rng(0)
    still = RobotState(0, 0, 0, 0, 0, 0, "standing", "move", 0, 0.0)
    walking = RobotState(0, 0, 0, 0.5, 0, 0, "standing", "move", 0, 0.0)

    def frame(t, same=False):
        rgb = np.full((120, 160, 3), 100, np.uint8) if same else rng.integers(0, 255, (120, 160, 3), np.uint8)
        return CameraFrame(rgb=rgb, stamp=t, name="head")

    for i in range(10):
        seer.perceive(frame(i), still)
    for i in range(10):
        seer.perceive(frame(10 + i), walking)
    for i in range(5):
        seer.perceive(frame(20 + i, same=True), walking)  # unchanged image: perceived once
    s = seer.summary()
    assert s["by_motion"]["still"] == [2, 10]  # the first frame, then one in five
    assert s["by_motion"]["forward"] == [11, 15]
    assert s["frames_perceived"] == 13 and s["compute_fraction"] == pytest.approx(13 / 25, abs=1e-4)
    assert seer.perceive(frame(30, same=True), walking).stamp == 30


def test_make_perception_by_name():
    from robot.perception import PERCEPTIONS, OraclePerception, make_perception

    task = random_scene(0, 0)
    assert isinstance(make_perception("oracle", task), OraclePerception)
    assert {"oracle", "ann", "snn", "snn_pruned"} <= set(PERCEPTIONS)
    with pytest.raises(ValueError, match="unknown perception"):
        make_perception("lidar", task)


def test_robot_run_takes_a_perception_and_the_scene_follow_planner(tmp_path):
    from eespec.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["robot", "run", "--task", "blue-ball-ahead", "--perception", "lidar"])
    assert r.exit_code != 0 and "--perception is one of oracle, ann, snn" in r.output
    r = runner.invoke(
        app,
        [
            "robot",
            "run",
            "--task",
            "blue-ball-ahead",
            "--planner",
            "scene-follow",
            "--perception",
            "oracle",
            "--log",
            str(tmp_path / "log"),
        ],
    )
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert r.exit_code == 0 and summary["success"] and summary["planner"] == "scene-follow", r.output
    assert summary["perception"] == {"name": "oracle"}
