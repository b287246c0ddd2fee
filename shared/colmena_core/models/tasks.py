"""Tasks that run an executable (optionally under MPI) rather than a Python function."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from colmena_core.models.resources import ResourceRequirements

__all__ = ["ExecutableFailed", "ExecutableTask"]


class ExecutableFailed(RuntimeError):
    """The executable exited with a non-zero status."""

    def __init__(self, command: list[str], returncode: int, stderr_tail: str) -> None:
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(
            f"Command {shlex.join(command)!r} exited with status {returncode}. "
            f"End of its stderr:\n{stderr_tail}"
        )

    def __reduce__(self) -> tuple[type[ExecutableFailed], tuple[list[str], int, str]]:
        # Exceptions pickle with ``self.args`` (the message) by default, which does not fit
        # this constructor: rebuild from the fields so the error crosses process boundaries
        return type(self), (self.command, self.returncode, self.stderr_tail)


class ExecutableTask:
    """A task that runs an executable through a system call.

    Implement a task by giving the executable to ``__init__``, and overriding
    :meth:`preprocess` (write inputs, build arguments and stdin) and :meth:`postprocess`
    (read outputs). Task servers may run the three steps on different resources.

    MPI executables: set ``mpi=True`` and give ``mpi_command_string``, a template whose
    ``{}`` placeholders name fields of :class:`ResourceRequirements` (``node_count``,
    ``cpu_processes``, ``cpu_threads``, ``total_ranks``), e.g. ``mpiexec -n {total_ranks}``.
    """

    executable: list[str]
    """Command used to launch the executable"""
    mpi: bool = False
    """Whether this is an MPI executable"""
    mpi_command_string: str | None = None
    """Template of the MPI launcher command"""

    def __init__(
        self, executable: list[str], mpi: bool = False, mpi_command_string: str | None = None
    ) -> None:
        if mpi and mpi_command_string is None:
            raise ValueError(
                "An MPI task needs an mpi_command_string template, e.g. 'mpiexec -n {total_ranks}'"
            )
        self.executable = list(executable)
        self.mpi = mpi
        self.mpi_command_string = mpi_command_string

    @property
    def __name__(self) -> str:
        """Name under which the task is served: the class name in lower case."""
        return str(type(self).__name__).lower()

    def render_mpi_launch(self, resources: ResourceRequirements) -> str:
        """Create the MPI launch command for the given resources."""
        if self.mpi_command_string is None:
            raise ValueError("This task has no mpi_command_string")
        fields = resources.model_dump()
        fields["total_ranks"] = resources.total_ranks
        return self.mpi_command_string.format(**fields)

    def assemble_shell_cmd(
        self, arguments: list[str], resources: ResourceRequirements
    ) -> list[str]:
        """Assemble the shell command to be launched."""
        command = [*self.executable, *arguments]
        if self.mpi:
            command = [*shlex.split(self.render_mpi_launch(resources)), *command]
        return command

    def preprocess(
        self, run_dir: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str | None]:
        """Prepare the run directory; return the command-line arguments and the stdin text."""
        raise NotImplementedError

    def execute(
        self,
        run_dir: Path,
        arguments: list[str],
        stdin: str | None,
        resources: ResourceRequirements | None = None,
    ) -> float:
        """Run the executable in ``run_dir``; stdout and stderr go to ``colmena.stdout``/``.stderr``.

        Returns:
            Runtime in seconds

        Raises:
            ExecutableFailed: the executable exited with a non-zero status
        """
        command = self.assemble_shell_cmd(arguments, resources or ResourceRequirements())
        run_dir = Path(run_dir)
        start = perf_counter()
        with (
            open(run_dir / "colmena.stdout", "wb") as out,
            open(run_dir / "colmena.stderr", "wb") as err,
        ):
            process = subprocess.run(
                command,
                cwd=run_dir,
                input=None if stdin is None else stdin.encode(),
                stdin=subprocess.DEVNULL if stdin is None else None,
                stdout=out,
                stderr=err,
                check=False,
            )
        runtime = perf_counter() - start
        if process.returncode != 0:
            stderr_tail = (run_dir / "colmena.stderr").read_text(errors="replace")[-2000:]
            raise ExecutableFailed(command, process.returncode, stderr_tail)
        return runtime

    def postprocess(self, run_dir: Path) -> Any:
        """Read the outputs of the executable from ``run_dir``."""
        raise NotImplementedError

    def __call__(
        self, *args: Any, _resources: ResourceRequirements | None = None, **kwargs: Any
    ) -> Any:
        """Run preprocess, execute and postprocess in a fresh temporary directory."""
        run_dir = Path(tempfile.mkdtemp(prefix="colmena-", dir=os.environ.get("COLMENA_RUN_DIR")))
        try:
            arguments, stdin = self.preprocess(run_dir, args, kwargs)
            self.execute(run_dir, arguments, stdin, _resources)
            return self.postprocess(run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
