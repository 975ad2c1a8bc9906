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
