"""The docs' blocks, run: each python block in a fresh interpreter, each bash block's ``vfmtok`` commands in order.

The rules are in ``tests/unit/test_docs.py`` (which checks every block quickly); ``bench`` runs and nox sessions are
only composed there, never started here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.unit.test_docs import ROOT, Block, blocks, classify, commands

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VFMTOK_DEBUG"}
    env.setdefault("VFMTOK_DATA", str(ROOT.parent / "shared" / "data"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang in ("python", "py") and b.skip is None],
                         ids=lambda b: b.where)
def test_python_blocks_run(block: Block, tmp_path) -> None:
    script = tmp_path / "block.py"
    script.write_text(block.text + "\n")
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", str(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang in ("bash", "sh", "shell", "console")
                                   and b.skip is None and any(classify(c)[0] == "vfmtok" for c in commands(b.text))],
                         ids=lambda b: b.where)
def test_vfmtok_commands_run(block: Block, tmp_path) -> None:
    env = _env()
    for cmd in commands(block.text):
        kind, args = classify(cmd)
        if kind == "export":
            env.update(a.partition("=")[::2] for a in args)
        if kind != "vfmtok":
            continue
        proc = subprocess.run([sys.executable, "-m", "vfmtok.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{block.where}: vfmtok {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
