"""One content-addressed, verified store for every cache: stage results, trained tokenizers, tokens, features,
reference statistics, decoded arrays, converted weights.

Layout: an entry of kind ``kind`` lives in ``<root>/<kind>/<key>/`` where ``key`` hashes ``(kind, version,
inputs)`` (:func:`entry_key`; ``version`` is the kind's own format version, bumped when its meaning changes).
Its files are written atomically (:mod:`vfmtok.fileio`), then ``MANIFEST.json`` -- the size and sha256 of every
file of the entry -- is written last, atomically. An entry is complete exactly when its manifest exists: a folder
without one is in progress or was interrupted (resumable work may live there) and is never served.

On read the manifest is verified (:func:`verify`): sizes first (a truncation is found from ``stat`` alone), then a
streaming sha256 of each file in 1 MiB blocks (constant memory). Within one process an entry already hashed is
hashed again only when the size, modification time or inode of one of its files has changed. A missing, truncated
or edited file, or an unreadable manifest, makes the entry *damaged*: it is moved aside to
``<root>/.quarantine/<kind>/<key>.<time>`` (never deleted) with one warning line naming the entry and the file,
and the caller recomputes it.

Concurrency: :meth:`Entry.lock` takes an exclusive ``fcntl.flock`` on ``<root>/.locks/<kind>/<key>.lock``, so a
second process wanting the same entry waits for the first, then finds the entry complete and reuses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfmtok.fileio import atomic_write_json, sha256_file, sha256_json

log = logging.getLogger("vfmtok.store")

STORE_VERSION = 1
MANIFEST = "MANIFEST.json"
QUARANTINE = ".quarantine"
LOCKS = ".locks"
KEY_LENGTH = 16  # hex digits of the entry key (64 bits)

#: complete entries verified or written by this process (the runs' reference lists for ``vfmtok cache gc``)
touched: set[Path] = set()
#: entries this process hashed, with the (size, mtime, inode) of each file then: unchanged ones are not re-hashed
_verified: dict[Path, list[tuple[str, int, int, int]]] = {}


class DamagedEntryError(RuntimeError):
    """A cache entry failed verification and could not be moved aside."""


def entry_key(kind: str, version: int, inputs: Any, length: int = KEY_LENGTH) -> str:
    """The key of an entry: sha256 of the canonical JSON of ``(kind, version, inputs)``, shortened."""
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"invalid cache kind {kind!r}: a plain folder name is expected")
    return sha256_json({"kind": kind, "version": int(version), "inputs": inputs})[:length]


def _is_own_file(rel: str) -> bool:
    """Files that belong to the entry (not the manifest, not an atomic write's temporary file)."""
    name = rel.rsplit("/", 1)[-1]
    return rel != MANIFEST and not (name.startswith(".") and name.endswith((".tmp", ".raw")))


def entry_files(folder: str | Path) -> list[str]:
    """Relative POSIX paths of the files an entry holds (sorted; nested folders included)."""
    folder = Path(folder)
    rels = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return sorted(r for r in rels if _is_own_file(r))


def write_manifest(folder: str | Path, kind: str, key: str | None = None) -> dict[str, Any]:
    """Hash every file of ``folder`` and write its ``MANIFEST.json`` atomically (the entry is then complete)."""
    folder = Path(folder)
    files = {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}
             for rel in entry_files(folder)}
    manifest = {"store_version": STORE_VERSION, "kind": kind, "key": key or folder.name, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    touched.add(folder.resolve())
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``; None when it has none (incomplete). Raises ``ValueError`` when unreadable."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{MANIFEST} is not valid JSON ({e})") from e
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("store_version") != STORE_VERSION or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            and not k.startswith("/") and ".." not in k.split("/") for k, v in files.items()):
        raise ValueError(f"{MANIFEST} does not describe the files of a store entry (version {STORE_VERSION})")
    return manifest


@dataclass(frozen=True)
class Problem:
    """Why an entry failed verification: the file (relative to the entry) and what is wrong with it."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def verify(folder: str | Path, *, hashes: bool = True) -> list[Problem] | None:
    """Check an entry against its manifest: None when it has no manifest (incomplete), else the problems found
    (empty: intact). Sizes are checked for every file before any is hashed; ``hashes=False`` checks sizes only."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError) as e:
        return [Problem(MANIFEST, str(e))]
    if manifest is None:
        return None
    problems: list[Problem] = []
    files = manifest["files"]
    signature = []
    for rel, want in files.items():
        try:
            st = (folder / rel).stat()
        except FileNotFoundError:
            problems.append(Problem(rel, "missing"))
            continue
        signature.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
        if st.st_size != want["size"]:
            problems.append(Problem(rel, f"{st.st_size} bytes, the manifest says {want['size']} "
                                         "(truncated or rewritten)"))
    if problems or not hashes:
        return problems
    manifest_st = (folder / MANIFEST).stat()
    signature.append((MANIFEST, manifest_st.st_size, manifest_st.st_mtime_ns, manifest_st.st_ino))
    resolved = folder.resolve()
    if _verified.get(resolved) == signature:  # hashed by this process, and no file changed since
        touched.add(resolved)
        return problems
    for rel, want in files.items():
        if sha256_file(folder / rel) != want["sha256"]:
            problems.append(Problem(rel, "sha256 differs from the manifest (edited or corrupted)"))
    if not problems:
        touched.add(resolved)
        _verified[resolved] = signature
    return problems


