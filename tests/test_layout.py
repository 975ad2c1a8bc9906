"""The tree tells the architecture: imports only point down, and the engine door stays web-free.

Rules (README, "What is here"): `shared` imports no other project package; `cloud_server.engine` imports
only `shared` (no web surface, no FastAPI/uvicorn/prometheus); `edge_client` never imports
`cloud_server`; `training` never imports `eespec` (the CLI and benchmark home) nor benchmark folders (it
may use `robot`: the planner's training data come from its simulator and scripted expert);
`robot` never imports `cloud_server`; nothing imports `eespec` but `eespec` itself; nothing reads the
checkout's folders through `Path(__file__).parents[k]`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("shared", "cloud_server", "edge_client", "training", "eespec", "robot", "benchmarks")
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "prometheus_client")

# package (dotted prefix) -> project packages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "shared": ("cloud_server", "edge_client", "training", "eespec", "robot", "benchmarks"),
    "cloud_server.engine": (
        "cloud_server.app",
        "cloud_server.ws",
        "cloud_server.http_api",
        "cloud_server.state",
        "cloud_server.settings",
        "cloud_server.prometheus_metrics",
        "edge_client",
        "training",
        "eespec",
        "robot",
        "benchmarks",
        *WEB_FRAMEWORKS,
    ),
    "cloud_server": ("edge_client", "training", "eespec", "robot", "benchmarks"),
    "edge_client": ("cloud_server", "training", "eespec", "robot", "benchmarks"),
    "training": ("eespec", "benchmarks"),
    "robot": ("cloud_server", "training", "benchmarks"),
}


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found.append((dotted, path))
    return found


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_imports_point_down():
    broken = []
    for dotted, path in modules():
        rules = [p for p in FORBIDDEN if _under(dotted, p)]
        rule = max(rules, key=len) if rules else None  # the most specific rule applies
        for name in imported(path):
            if rule and any(_under(name, bad) for bad in FORBIDDEN[rule]):
                broken.append(f"{path.relative_to(ROOT)} imports {name}")
            if _under(name, "eespec") and not _under(dotted, "eespec"):
                broken.append(f"{path.relative_to(ROOT)} imports {name} (only eespec imports eespec)")
    assert not broken, "\n".join(broken)


def test_outside_users_go_through_the_engine_door():
    """Outside `cloud_server`, the engine is imported as `cloud_server.engine`, never its modules."""
    bypass = [
        f"{path.relative_to(ROOT)} imports {name}"
        for dotted, path in modules()
        if not _under(dotted, "cloud_server")
        for name in imported(path)
        if name.startswith("cloud_server.engine.")
    ]
    assert not bypass, "\n".join(bypass)


def test_no_code_finds_data_through_the_checkout():
    offenders = [
        str(path.relative_to(ROOT))
        for _dotted, path in modules()
        if ".parents[" in path.read_text() and "__file__" in path.read_text()
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("door", ["cloud_server", "cloud_server.engine", "edge_client", "shared", "training"])
def test_doors_import_without_a_web_framework(door):
    """Importing the engine, the edge, shared or training pulls in no web framework (a fresh interpreter)."""
    code = f"import sys, {door}; print(sorted(m for m in {WEB_FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{door} imports {out.stdout.strip()}"


def test_shipped_package_data_is_found_where_the_code_looks():
    """Moving a module must not lose its data: the shipped exit heads, draft and workloads resolve."""
    from cloud_server.engine import shipped_exit_heads
    from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from shared.models.registry import get_known_model, shipped_dir
    from shared.workloads import available_workloads

    heads = shipped_exit_heads(DEFAULT_TARGET)
    assert heads is not None and (heads / "exits.json").is_file()
    assert {"code", "prose", "robot"} <= set(available_workloads())
    assert (shipped_dir(get_known_model(DEFAULT_DRAFT)) / "config.json").is_file()
