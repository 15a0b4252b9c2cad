"""Progress on long work: tqdm bars for loops with a known length, a heartbeat for everything else."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

from tqdm.auto import tqdm


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool | None = None) -> tqdm:
    """A tqdm bar, shown only on a terminal unless ``enabled`` says otherwise."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, initial=initial, desc=desc, disable=not show, dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def heartbeat(label: str, every_s: float = 30.0, enabled: bool = True) -> Iterator[None]:
    """Print ``label: still running (N s)`` to stderr every ``every_s`` seconds until the block ends.

    For work whose length is unknown (a stage, a cache build): the user sees that it is alive, and for how long.
    """
    if not enabled or every_s <= 0:
        yield
        return
    done = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            print(f"{label}: still running ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name=f"heartbeat:{label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
