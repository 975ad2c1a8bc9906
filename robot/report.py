"""`eespec robot report DIR...`: success, time to goal, planning latency per mode, safety events, and a
trajectory plot of each episode over its scene (PNG)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from robot.episode_log import read_episode
from robot.tasks import COLOR_RGB, Task


def summarize(dirs: list[str | Path]) -> list[dict[str, Any]]:
    rows = []
    for d in dirs:
        ep = read_episode(d)
        s = ep["summary"]
        names = Counter(e["name"] for e in ep["events"] if e["name"] not in _COURSE)
        by_mode: dict[str, list[float]] = {}
        for p in ep["plans"]:
            by_mode.setdefault(p["mode"], []).append(p["ms"])
        rows.append(
            {
                "dir": str(d),
                "task": s["task"],
                "planner": s["planner"],
                "success": s["success"],
                "time_to_goal_s": s["time_to_goal_s"],
                "collisions": s["collisions"],
                "plans": s["plans"],
                "plan_ms_median_by_mode": {m: round(statistics.median(v), 1) for m, v in by_mode.items()},
                "safety_events": dict(names),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| episode | task | planner | success | time to goal (s) | collisions | plans "
        "| plan ms (median, by mode) | safety events |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttg = "—" if r["time_to_goal_s"] is None else f"{r['time_to_goal_s']:.1f}"
        modes = ", ".join(f"{m}: {v}" for m, v in r["plan_ms_median_by_mode"].items()) or "—"
        events = ", ".join(f"{k} ×{v}" for k, v in sorted(r["safety_events"].items())) or "none"
        ok = "yes" if r["success"] else "no"
        lines.append(
            f"| {Path(r['dir']).name} | {r['task']} | {r['planner']} | {ok} | {ttg} "
            f"| {r['collisions']} | {r['plans']} | {modes} | {events} |"
        )
    return "\n".join(lines)


def plot_trajectory(directory: str | Path, out: str | Path | None = None) -> Path:
    """The robot's path (coloured by the command's source) over the task's objects and obstacles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Polygon

    ep = read_episode(directory)
    task = Task.model_validate(ep["task"]) if ep["task"] else None
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    if task is not None:
        for body in [*task.obstacles, *task.objects]:
            color = COLOR_RGB[body.color] if body.color else (0.45, 0.45, 0.45)
            is_obstacle = body in task.obstacles
            if body.shape == "box":
                hx, hy = body.size[0], body.size[1]  # type: ignore[index]
                c, s = math.cos(body.yaw), math.sin(body.yaw)
                corners = [
                    (body.x + c * px - s * py, body.y + s * px + c * py)
                    for px, py in [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]
                ]
                patch = Polygon(corners, closed=True, fc=color, ec="k", alpha=0.8 if is_obstacle else 0.9)
            else:
                patch = Circle((body.x, body.y), float(body.size), fc=color, ec="k")  # type: ignore[arg-type]
            ax.add_patch(patch)
            if not is_obstacle:
                ax.annotate(
                    getattr(body, "name", ""),
                    (body.x, body.y),
                    xytext=(4, 6),
                    textcoords="offset points",
                    fontsize=8,
                )
        cond = task.success.condition
        region = getattr(cond, "region", None)
        if region is not None:
            ax.add_patch(Circle((region.x, region.y), region.radius, fc="none", ec="g", ls="--"))
    ticks = ep["ticks"]
    xs = [t["pose"][0] for t in ticks]
    ys = [t["pose"][1] for t in ticks]
    ax.plot(xs, ys, "-", color="0.3", lw=1.2, label="path")
    colors = {"plan": "tab:blue", "watchdog": "tab:orange", "estop": "tab:red", "link-loss": "tab:purple"}
    for source, color in colors.items():
        pts = [(t["pose"][0], t["pose"][1]) for t in ticks if t["source"] == source and any(t["cmd"])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=4, color=color, label=f"moving ({source})")
    if ticks:
        ax.plot(xs[0], ys[0], "k^", label="start")
        ax.plot(xs[-1], ys[-1], "ks", label="end")
    s = ep["summary"]
    ttg = f", {s['time_to_goal_s']:.1f} s" if s["time_to_goal_s"] is not None else ""
    ax.set_title(
        f"{s['task']} — {s['planner']}: {'success' if s['success'] else 'failure'}{ttg}", fontsize=10
    )
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, forward from the start)")
    ax.set_ylabel("y (m, left)")
    ax.grid(alpha=0.3)
    ax.autoscale_view()
    ax.legend(fontsize=7, loc="best")
    out_path = Path(out) if out is not None else Path(directory) / "trajectory.png"
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


_COURSE = {"episode_start", "episode_end", "standing", "success", "planner_done", "camera_error"}
