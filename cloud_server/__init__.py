"""The cloud side: the early-exit target, its sessions, and the FastAPI server around them."""

from cloud_server.app import create_app
from cloud_server.early_exit import EarlyExitTarget
from cloud_server.exits import ExitConfig, ExitHeads
from cloud_server.loading import LoadedTarget, load_target
from cloud_server.settings import ServerSettings
from cloud_server.target_session import EngineLimits, TargetSession

__all__ = [
    "EarlyExitTarget",
    "EngineLimits",
    "ExitConfig",
    "ExitHeads",
    "LoadedTarget",
    "ServerSettings",
    "TargetSession",
    "create_app",
    "load_target",
]