def quarantine(folder: str | Path, root: str | Path, kind: str) -> Path:
    """Move ``folder`` to ``<root>/.quarantine/<kind>/<name>.<UTC time>`` (never deleted); return the new path."""
    folder = Path(folder)
    dest_dir = Path(root) / QUARANTINE / kind
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
    dest = dest_dir / f"{folder.name}.{stamp}"
    try:
        os.replace(folder, dest)
    except OSError as e:
        raise DamagedEntryError(f"damaged cache entry {folder} could not be moved to {dest}: {e}; "
                                "move or delete it by hand") from e
    touched.discard(folder.resolve())
    return dest


def check(folder: str | Path, root: str | Path, kind: str, label: str = "") -> bool:
    """True when ``folder`` is a complete, intact entry. A damaged one is quarantined (one warning line naming
    ``label`` -- the stage or cache -- and the first bad file) and False is returned, as for an absent one."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    problems = verify(folder)
    if problems is None:
        return False
    if not problems:
        return True
    dest = quarantine(folder, root, kind)
    more = f" (also {', '.join(p.file for p in problems[1:])})" if len(problems) > 1 else ""
    log.warning("cache %s: %s/%s%s; moved to %s, recomputing", label or kind, folder.name, problems[0], more, dest)
    return False


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block; yields whether it had to wait
    for another process (``on_wait`` is called once before waiting). Released when the block ends or the
    process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    waited = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield waited
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(path: str | Path) -> bool:
    """Whether another process holds the lock at ``path`` right now."""
    path = Path(path)
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Entry:
    """One entry of a :class:`Store`: ``<root>/<kind>/<key>/``."""

    def __init__(self, root: Path, kind: str, key: str, label: str = "") -> None:
        self.root, self.kind, self.key = Path(root), kind, key
        self.label = label or kind
        self.path = self.root / kind / key

    @property
    def lock_path(self) -> Path:
        """The entry's lock file (outside the entry, so quarantine does not move it)."""
        return self.root / LOCKS / self.kind / f"{self.key}.lock"

    def lock(self, on_wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[bool]:
        """Exclusive lock on the entry (see :func:`file_lock`)."""
        return file_lock(self.lock_path, on_wait)

    def complete(self) -> bool:
        """Whether the entry has a manifest (no verification)."""
        return (self.path / MANIFEST).is_file()

    def check(self) -> bool:
        """Verified and complete (a damaged entry is quarantined, see :func:`check`)."""
        return check(self.path, self.root, self.kind, self.label)

    def commit(self) -> dict[str, Any]:
        """Write the manifest: the entry becomes complete."""
        return write_manifest(self.path, self.kind, self.key)

    def discard_incomplete(self) -> None:
        """Remove the folder of an entry without a manifest (leftovers of an interrupted build)."""
        if self.path.is_dir() and not self.complete():
            shutil.rmtree(self.path)


class Store:
    """Entries of every kind under one root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, kind: str, version: int, inputs: Any, label: str = "") -> Entry:
        """The entry of ``kind`` for ``inputs`` (which need not exist yet)."""
        return Entry(self.root, kind, entry_key(kind, version, inputs), label)

    def get(self, kind: str, version: int, inputs: Any, label: str = "") -> Path | None:
        """The folder of the verified entry, or None when absent, incomplete or damaged (then quarantined)."""
        entry = self.entry(kind, version, inputs, label)
        return entry.path if entry.check() else None

    def put(self, kind: str, version: int, inputs: Any, build: Callable[[Path], None], label: str = "") -> Path:
        """Build the entry under its lock: ``build(folder)`` writes the files into an empty folder, then the
        manifest is written. When another process completed the entry meanwhile, its entry is kept."""
        entry = self.entry(kind, version, inputs, label)
        with entry.lock():
            if entry.check():  # another process built it while this one waited
                return entry.path
            entry.discard_incomplete()
            entry.path.mkdir(parents=True, exist_ok=True)
            build(entry.path)
            entry.commit()
        return entry.path

    def get_or_build(self, kind: str, version: int, inputs: Any, build: Callable[[Path], None],
                     label: str = "") -> Path:
        """The folder of a verified entry, built by ``build(folder)`` (see :meth:`put`) when absent or damaged."""
        return self.get(kind, version, inputs, label) or self.put(kind, version, inputs, build, label)

    def entries(self) -> Iterator[tuple[str, Path]]:
        """``(kind, folder)`` of every entry folder under the root (complete or not), sorted."""
        if not self.root.is_dir():
            return
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for folder in sorted(p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                yield kind_dir.name, folder


def read_json(folder: str | Path, name: str) -> Any:
    """A JSON file of a (verified) entry."""
    return json.loads((Path(folder) / name).read_text())
