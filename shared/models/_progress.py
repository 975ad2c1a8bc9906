"""Progress display on stderr with rich; every helper is a no-op when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


@contextmanager
def byte_bar(description: str, total: int | None, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield `set_completed(nbytes)` for a byte-count progress bar."""
    if not enabled:
        yield lambda _n: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console()) as bar:
        task = bar.add_task(description, total=total)

        def set_completed(n: int) -> None:
            bar.update(task, completed=n if total is None else min(n, total))

        yield set_completed
        if total is not None:
            bar.update(task, completed=total)


@contextmanager
def status(message: str, *, enabled: bool) -> Iterator[None]:
    """A spinner line while a step without measurable progress runs, then a done line."""
    if not enabled:
        yield
        return
    with console().status(message):
        yield
    console().print(f"[green]✓[/green] {message.rstrip('.… ')}")


def note(message: str, *, enabled: bool) -> None:
    if enabled:
        console().print(message)
