from __future__ import annotations

import os

import pytest

from shared.tiny import tiny_llama

# EESPEC_TEST_DEVICE=cuda runs the engine tests that use these fixtures on a GPU (the device check).
DEVICE = os.environ.get("EESPEC_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def target_model():
    return tiny_llama(0, vocab_size=64, hidden_size=32, layers=4).to(DEVICE)


@pytest.fixture(scope="session")
def unrelated_draft_model():
    return tiny_llama(1, vocab_size=64, hidden_size=32, layers=1).to(DEVICE)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Name every thread still alive when the suite ends: a leaked thread that is inside native code (torch,
    MuJoCo, a GL context) when the interpreter finalizes crashes it after every test has passed."""
    import sys
    import threading
    import traceback

    frames = sys._current_frames()
    alive = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if not alive:
        return
    lines = [f"{len(alive)} thread(s) alive at the end of the session:"]
    for thread in alive:
        lines.append(f"- {thread.name} (daemon={thread.daemon})")
        frame = frames.get(thread.ident)
        if frame is not None:
            lines.extend("    " + s.rstrip() for s in traceback.format_stack(frame)[-3:])
    session.config.get_terminal_writer().line("\n".join(lines))
