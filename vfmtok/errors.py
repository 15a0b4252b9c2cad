"""Errors a user can fix, and how the command-line entry points report them.

Every entry point (``vfmtok``, ``python -m benchmarks.run``, ``python -m benchmarks.regress``) runs its work
through :func:`run_guarded`: an exception of a known class (:data:`user_error_classes`) prints one line, what
was wrong and the fix, and exits with status 2. ``--debug`` or ``VFMTOK_DEBUG=1`` shows the traceback instead.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence

EXIT_USER_ERROR = 2
DEBUG_ENV = "VFMTOK_DEBUG"
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """Base of the project's errors that are the user's to fix (bad input, a missing file, a bad setting)."""


class ConfigError(UserError, ValueError):
    """A configuration value is out of range; the message names the key, the value and what is expected."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights cannot be obtained (no network, no local file); the message says which file to pass."""


def user_error_classes() -> tuple[type[BaseException], ...]:
    """The exception classes reported as one line (the library's own, such as ``MissingAssetError`` or
    ``ImageReadError``, derive from these; hydra's are added when hydra is installed)."""
    classes: list[type[BaseException]] = [UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                          PermissionError, ValueError, KeyError, TypeError]
    try:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        classes += [HydraException, OmegaConfBaseException]
    except ImportError:  # pragma: no cover - hydra is a dependency of the harness only
        pass
    return tuple(classes)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is among ``argv`` or ``VFMTOK_DEBUG`` is set to a true value."""
    if argv is not None and DEBUG_FLAG in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def debug_environment(debug: bool) -> Iterator[None]:
    """Within the block ``VFMTOK_DEBUG=1`` when ``debug``: nested entry points and child processes (a torchrun
    re-launch) see ``--debug`` too. The previous value is restored after."""
    if not debug:
        yield
        return
    saved = os.environ.get(DEBUG_ENV)
    os.environ[DEBUG_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = saved


def strip_debug(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug`` (accepted anywhere on the command line)."""
    return [a for a in argv if a != DEBUG_FLAG]


def _hydra_message(exc: BaseException) -> str | None:
    """Hydra/omegaconf errors reduced to the key, the value and the expected type (None: not such an error)."""
    try:
        from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return None
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
            fields = _dataclass_fields(getattr(e, "object_type", None))
            key = str(getattr(e, "key", "") or e.full_key.rsplit(".", 1)[-1])
            if msg.startswith("Key ") and " not in " in msg:
                known = f"; valid keys here: {', '.join(fields)}" if fields else ""
                return f"unknown config key {e.full_key!r}{known} (`vfmtok bench --help` lists them)"
            expected = f" (expected {fields[key]})" if key in fields else ""
            return f"config key {e.full_key!r}: {msg}{expected}"
    for e in chain:
        if isinstance(e, MissingConfigException):
            options = getattr(e, "options", None) or []
            missing = getattr(e, "missing_cfg_file", "") or ""
            name = missing.split("/")[-1] if missing else "?"
            known = f"; available: {', '.join(options)}" if options else ""
            return f"unknown preset {name!r}{known}"
        if isinstance(e, OverrideParseException):
            first = str(e).strip().splitlines()[0]
            return f"cannot parse the override: {first} (overrides look like key=value, e.g. preset=smoke)"
        if isinstance(e, ConfigCompositionException):
            return " ".join(str(e).split())
    return None


def _dataclass_fields(obj_type: object) -> dict[str, str]:
    """Field name -> annotated type (as text) of a dataclass type; empty for anything else."""
    import dataclasses

    if not (isinstance(obj_type, type) and dataclasses.is_dataclass(obj_type)):
        return {}
    return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            for f in dataclasses.fields(obj_type)}


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (multi-line messages are joined with ``; ``)."""
    hydra = _hydra_message(exc)
    if hydra is not None:
        return hydra
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # KeyError's str() would quote the message
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def run_guarded(work: Callable[[], int | None], prog: str, debug: bool = False) -> int:
    """Run ``work``; a known error prints ``prog: error: <one line>`` and returns 2 (re-raised when ``debug``)."""
    try:
        status = work()
    except user_error_classes() as exc:
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)} [{DEBUG_FLAG} shows the traceback]", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if status is None else int(status)
