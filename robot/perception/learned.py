"""`ann` / `snn` perception: a learned model reads the head-camera frame → `SceneDescription`."""

from __future__ import annotations

import statistics
import time

import torch

from robot.interface import CameraFrame, RobotState
from robot.perception.labels import decode
from robot.perception.models import ANN, SNN, frames_to_tensor
from robot.perception.render import downsample
from robot.perception.scene import SceneDescription
from robot.tasks import Task


class LearnedPerception:
    """Runs on one thread (the edge budget); `last_ms` is the latest forward pass's latency."""

    def __init__(self, model: ANN | SNN, name: str, task: Task | None = None, threads: int = 1) -> None:
        self.model = model.eval()
        self.name = name
        self.task = task  # object names come from the instruction's task when colour and shape match
        self.threads = threads
        self.last_ms = 0.0
        self.latencies_ms: list[float] = []
        self._empty = SceneDescription(stamp=0.0, objects=[], obstacle_ahead=False, free_direction="ahead")

    def perceive(self, frame: CameraFrame | None, state: RobotState) -> SceneDescription:
        if frame is None:  # no camera: nothing seen (the planner is told so)
            return self._empty.model_copy(update={"stamp": state.stamp})
        cfg = self.model.config
        factor = frame.rgb.shape[0] // cfg.height
        x = frames_to_tensor(downsample(frame.rgb, max(factor, 1))[None])
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = self.model(x)[0]
            self.last_ms = (time.perf_counter() - t0) * 1e3
        finally:
            torch.set_num_threads(previous)
        self.latencies_ms.append(self.last_ms)
        return decode(logits, frame.stamp, self.task)

    def summary(self) -> dict:
        """Name, frames seen and latency on `threads` core(s): median and 95th percentile in ms."""
        lat = sorted(self.latencies_ms)
        if not lat:
            return {"name": self.name, "frames": 0}
        return {
            "name": self.name,
            "frames": len(lat),
            "threads": self.threads,
            "latency_ms_median": round(statistics.median(lat), 3),
            "latency_ms_p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        }
