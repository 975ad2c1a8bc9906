"""The edge side: the draft model, the speculation protocol client, and the in-process decoder loop."""

from edge_client.client import EdgeClient, EdgeError, generate_sync
from edge_client.decoder import GenerationResult, SpeculativeDecoder, Verifier
from edge_client.draft import DraftEngine, DraftWindow
from edge_client.events import StreamEvent, VisibleOutput
from edge_client.generation_metrics import GenerationMetrics
from edge_client.window import AdaptiveWindow, WindowChoice

__all__ = [
    "AdaptiveWindow",
    "DraftEngine",
    "DraftWindow",
    "EdgeClient",
    "EdgeError",
    "GenerationMetrics",
    "GenerationResult",
    "SpeculativeDecoder",
    "StreamEvent",
    "Verifier",
    "VisibleOutput",
    "WindowChoice",
    "generate_sync",
]
