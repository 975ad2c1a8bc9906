"""Offscreen rendering of the sim's head camera at chosen poses (no robot thread, no physics)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robot.backends.go2_model import Go2Params
from robot.backends.sim import CAMERA_H, CAMERA_W, scene_xml, select_gl
from robot.tasks import Task


class SceneRenderer:
    """The head camera of the procedural Go2 in `task`'s scene; `render(x, y, yaw)` → RGB uint8 (H, W, 3)."""

    def __init__(self, task: Task) -> None:
        select_gl()
        import mujoco

        self._mj = mujoco
        self.height = Go2Params().standing_height_m
        self.model = mujoco.MjModel.from_xml_string(scene_xml(task, self.height))
        self.data = mujoco.MjData(self.model)
        self.renderer: Any = mujoco.Renderer(self.model, height=CAMERA_H, width=CAMERA_W)

    def render(self, x: float, y: float, yaw: float) -> np.ndarray:
        self.data.qpos[0:3] = (x, y, self.height)
        self.data.qpos[3:7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        self._mj.mj_forward(self.model, self.data)
        self.renderer.update_scene(self.data, camera="head")
        return np.array(self.renderer.render(), dtype=np.uint8, copy=True)

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> SceneRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downsampling by an integer factor (what the learned models read)."""
    if factor == 1:
        return rgb
    h, w, c = rgb.shape
    h, w = h - h % factor, w - w % factor
    view = rgb[:h, :w].reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return view.mean(axis=(1, 3)).round().astype(np.uint8)


# The sim head camera (robot/backends/sim.py): fovy 70° at CAMERA_W × CAMERA_H; its horizontal view.
CAMERA_FOVY_DEG = 70.0
CAMERA_HFOV_RAD = 2 * math.atan(math.tan(math.radians(CAMERA_FOVY_DEG) / 2) * CAMERA_W / CAMERA_H)
