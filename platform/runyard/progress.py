"""Progress on long work: rich spinners and bars on a terminal, silence otherwise."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)


def report_console() -> Console:
    """stdout console for tables; logs (DVC, CI) are not terminals, and rich would
    fold tables at 80 columns there."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=140)


def interactive() -> bool:
    return console.is_terminal and sys.stderr.isatty()


@contextmanager
def status(message: str):
    if not interactive():
        yield
        return
    with console.status(message):
        yield


@contextmanager
def epoch_progress(client, run_id: str, total_epochs: int, metric: str, every_s: float = 2.0):
    """A bar of epochs done, read from the run's metrics in MLflow (rank 0 logs them).

    Polling the tracking store keeps workers free of any progress plumbing.
    """
    if not interactive():
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stop = threading.Event()
    columns = (TextColumn("[bold]epochs"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[best]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("train", total=total_epochs, best="")

        def poll():
            while not stop.wait(every_s):
                try:
                    history = client.get_metric_history(run_id, metric)
                except Exception:  # noqa: BLE001 (a missed poll only delays the bar)
                    continue
                if history:
                    last = max(history, key=lambda m: m.step)
                    bar.update(task, completed=last.step + 1, best=f"{metric} {last.value:.4f}")

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
