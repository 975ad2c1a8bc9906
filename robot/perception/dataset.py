"""The perception dataset: head-camera frames of random task-file scenes, oracle labels, split by scene.

Stored as one `.npz`: `frames` (N, H, W, 3) uint8, `labels` (N, N_LABELS) int64, `scene` (N,) int, `split`
(N,) 0 train / 1 val / 2 test, and `meta` (JSON: seed, counts, downsampling, camera).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot.perception.labels import encode, oracle_scene
from robot.perception.render import CAMERA_HFOV_RAD, SceneRenderer, downsample
from robot.perception.scenes import random_poses, random_scene
from robot.tasks import Task, load_task

SPLITS = ("train", "val", "test")
DEFAULT_FACTOR = 2  # 160×120 sim frames → 80×60


@dataclass(frozen=True)
class Dataset:
    frames: np.ndarray
    labels: np.ndarray
    scene: np.ndarray
    split: np.ndarray
    meta: dict

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        keep = self.split == SPLITS.index(name)
        return self.frames[keep], self.labels[keep]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            frames=self.frames,
            labels=self.labels,
            scene=self.scene,
            split=self.split,
            meta=np.array(json.dumps(self.meta)),
        )

    @classmethod
    def load(cls, path: Path) -> Dataset:
        with np.load(path) as z:
            return cls(z["frames"], z["labels"], z["scene"], z["split"], json.loads(str(z["meta"])))


def scene_split(seed: int, index: int, val: float = 0.1, test: float = 0.1) -> int:
    """0/1/2 for train/val/test, drawn per scene (every frame of a scene lands in the same split)."""
    u = random.Random(f"{seed}:{index}:split").random()
    return 2 if u < test else 1 if u < test + val else 0


def render_frames(
    task: Task, poses: list[tuple[float, float, float]], factor: int
) -> tuple[np.ndarray, np.ndarray]:
    with SceneRenderer(task) as renderer:
        frames = [downsample(renderer.render(*p), factor) for p in poses]
    labels = [encode(oracle_scene(task, *p)) for p in poses]
    return np.stack(frames), np.stack(labels)


def build_dataset(
    *,
    seed: int,
    scenes: int,
    frames_per_scene: int,
    factor: int = DEFAULT_FACTOR,
    progress: bool = True,
    only_split: str | None = None,
) -> Dataset:
    """`scenes` random scenes × `frames_per_scene` poses; `only_split` renders just that split's scenes
    (the same frames the full dataset holds for it: scenes, poses and splits are seeded per scene)."""
    frames, labels, scene_ids, splits = [], [], [], []
    keep = [
        i for i in range(scenes) if only_split is None or scene_split(seed, i) == SPLITS.index(only_split)
    ]
    for i in tqdm(keep, desc="scenes", unit="scene", disable=not progress):
        task = random_scene(seed, i)
        f, lab = render_frames(task, random_poses(task, seed, frames_per_scene), factor)
        frames.append(f)
        labels.append(lab)
        scene_ids += [i] * len(f)
        splits += [scene_split(seed, i)] * len(f)
    meta = {
        "seed": seed,
        "scenes": scenes,
        "frames_per_scene": frames_per_scene,
        "factor": factor,
        "hfov_deg": round(float(np.degrees(CAMERA_HFOV_RAD)), 2),
        "split_frames": {s: int(np.sum(np.array(splits) == k)) for k, s in enumerate(SPLITS)},
    }
    return Dataset(
        np.concatenate(frames), np.concatenate(labels), np.array(scene_ids), np.array(splits), meta
    )


def task_files_dataset(
    directory: Path,
    *,
    seed: int = 0,
    frames_per_task: int = 16,
    factor: int = DEFAULT_FACTOR,
    progress: bool = True,
) -> Dataset:
    """Frames of anyone's task files (every `*.json` in `directory`): the start pose and seeded poses."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no task files (*.json) in {directory}")
    frames, labels, scene_ids = [], [], []
    for i, path in enumerate(tqdm(files, desc="task files", unit="task", disable=not progress)):
        task = load_task(path)
        s = task.start
        poses = [(s.x, s.y, s.yaw), *random_poses(task, seed, frames_per_task - 1)]
        f, lab = render_frames(task, poses, factor)
        frames.append(f)
        labels.append(lab)
        scene_ids += [i] * len(f)
    meta = {"task_files": [p.name for p in files], "seed": seed, "factor": factor}
    n = len(scene_ids)
    return Dataset(
        np.concatenate(frames),
        np.concatenate(labels),
        np.array(scene_ids),
        np.full(n, SPLITS.index("test")),
        meta,
    )
