"""The package version and the code that is running (recorded with every result)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def code_version() -> dict[str, Any]:
    """Package version and git commit (with a dirty flag) of the code that is running."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    return {"version": __version__, "git_sha": sha or None, "dirty": dirty}
