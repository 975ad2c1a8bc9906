"""Episode logs (DESIGN.md, "Episode log"): DIR/episode.jsonl, DIR/summary.json, DIR/task.json, and an MCAP
file with the camera frames when `mcap` is installed. Times are seconds since the episode began."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

try:  # optional: the MCAP recording of camera frames
    from mcap.writer import Writer as McapWriter
except ImportError:  # pragma: no cover - mcap is a default dependency
    McapWriter = None

COMPRESSED_IMAGE_SCHEMA = {  # foxglove.CompressedImage, JSON encoding (data is base64)
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}},
        },
        "frame_id": {"type": "string"},
        "format": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
}


def jpeg_bytes(rgb: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _r(v: float) -> float:
    return round(float(v), 4)


class EpisodeLog:
    """Writes one episode. `directory=None` keeps the records in memory only (`records`)."""

    def __init__(self, directory: str | Path | None, *, mcap: bool = True) -> None:
        self.dir = Path(directory) if directory is not None else None
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._file = None
        self._mcap = None
        self._mcap_file = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = (self.dir / "episode.jsonl").open("w")
            if mcap and McapWriter is not None:
                self._open_mcap()

    def _open_mcap(self) -> None:
        assert self.dir is not None
        self._mcap_file = (self.dir / "episode.mcap").open("wb")
        writer = McapWriter(self._mcap_file)
        writer.start(profile="", library="eespec-robot")
        schema = writer.register_schema(
            name="foxglove.CompressedImage",
            encoding="jsonschema",
            data=json.dumps(COMPRESSED_IMAGE_SCHEMA).encode(),
        )
        self._camera_channel = writer.register_channel(
            topic="/camera/head", message_encoding="json", schema_id=schema
        )
        tick_schema = writer.register_schema(
            name="eespec.robot.Tick", encoding="jsonschema", data=b'{"type":"object"}'
        )
        self._tick_channel = writer.register_channel(
            topic="/robot/tick", message_encoding="json", schema_id=tick_schema
        )
        self._mcap = writer

    # --- records -------------------------------------------------------------------------------------

    def tick(self, t: float, pose, cmd, source: str, verified: bool, safety: str, link: str) -> None:
        rec = {
            "kind": "tick",
            "t": _r(t),
            "pose": [_r(v) for v in pose],
            "cmd": [_r(v) for v in cmd],
            "source": source,
            "verified": bool(verified),
            "safety": safety,
            "link": link,
        }
        self._write(rec)
        if self._mcap is not None:
            ns = int(t * 1e9)
            with self._lock:
                self._mcap.add_message(
                    self._tick_channel, log_time=ns, publish_time=ns, data=json.dumps(rec).encode()
                )

    def plan(
        self,
        t: float,
        mode: str,
        ms: float,
        tokens: int,
        actions: int,
        mean_accepted_len: float | None,
        predraft_hits: int | None,
        **extra: Any,
    ) -> None:
        rec = {
            "kind": "plan",
            "t": _r(t),
            "mode": mode,
            "ms": round(ms, 2),
            "tokens": tokens,
            "actions": actions,
            "mean_accepted_len": mean_accepted_len,
            "predraft_hits": predraft_hits,
            **extra,
        }
        self._write(rec)

    def event(self, t: float, name: str, detail: dict[str, Any] | None = None) -> None:
        self._write({"kind": "event", "t": _r(t), "name": name, "detail": detail or {}})

    def frame(self, t: float, rgb: np.ndarray) -> None:
        if self._mcap is None:
            return
        ns = int(t * 1e9)
        msg = {
            "timestamp": {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000},
            "frame_id": "head",
            "format": "jpeg",
            "data": base64.b64encode(jpeg_bytes(rgb)).decode(),
        }
        with self._lock:
            self._mcap.add_message(
                self._camera_channel, log_time=ns, publish_time=ns, data=json.dumps(msg).encode()
            )

    def write_task(self, task_file: dict[str, Any]) -> None:
        if self.dir is not None:
            (self.dir / "task.json").write_text(json.dumps(task_file, indent=2) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.dir is not None:
            (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "event"]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._mcap is not None:
                self._mcap.finish()
                self._mcap = None
                self._mcap_file.close()

    def _write(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(rec)
            if self._file is not None:
                self._file.write(json.dumps(rec) + "\n")


def read_episode(directory: str | Path) -> dict[str, Any]:
    """An episode directory's summary, task and records (ticks, plans, events)."""
    d = Path(directory)
    records = [json.loads(line) for line in (d / "episode.jsonl").read_text().splitlines() if line.strip()]
    task_path = d / "task.json"
    return {
        "dir": str(d),
        "summary": json.loads((d / "summary.json").read_text()),
        "task": json.loads(task_path.read_text()) if task_path.exists() else None,
        "ticks": [r for r in records if r["kind"] == "tick"],
        "plans": [r for r in records if r["kind"] == "plan"],
        "events": [r for r in records if r["kind"] == "event"],
    }
