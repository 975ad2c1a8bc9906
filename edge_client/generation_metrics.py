"""Per-request metrics of the edge decoder (meanings in DESIGN.md, "Metrics meanings")."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class GenerationMetrics:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    early_predictions: int = 0
    early_hits: int = 0
    early_rounds: int = 0
    predraft_started: int = 0
    predraft_hits: int = 0
    draft_s: float = 0.0
    verify_wait_s: float = 0.0
    server_busy_s: float = 0.0
    total_s: float = 0.0
    generated_tokens: int = 0

    @property
    def mean_accepted_len(self) -> float | None:
        return self.accepted / self.rounds if self.rounds else None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def predraft_hit_rate(self) -> float | None:
        return self.predraft_hits / self.predraft_started if self.predraft_started else None

    @property
    def early_hit_rate(self) -> float | None:
        return self.early_hits / self.early_rounds if self.early_rounds else None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self) | {
            "mean_accepted_len": self.mean_accepted_len,
            "acceptance_rate": self.acceptance_rate,
            "predraft_hit_rate": self.predraft_hit_rate,
            "early_hit_rate": self.early_hit_rate,
        }
