"""The adaptive window: picks the draft length that maximises expected tokens per second.

Per round with window k, per-token acceptance α, drafting d s/token, verification v(k) and RTT r:
expected tokens E(k) = (1 − α^(k+1)) / (1 − α) (accepted tokens plus the verdict's token) and time
T(k) = k·d + v(k) + r. α is estimated from truncated observations (a round that accepted a < k tokens saw
a + 1 trials and one rejection), all inputs decay exponentially (EWMA), and v(k) is fitted as v0 + v1·k.

Server load (`verdict.server_load`: tokens waiting in the server's scheduler / its step budget) caps the
window at max_window / load while it is above 1: a saturated server runs every session's window rows in
shared steps, so shorter windows let more sessions into each step (and the model above cannot see that).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowChoice:
    k: int
    reason: str
    expected_tokens_per_s: float | None = None


class AdaptiveWindow:
    def __init__(
        self,
        max_window: int,
        *,
        initial: int = 4,
        fixed: int | None = None,
        decay: float = 0.8,
        acceptance_decay: float = 0.97,
    ) -> None:
        if max_window < 1:
            raise ValueError("max_window must be ≥ 1")
        self.max_window = max_window
        self.fixed = None if fixed is None else max(1, min(fixed, max_window))
        self.initial = max(1, min(initial, max_window))
        self.decay = decay
        # Acceptance is a noisy Bernoulli rate: it needs a longer memory (~30 rounds) than timings do.
        self.acceptance_decay = acceptance_decay
        self._accepted = 0.0
        self._trials = 0.0
        self._draft_s: float | None = None
        self._rtt_s: float | None = None
        # Weighted least squares for v(k) = v0 + v1·k: decayed sums of w, k, k², v, k·v.
        self._sums = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._ks_seen: set[int] = set()
        self._load: float | None = None
        self.rounds = 0

    def observe(
        self,
        k: int,
        accepted: int,
        draft_s_per_token: float | None,
        verify_s: float,
        rtt_s: float,
        server_load: float | None = None,
    ) -> None:
        d = self.decay
        self.rounds += 1
        if server_load is not None:
            self._load = _ewma(self._load, server_load, d)
        da = self.acceptance_decay
        self._accepted = da * self._accepted + accepted
        self._trials = da * self._trials + accepted + (1 if accepted < k else 0)
        if draft_s_per_token is not None:
            self._draft_s = _ewma(self._draft_s, draft_s_per_token, d)
        self._rtt_s = _ewma(self._rtt_s, rtt_s, d)
        w, sk, skk, sv, skv = self._sums
        self._sums = [d * w + 1, d * sk + k, d * skk + k * k, d * sv + verify_s, d * skv + k * verify_s]
        self._ks_seen.add(k)

    @property
    def load_cap(self) -> int:
        """The largest window the server's load allows: max_window / load while load > 1."""
        if self._load is None or self._load <= 1.0:
            return self.max_window
        return max(1, int(self.max_window / self._load))

    @property
    def acceptance(self) -> float | None:
        return self._accepted / self._trials if self._trials > 0 else None

    def full_acceptance(self, k: int) -> float:
        """Estimated probability that a window of k is accepted whole (1 before any round is seen)."""
        alpha = self.acceptance
        return 1.0 if alpha is None else alpha**k

    def verify_s(self, k: int) -> float:
        w, sk, skk, sv, skv = self._sums
        mean_v = sv / w
        if len(self._ks_seen) < 2:
            return mean_v * (1 + 0.05 * (k - sk / w))  # one window size seen: assume a mild slope
        denom = w * skk - sk * sk
        slope = (w * skv - sk * sv) / denom if denom > 1e-12 else 0.0
        slope = max(slope, 0.0)  # a longer window never verifies faster
        return mean_v + slope * (k - sk / w)

    def choose(self) -> WindowChoice:
        if self.fixed is not None:
            return WindowChoice(self.fixed, f"fixed window {self.fixed}")
        alpha = self.acceptance
        cap = self.load_cap
        if self.rounds < 2 or alpha is None or self._draft_s is None or self._rtt_s is None:
            return WindowChoice(min(self.initial, cap), "warm-up: not enough rounds measured")
        alpha = min(alpha, 0.999)
        best_k, best_rate = 1, -1.0
        for k in range(1, cap + 1):
            expected = (1 - alpha ** (k + 1)) / (1 - alpha)
            seconds = k * self._draft_s + self.verify_s(k) + self._rtt_s
            rate = expected / seconds
            if rate > best_rate:
                best_k, best_rate = k, rate
        reason = (
            f"α={alpha:.2f} draft={self._draft_s * 1e3:.1f}ms/token "
            f"verify≈{self.verify_s(best_k) * 1e3:.0f}ms rtt={self._rtt_s * 1e3:.0f}ms "
            f"→ k={best_k} ({best_rate:.1f} tok/s expected)"
        )
        if cap < self.max_window:
            reason += f" (server load {self._load:.2f}: window ≤ {cap})"
        return WindowChoice(best_k, reason, best_rate)


def _ewma(previous: float | None, value: float, decay: float) -> float:
    return value if previous is None else decay * previous + (1 - decay) * value
