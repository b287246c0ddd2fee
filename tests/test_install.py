"""The README's installation: a wheel built from the checkout carries the ``colmena`` command,
the services and their data files, and declares what the services need.

The wheel is installed without dependencies into a folder of its own (quick, offline); the
dependencies come from the environment running the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_names_the_install_commands_tested_here() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'pip install ".[services]"' in readme
    assert "pip wheel --no-deps -w dist ." in readme


def test_a_built_wheel_installs_a_working_colmena_command(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("colmena_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = archive.read(metadata).decode()
        entry_points = archive.read(metadata.replace("METADATA", "entry_points.txt")).decode()
    assert "colmena_services/gateway/static/index.html" in names
    assert "colmena = colmena_services.cli:main" in entry_points
    for needed in ("pydantic-settings", "fastapi-offline", "uvicorn", "colmena-core"):
        assert re.search(rf'Requires-Dist: {needed}\b.*extra == "services"', requires), needed
    assert re.search(r'Requires-Dist: matplotlib.*extra == "report"', requires)

    target = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    command = target / "bin" / "colmena"
    version = subprocess.run(
        [sys.executable, str(command), "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and version.stdout.startswith("colmena "), version.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import colmena_services.gateway.app as a; print(a.STATIC)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(target)), (where.stdout, where.stderr)
    assert (Path(where.stdout.strip()) / "index.html").is_file()


def test_the_demo_environment_has_the_colmena_command() -> None:
    """``make demo`` installs the extras the ``colmena`` command needs (the services') and
    ``colmena report``'s, which README's demo section points to."""
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^\$\(VENV\)/\.demo-installed:.*?\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert rule, "no rule makes .demo-installed"
    assert re.search(r'pip install .*-e "\.\[services,report\]"', rule.group(1)), rule.group(1)
