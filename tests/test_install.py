"""A non-editable install works outside the checkout: the wheel, installed into a fresh virtual
environment, runs the commands a user runs first, from a directory that is not the repository.

The venv sees the machine's site-packages (torch, transformers, ...: nothing is downloaded) but not the
checkout: the test asserts that `eespec` is imported from the venv's own copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from shared.models import load_model
from shared.tiny import save_tiny_pair, tiny_tokenizer
from tests.helpers import oracle_greedy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv bin folder, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, REPO],
        check=True,
        cwd=root,
        timeout=600,
    )
    (wheel,) = wheels.glob("eespec-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    # pip from the machine's interpreter, aimed at the venv's prefix: no network, no pip bootstrap.
    # --ignore-installed: without it pip first uninstalls the machine's own (editable) eespec.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            env_dir,
            wheel,
        ],
        check=True,
        timeout=600,
    )
    work = root / "elsewhere"
    work.mkdir()
    return bin_dir, work


def run(installed: tuple[Path, Path], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    bin_dir, work = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / "python"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow  # builds a wheel and starts several interpreters: about a minute on 2 cores
def test_the_installed_wheel_is_imported_not_the_checkout(installed):
    out = run(
        installed, "-c", "import eespec, shared.workloads as w; print(eespec.__file__); print(w.__file__)"
    )
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert str(installed[0].parent) in line and str(REPO) not in line, out.stdout


@pytest.mark.slow
def test_installed_commands_run_outside_the_checkout(installed, tmp_path):
    bench = run(installed, "-m", "eespec", "bench", "--quick", "--dry-run")
    assert bench.returncode == 0, bench.stderr + bench.stdout
    assert "code" in bench.stdout and "robot" in bench.stdout  # the workloads came from package data
    helped = run(installed, "-m", "eespec", "train-draft", "--help")
    assert helped.returncode == 0 and "--out" in helped.stdout, helped.stderr
    listed = run(installed, "-m", "eespec", "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    names = {m["name"] for m in json.loads(listed.stdout)}
    assert {"smollm2-135m-instruct", "smollm2-135m-draft"} <= names
    # The shipped draft is package data of the installed copy.
    shipped = next(m for m in json.loads(listed.stdout) if m["name"] == "smollm2-135m-draft")
    assert str(REPO) not in json.dumps(shipped)

    target, draft = save_tiny_pair(tmp_path)
    args = ["generate", "--local", "--target", target, "--draft", draft, "--exits", "2"]
    out = run(installed, "-m", "eespec", *args, "--prompt", "abc", "--max-tokens", "10", "--json")
    assert out.returncode == 0, out.stderr
    model, _ = load_model(target)
    assert json.loads(out.stdout)["token_ids"] == oracle_greedy(
        model, tiny_tokenizer()("abc").input_ids, 10, eos=2
    )


@pytest.mark.slow
def test_training_refuses_to_run_without_the_workload_exclusions(installed):
    """The exclusion list comes from the installed package data; the guard reports an empty one."""
    code = (
        "from shared.workloads import exclusion_strings\n"
        "strings = exclusion_strings()\n"
        "assert len(strings) > 10, strings\n"
        "import shared.workloads as w, unittest.mock as m\n"
        "with m.patch.object(w, 'available_workloads', lambda directory=None: []):\n"
        "    try:\n"
        "        w.exclusion_strings()\n"
        "    except RuntimeError as e:\n"
        "        print('refused:', e)\n"
    )
    out = run(installed, "-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:")
