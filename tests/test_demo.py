"""`eespec demo`'s closing line is computed from what it measured (issue 12, item 9: it was fixed text)."""

from __future__ import annotations

from eespec.demo import conclusion


def _rows(cloud_s: float, sd_s: float, preempt_s: float) -> dict[str, list[dict[str, float]]]:
    return {
        "cloud-ar": [{"s": cloud_s, "tokens": 48}],
        "sd": [{"s": sd_s, "tokens": 48, "accepted": 0.8}],
        "sd-preempt": [{"s": preempt_s, "tokens": 48, "accepted": 1.9}],
    }


SAME = {"cloud-ar": True, "sd": True, "sd-preempt": True}


def test_the_conclusion_follows_the_figures():
    faster = conclusion(_rows(10.0, 12.0, 5.0), SAME)
    assert "sd-preempt ran at 2.00× cloud-ar's tokens/s (faster;" in faster
    assert "sd ran at 0.83× cloud-ar's tokens/s (slower;" in faster
    assert "1.90 draft tokens accepted" in faster
    slower = conclusion(_rows(5.0, 10.0, 10.0), SAME)
    assert "sd-preempt ran at 0.50×" in slower and "faster" not in slower


def test_a_mismatch_is_reported_as_a_bug_not_a_speed():
    text = conclusion(_rows(10.0, 5.0, 5.0), SAME | {"sd": False})
    assert "differs from the target's own generate() in: sd" in text
    assert "ran" not in text
