"""Every fenced code block of README.md and results/README.md is checked, so the docs a new user pastes work.

Rules (the slow half, running the blocks, is ``tests/integration/test_docs_slow.py``):

* A block preceded by the line ``<!-- docs: skip REASON -->`` is skipped; REASON must not be empty (blocks that
  need released weights, ImageNet or a GPU say so there).
* Blocks in ``text``, ``yaml``, ``json`` or no language are output or data, not commands: they are not run.
* ``python`` blocks must compile here; the slow test runs each in a fresh interpreter (``VFMTOK_DATA`` set).
* ``bash`` blocks are read line by line (``\\`` continues a line, ``#`` starts a comment, ``&&`` separates
  commands). Each command must be one of:

  - ``export K=V``: applies to the following commands;
  - ``pip install ...`` (also ``python -m pip``): not run (it changes the environment);
  - ``nox -s SESSION [-- ARGS]`` (also ``python -m nox``): SESSION must exist in ``noxfile.py``; for ``bench``
    and ``regress`` the ARGS must compose into a valid configuration (``--show``) or be ``--help``;
    nox itself is not started (its sessions run the whole suite or a preset);
  - ``vfmtok bench ARGS`` / ``python -m benchmarks.run ARGS``: must compose (``--show``), not run;
  - ``python -m benchmarks.regress ARGS``: must parse, and its overrides compose;
  - ``vfmtok SUBCOMMAND ARGS``: must parse here; the slow test runs them in order in a scratch folder.

  Anything else fails: mark such a block with a skip line and its reason.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "results/README.md")
SKIP = re.compile(r"^<!--\s*docs:\s*skip\b(.*?)-->\s*$")
RUN_LANGS = {"python", "py", "bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the skip reason ("" when the marker has none), None when not skipped

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(docs: tuple[str, ...] = DOCS) -> list[Block]:
    """Every fenced block of ``docs`` (paths relative to the repository root)."""
    out = []
    for doc in docs:
        lines = (ROOT / doc).read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^(```+|~~~+)\s*([\w+-]*)", lines[i])
            if not fence:
                i += 1
                continue
            start, lang = i, fence.group(2).lower()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), len(lines))
            prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP.match(prev.strip())
            out.append(Block(doc, start + 1, lang, "\n".join(lines[start + 1:end]),
                             marker.group(1).strip() if marker else None))
            i = end + 1
    return out


def commands(text: str) -> list[list[str]]:
    """The commands of a bash block, as argument lists."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok in ("&&", ";"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(tok)
    return out


def nox_sessions() -> set[str]:
    """Session names defined in noxfile.py."""
    text = (ROOT / "noxfile.py").read_text()
    return set(re.findall(r"@nox\.session[^\n]*\ndef (\w+)\(", text))


def classify(cmd: list[str]) -> tuple[str, list[str]]:
    """(kind, arguments) of one command; kinds: export, install, nox, bench, regress, vfmtok, unknown."""
    if cmd[0] == "export":
        return "export", cmd[1:]
    if cmd[0] in ("python", "python3"):
        if cmd[1:3] == ["-m", "pip"]:
            return "install", cmd[3:]
        if cmd[1:3] == ["-m", "nox"]:
            return "nox", cmd[3:]
        if cmd[1:3] == ["-m", "benchmarks.run"]:
            return "bench", cmd[3:]
        if cmd[1:3] == ["-m", "benchmarks.regress"]:
            return "regress", cmd[3:]
        if cmd[1:3] == ["-m", "vfmtok.cli"]:
            cmd = ["vfmtok", *cmd[3:]]
    if cmd[0] in ("pip", "pip3"):
        return "install", cmd[1:]
    if cmd[0] == "nox":
        return "nox", cmd[1:]
    if cmd[0] == "vfmtok":
        return ("bench", cmd[2:]) if cmd[1:2] == ["bench"] else ("vfmtok", cmd[1:])
    return "unknown", cmd


def check_command(cmd: list[str], where: str) -> None:
    """Fail unless ``cmd`` follows the module docstring's rules (without running anything long)."""
    from benchmarks.regress import build_parser as regress_parser
    from benchmarks.run import main as bench_main
    from vfmtok.cli import build_parser

    kind, args = classify(cmd)
    if kind == "install":
        assert args[:1] == ["install"], f"{where}: {shlex.join(cmd)}"
    elif kind == "unknown":
        pytest.fail(f"{where}: `{shlex.join(cmd)}` is not a command the docs test knows: mark its block with "
                    "`<!-- docs: skip REASON -->`")
    elif kind == "nox":
        sessions = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-s", "--session", "--sessions")]
        posargs = args[args.index("--") + 1:] if "--" in args else []
        assert sessions and set(sessions) <= nox_sessions(), f"{where}: unknown nox session in {shlex.join(cmd)}"
        if "bench" in sessions:
            check_command(["vfmtok", "bench", *posargs], where)
        if "regress" in sessions:
            check_command(["python", "-m", "benchmarks.regress", *posargs], where)
    elif kind == "bench":
        argv = ["--help"] if {"-h", "--help"} & set(args) else [*args, "--show"]
        assert bench_main(argv) == 0, f"{where}: `{shlex.join(cmd)}` does not compose"
    elif kind == "regress":
        parsed = regress_parser().parse_args(args)
        assert bench_main(["preset=smoke", *parsed.overrides, "--show"]) == 0, f"{where}: {shlex.join(cmd)}"
    elif kind == "vfmtok":
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{where}: `{shlex.join(cmd)}` does not parse (exit {e.code})")


def test_every_skip_has_a_reason_and_blocks_are_found() -> None:
    found = blocks()
    assert any(b.doc == "README.md" and b.lang == "python" for b in found)
    for b in found:
        assert b.skip is None or b.skip, f"{b.where}: `<!-- docs: skip -->` needs a reason"


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang in ("python", "py") and b.skip is None],
                         ids=lambda b: b.where)
def test_python_blocks_compile(block: Block) -> None:
    compile(block.text, block.where, "exec")


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang in RUN_LANGS - {"python", "py"} and b.skip is None],
                         ids=lambda b: b.where)
def test_bash_blocks_use_known_commands_that_parse(block: Block, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VFMTOK_DATA", os.environ.get("VFMTOK_DATA", str(ROOT.parent / "shared" / "data")))
    for cmd in commands(block.text):
        if cmd[0] == "export":
            for assignment in cmd[1:]:
                key, _, value = assignment.partition("=")
                monkeypatch.setenv(key, value)
            continue
        check_command(cmd, block.where)
    capsys.readouterr()


def test_the_rules_catch_broken_docs() -> None:
    assert commands("a \\\n  b # c\nx && y\n") == [["a", "b"], ["x"], ["y"]]
    with pytest.raises(pytest.fail.Exception, match="not a command the docs test knows"):
        check_command(["torchrun", "--nproc-per-node", "8", "x.py"], "doc:1")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command(["vfmtok", "tokenize", "--no-such-flag"], "doc:2")
    with pytest.raises(AssertionError, match="does not compose"):
        check_command(["nox", "-s", "bench", "--", "preset=smoke", "catalog.vqgan.steps=-5"], "doc:3")
    with pytest.raises(AssertionError, match="unknown nox session"):
        check_command(["nox", "-s", "benchh"], "doc:4")
