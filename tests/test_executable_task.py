"""ExecutableTask on its own: MPI launch templates, shell commands and real executables."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from task_server_support import Crasher, Ranks, fake_mpi_launch

from colmena_core.models import ExecutableFailed, ExecutableTask, ResourceRequirements


class Adder(ExecutableTask):
    """Adds its arguments with a Python one-liner; one number comes by stdin, one by file."""

    def __init__(self) -> None:
        code = (
            "import sys; "
            "a = int(sys.argv[1]); b = int(sys.stdin.read()); c = int(open('c.txt').read()); "
            "print(a + b + c)"
        )
        super().__init__([sys.executable, "-c", code])

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        (run_dir / "c.txt").write_text(str(kwargs["c"]))
        return [str(args[0])], str(args[1])

    def postprocess(self, run_dir: Path) -> int:
        return int((run_dir / "colmena.stdout").read_text())


def test_render_mpi_launch_uses_resource_fields() -> None:
    task = Ranks("aprun -N {total_ranks} -n {cpu_processes} -d {cpu_threads} --nodes {node_count}")
    resources = ResourceRequirements(node_count=2, cpu_processes=3, cpu_threads=4)
    assert task.render_mpi_launch(resources) == "aprun -N 6 -n 3 -d 4 --nodes 2"


def test_render_mpi_launch_rejects_unknown_fields() -> None:
    with pytest.raises(KeyError, match="cpu_process"):
        Ranks("aprun -n {cpu_process}").render_mpi_launch(ResourceRequirements())


def test_assemble_shell_cmd_with_and_without_mpi() -> None:
    resources = ResourceRequirements(node_count=2, cpu_processes=3)
    plain = Adder()
    assert plain.assemble_shell_cmd(["1"], resources) == [*plain.executable, "1"]
    mpi = Ranks("mpiexec -n {total_ranks} --hosts 'a b'")
    assert mpi.assemble_shell_cmd(["-v"], resources) == [
        "mpiexec",
        "-n",
        "6",
        "--hosts",
        "a b",
        "/bin/sh",
        "-c",
        "echo done",
        "-v",
    ]


def test_mpi_needs_a_template() -> None:
    with pytest.raises(ValueError, match="mpi_command_string"):
        ExecutableTask(["/bin/true"], mpi=True)
    with pytest.raises(ValueError, match="no mpi_command_string"):
        ExecutableTask(["/bin/true"]).render_mpi_launch(ResourceRequirements())


def test_name_is_the_lower_case_class_name() -> None:
    assert Adder().__name__ == "adder"


def test_call_runs_a_real_executable(run_dirs: Path) -> None:
    assert Adder()(1, 20, c=300) == 321
    assert list(run_dirs.iterdir()) == []  # the run directory is removed


def test_execute_writes_stdout_and_returns_runtime(tmp_path: Path) -> None:
    task = Adder()
    (tmp_path / "c.txt").write_text("3")
    runtime = task.execute(tmp_path, ["1"], "2")
    assert runtime > 0
    assert (tmp_path / "colmena.stdout").read_text().strip() == "6"


def test_failing_executable_raises_with_stderr(run_dirs: Path) -> None:
    with pytest.raises(ExecutableFailed) as info:
        Crasher("out of memory", status=7)()
    assert info.value.returncode == 7
    assert "out of memory" in info.value.stderr_tail
    assert "status 7" in str(info.value) and "out of memory" in str(info.value)
    assert list(run_dirs.iterdir()) == []


def test_executable_failed_survives_pickling() -> None:
    error = ExecutableFailed(["mpiexec", "-n", "2", "sim"], 1, "segfault")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.command, copy.returncode, copy.stderr_tail) == (error.command, 1, "segfault")
    assert str(copy) == str(error)


def test_call_with_resources_goes_through_the_launcher(tmp_path: Path, run_dirs: Path) -> None:
    template, log = fake_mpi_launch(tmp_path, "-n {total_ranks}")
    task = Ranks(template)
    assert task(_resources=ResourceRequirements(node_count=2, cpu_processes=3)) == "done"
    assert log.read_text().splitlines() == ["-n", "6", "/bin/sh", "-c", "echo done"]
