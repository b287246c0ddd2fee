"""Deployment smoke test: build the images, run deploy/compose.yaml, drive one task, clean up.

    python3 deploy/smoke.py [--stage images|infra|full]      (or scripts/deploy-smoke.sh)

Stages, each including the previous one:

- ``images``: base images, the taskserver/thinker/gateway images from deploy/Dockerfile,
  checks inside them (non-root user, ``import colmena_core``, the quickstart example on a
  read-only root file system);
- ``infra``: RabbitMQ and Redis from deploy/compose.yaml, healthy, with the generated
  credentials and deploy/rabbitmq/rabbitmq.conf's consumer timeout and message size limit,
  RabbitMQ of the major version compose.yaml ships, reachable from a service image;
- ``full`` (default): the whole compose stack; one task submitted through the gateway's REST
  API and its result read back; the demo thinker runs its campaign to completion.

What it needs and does on its own:

- A container engine. It uses the one DOCKER_HOST or /var/run/docker.sock points to when it
  answers; otherwise (as root) it starts a private dockerd with its state under the cache
  directory, no iptables rules, no IP forwarding and no default bridge (so nothing in a
  container can reach beyond the compose networks), and stops it at the end.
- docker, docker-compose (v1) or the compose v2 plugin, dockerd and debootstrap: installed
  with apt-get when missing and running as root on Debian/Ubuntu.
- Base images without a registry: unless --base-image/--rabbitmq-image/--redis-image name
  images to use, it makes them from Debian packages (debootstrap, then ``docker import``);
  the RabbitMQ image from Debian trixie's rabbitmq-server 4.x (the root file system of
  scripts/rabbitmq4-root.sh), so that compose is proven with the major version it ships.
- Python wheels for an offline image build, made on the host with this interpreter's pip
  (which must be the image's Python version) and copied into deploy/wheelhouse/ for the build.

Everything is cached under --cache-dir (default ~/.cache/colmena-deploy), keyed by the content
that made it, so a second run skips the slow steps; a fresh machine builds it all. At the end
it removes the containers, networks and volumes it created, the wheels it put in
deploy/wheelhouse/, its images when it used an engine it did not start, and the engine it
started together with any bridge or iptables chain that engine left behind.

Exit status: 0 passed, 1 failed, 3 cannot run on this machine (no engine, and not root to
start one). Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
WHEELHOUSE = DEPLOY / "wheelhouse"
STAGES = ("images", "infra", "full")
SERVICES = ("taskserver", "thinker", "gateway")
PROJECT = "colmena-smoke"
IMAGE_PREFIX = "colmena-smoke"
IMAGE_TAG = "test"
EXIT_CANNOT_RUN = 3

# Recipes of the locally made base images. Changing one changes its cache key.
DEBIAN_SUITE = "bookworm"
PYTHON_PACKAGES = ("python3", "python3-venv")
REDIS_PACKAGES = ("redis-server",)
# RabbitMQ comes from the root file system of scripts/rabbitmq4-root.sh (Debian trixie's
# rabbitmq-server 4.x, the major version compose.yaml ships), made once and shared with the
# test suite's RabbitMQ 4 pass.
RABBITMQ_ROOT_SCRIPT = REPOSITORY / "scripts" / "rabbitmq4-root.sh"
RABBITMQ_ROOT_EXCLUDED = (
    "./tmp/*",  # the test suite's throwaway nodes
    "./.colmena-*",
    "./var/lib/rabbitmq/.erlang.cookie",  # every container makes its own
    "./var/lib/rabbitmq/mnesia/*",
)
TRIMMED = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_IMPORT_CHANGES = (f"ENV PATH={SYSTEM_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]')
# Same interface as the official rabbitmq image for what compose.yaml uses: rabbitmq-server
# and rabbitmq-diagnostics on the PATH, RABBITMQ_DEFAULT_USER/PASS, conf.d, /var/lib/rabbitmq.
RABBITMQ_IMPORT_CHANGES = (
    f"ENV PATH=/usr/lib/rabbitmq/bin:{SYSTEM_PATH}",
    "ENV HOME=/var/lib/rabbitmq",
    "ENV LANG=C.UTF-8",
    "USER rabbitmq",
    "EXPOSE 5672",
    'CMD ["rabbitmq-server"]',
)
REDIS_IMPORT_CHANGES = (
    f"ENV PATH={SYSTEM_PATH}",
    "USER redis",
    "WORKDIR /data",
    "EXPOSE 6379",
    'CMD ["redis-server"]',
)
RECIPE_VERSION = "1"

# The demo campaign's function (quickstart: f(x) = x**2) and what the gateway must answer.
PROBE_METHOD = "target_function"
PROBE_ARGUMENT = 3.0
PROBE_EXPECTED = 9.0


class CannotRun(Exception):
    """This machine cannot run the smoke test (no engine, and no rights to start one)."""


class SmokeFailure(Exception):
    """A check failed."""


class Deadline(Exception):
    """The overall time limit ran out."""


def log(message: str) -> None:
    print(f"[deploy-smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"{title} ...")
    yield
    log(f"{title}: done in {time.monotonic() - started:.1f} s")


@dataclass
class Runner:
    """Runs commands with the engine's environment and an overall deadline."""

    deadline: float
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Deadline("the smoke test ran out of time")
        return left

    def run(
        self,
        command: Sequence[str],
        *,
        check: bool = True,
        capture: bool = False,
        timeout: float | None = None,
        cwd: Path | None = None,
        stdin: Any = None,
        quiet: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        if not quiet:
            log("$ " + " ".join(command))
        try:
            result = subprocess.run(
                list(command),
                env=self.env,
                cwd=cwd,
                stdin=stdin,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE if capture else None,
                timeout=limit,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise SmokeFailure(f"timed out after {limit:.0f} s: {' '.join(command)}") from error
        if check and result.returncode != 0:
            detail = ""
            if capture:
                detail = "\n" + (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise SmokeFailure(f"exit {result.returncode}: {' '.join(command)}{detail}")
        return result

    def output(self, command: Sequence[str], **options: Any) -> str:
        return self.run(command, capture=True, quiet=True, **options).stdout.decode().strip()


def content_key(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Host tools


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_host_tools(need_engine: bool, need_debootstrap: bool) -> None:
    """Install what is missing with apt-get (root on Debian/Ubuntu), or say what to install."""
    wanted: dict[str, str] = {"docker": "docker.io"}
    if need_engine:
        wanted["dockerd"] = "docker.io"
    if need_debootstrap:
        wanted["debootstrap"] = "debootstrap"
    if not compose_command_available():
        wanted["docker-compose"] = "docker-compose"
    missing = sorted({package for tool, package in wanted.items() if not shutil.which(tool)})
    if not missing:
        return
    if not (is_root() and shutil.which("apt-get")):
        raise CannotRun(
            f"missing {', '.join(missing)}: install them (Debian/Ubuntu: apt-get install "
            f"{' '.join(missing)}) or run as root to let this script install them"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=env,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )


def compose_command_available() -> bool:
    if shutil.which("docker-compose"):
        return True
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        return probe.returncode == 0
    return False


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CannotRun("neither `docker compose` nor docker-compose is installed")


# ---------------------------------------------------------------------------------------------
# The engine


def engine_answers(env: Mapping[str, str]) -> bool:
    if not shutil.which("docker"):
        return False
    try:
        probe = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=dict(env),
            capture_output=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def network_state() -> tuple[set[str], set[tuple[str, str]]]:
    """Names of the network links and (table, chain) of the iptables chains present now."""
    links: set[str] = set()
    if shutil.which("ip"):
        shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, check=False)
        for line in shown.stdout.decode().splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                links.add(parts[1].strip().split("@")[0])
    chains: set[tuple[str, str]] = set()
    if shutil.which("iptables"):
        for table in ("filter", "nat"):
            listed = subprocess.run(
                ["iptables", "-t", table, "-S"], capture_output=True, check=False
            )
            for line in listed.stdout.decode().splitlines():
                if line.startswith("-N "):
                    chains.add((table, line.split()[1]))
    return links, chains


@dataclass
class PrivateEngine:
    """A dockerd of our own: state under the cache, runtime files in a short temporary path."""

    data_root: Path
    runtime: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    links_before: set[str] = field(default_factory=set, init=False)
    chains_before: set[tuple[str, str]] = field(default_factory=set, init=False)
    # Older dockerd versions write a trust key to /etc/docker/key.json whatever they are told.
    etc_files_before: set[Path] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        # unix socket paths are limited to ~100 bytes: keep this one short.
        self.runtime = Path(tempfile.mkdtemp(prefix="colmena-engine-", dir="/tmp"))

    @property
    def host(self) -> str:
        return f"unix://{self.runtime}/docker.sock"

    def start(self, timeout: float = 90.0) -> None:
        self.links_before, self.chains_before = network_state()
        self.etc_files_before = _etc_docker_files()
        self.data_root.mkdir(parents=True, exist_ok=True)
        config = self.runtime / "daemon.json"
        config.write_text("{}\n")  # ignore the machine's /etc/docker/daemon.json
        command = [
            "dockerd",
            "--host",
            self.host,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.runtime / "exec"),
            "--pidfile",
            str(self.runtime / "dockerd.pid"),
            "--config-file",
            str(config),
            # Containers reach each other on the compose networks and nothing else.
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--log-level=warn",
        ]
        log("starting a private dockerd (" + " ".join(command[1:3]) + ")")
        log_file = (self.runtime / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        env = dict(os.environ, DOCKER_HOST=self.host)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise SmokeFailure(
                    f"dockerd exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            if (self.runtime / "docker.sock").exists() and engine_answers(env):
                return
            time.sleep(0.5)
        raise SmokeFailure(f"dockerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        path = self.runtime / "dockerd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop dockerd and its containerd, then remove what they left on the host."""
        if self.process is not None and self.process.poll() is None:
            children = _child_pids(self.process.pid)
            log(f"stopping the private dockerd (pid {self.process.pid})")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("dockerd did not stop within 60 s: killing it")
                self.process.kill()
                self.process.wait(timeout=30)
            # containerd and its shims end shortly after dockerd: wait for them, then insist.
            waited_until = time.monotonic() + 20
            for pid in children:
                while _alive(pid) and time.monotonic() < waited_until:
                    time.sleep(0.2)
                if _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        log(f"killed leftover engine process {pid}")
        self._unmount_leftovers()
        self._remove_network_leftovers()
        for created in sorted(_etc_docker_files() - self.etc_files_before, reverse=True):
            log(f"removing {created}, made by dockerd")
            if created.is_dir():
                with contextlib.suppress(OSError):
                    created.rmdir()
            else:
                created.unlink(missing_ok=True)
        shutil.rmtree(self.runtime, ignore_errors=True)

    def _unmount_leftovers(self) -> None:
        prefixes = (str(self.runtime), str(self.data_root))
        mounts = Path("/proc/mounts").read_text().splitlines()
        targets = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for target in sorted((t for t in targets if t.startswith(prefixes)), reverse=True):
            log(f"unmounting leftover {target}")
            subprocess.run(["umount", "-l", target], check=False)

    def _remove_network_leftovers(self) -> None:
        links, chains = network_state()
        for link in sorted(links - self.links_before):
            if link == "docker0" or link.startswith(("br-", "veth")):
                log(f"removing leftover network link {link}")
                subprocess.run(["ip", "link", "delete", link], check=False)
        created = sorted(chain for chain in chains - self.chains_before if "DOCKER" in chain[1])
        for table, chain in created:
            log(f"removing leftover iptables chain {table}/{chain}")
            subprocess.run(["iptables", "-t", table, "-F", chain], check=False)
        for table, chain in created:
            # A chain can only go once no rule jumps to it.
            listed = subprocess.run(
                ["iptables", "-t", table, "-S"], capture_output=True, check=False
            ).stdout.decode()
            for rule in listed.splitlines():
                if rule.startswith("-A ") and f"-j {chain}" in rule:
                    subprocess.run(["iptables", "-t", table, "-D", *rule.split()[1:]], check=False)
            subprocess.run(["iptables", "-t", table, "-X", chain], check=False)


def _etc_docker_files() -> set[Path]:
    etc = Path("/etc/docker")
    return {etc, *etc.rglob("*")} if etc.exists() else set()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def _child_pids(pid: int) -> list[int]:
    """Descendants of ``pid`` (containerd and its shims), deepest first."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found.extend(_child_pids(int(child)))
                found.append(int(child))
    return found


# ---------------------------------------------------------------------------------------------
# Base images from Debian packages


def debian_mirror() -> str | None:
    """The Debian mirror this machine's apt uses (or COLMENA_DEBIAN_MIRROR), if one is found."""
    configured = os.environ.get("COLMENA_DEBIAN_MIRROR")
    if configured:
        return configured
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        text = path.read_text(errors="replace")
        for stanza in text.split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[0] != "#"
            )
            suites = fields.get("Suites", "").split()
            if DEBIAN_SUITE in suites and "Types" in fields and "deb" in fields["Types"].split():
                return fields.get("URIs", "").split()[0]
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == DEBIAN_SUITE:
                    return words[1] if not words[1].startswith("[") else words[2]
    return None


def make_rootfs(name: str, packages: Sequence[str], cache: Path, runner: Runner) -> Path:
    """A trimmed root file system tarball for ``packages``, cached by its recipe."""
    key = content_key(RECIPE_VERSION, DEBIAN_SUITE, packages, TRIMMED, platform.machine())
    tarball = cache / "rootfs" / f"{name}-{key}.tar"
    if tarball.exists():
        log(f"root file system {name}: cached ({tarball.name})")
        return tarball
    if not is_root():
        raise CannotRun("making a base image with debootstrap needs root")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"rootfs-{name}-", dir=tarball.parent))
    try:
        target = work / "root"
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            DEBIAN_SUITE,
            str(target),
        ]
        mirror = debian_mirror()
        if mirror:
            command.append(mirror)
        runner.run(command, capture=True, stdin=subprocess.DEVNULL, timeout=900)
        for relative in TRIMMED:
            for entry in (target / relative).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if "redis-server" in packages:
            data = target / "data"
            data.mkdir(exist_ok=True)
            owner = (target / "var/lib/redis").stat()
            os.chown(data, owner.st_uid, owner.st_gid)
        partial = tarball.with_suffix(".partial")
        runner.run(
            ["tar", "--numeric-owner", "-C", str(target), "-cf", str(partial), "."], quiet=True
        )
        partial.rename(tarball)
        for stale in tarball.parent.glob(f"{name}-*.tar"):
            if stale != tarball:
                stale.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def rabbitmq_rootfs(cache: Path, runner: Runner) -> tuple[Path, str]:
    """A tarball of the RabbitMQ 4 root file system and its rabbitmq-server version, cached.

    The root itself is made (once) by scripts/rabbitmq4-root.sh.
    """
    if not is_root():
        raise CannotRun("making the RabbitMQ 4 base image needs root (debootstrap)")
    made = runner.run(["bash", str(RABBITMQ_ROOT_SCRIPT)], capture=True, timeout=1500)
    root = Path(made.stdout.decode().strip().splitlines()[-1])
    version = (root / ".colmena-rabbitmq-version").read_text().strip()
    log(f"RabbitMQ root file system: rabbitmq-server {version}")
    key = content_key(RECIPE_VERSION, "rabbitmq4", version, TRIMMED, platform.machine())
    tarball = cache / "rootfs" / f"rabbitmq4-{key}.tar"
    if tarball.exists():
        return tarball, version
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial")
    excluded = [*RABBITMQ_ROOT_EXCLUDED, *(f"./{relative}/*" for relative in TRIMMED)]
    runner.run(
        [
            "tar",
            "--numeric-owner",
            *(f"--exclude={pattern}" for pattern in excluded),
            "-C",
            str(root),
            "-cf",
            str(partial),
            ".",
        ],
        quiet=True,
    )
    partial.rename(tarball)
    for stale in tarball.parent.glob("rabbitmq4-*.tar"):
        if stale != tarball:
            stale.unlink()
    return tarball, version


def ensure_local_images(cache: Path, runner: Runner) -> dict[str, str]:
    """Base, RabbitMQ and Redis images made from Debian packages; returns role -> image."""
    rabbitmq_tarball, rabbitmq_version = rabbitmq_rootfs(cache, runner)
    recipes: dict[str, tuple[object, tuple[str, ...]]] = {
        "python": (PYTHON_PACKAGES, PYTHON_IMPORT_CHANGES),
        "rabbitmq": (("rabbitmq4", rabbitmq_version), RABBITMQ_IMPORT_CHANGES),
        "redis": (REDIS_PACKAGES, REDIS_IMPORT_CHANGES),
    }
    images: dict[str, str] = {}
    missing: list[str] = []
    for role, (contents, changes) in recipes.items():
        key = content_key(RECIPE_VERSION, DEBIAN_SUITE, contents, TRIMMED, changes)
        images[role] = f"colmena-local/{role}:{key}"
        inspected = runner.run(
            ["docker", "image", "inspect", images[role]], check=False, capture=True, quiet=True
        )
        if inspected.returncode != 0:
            missing.append(role)
    if not missing:
        log("local base images: all present in the engine")
        return images
    # The debootstraps are independent: run them side by side.
    tarballs: dict[str, Path] = {"rabbitmq": rabbitmq_tarball}
    errors: list[BaseException] = []

    def build(role: str, packages: tuple[str, ...]) -> None:
        try:
            tarballs[role] = make_rootfs(role, packages, cache, runner)
        except BaseException as error:  # reported below, in the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=build, args=(role, packages), daemon=True)
        for role, packages in (("python", PYTHON_PACKAGES), ("redis", REDIS_PACKAGES))
        if role in missing
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=runner.remaining())
    if errors:
        raise errors[0]
    for role in missing:
        command = ["docker", "import"]
        for change in recipes[role][1]:
            command += ["--change", change]
        command += [str(tarballs[role]), images[role]]
        runner.run(command, capture=True)
    return images


# ---------------------------------------------------------------------------------------------
# Wheels for the offline build


def ensure_wheelhouse(cache: Path, runner: Runner, base_image: str) -> Path:
    """Wheels of every dependency of the services extra (and the build backend), cached.

    They are built on the host with this interpreter's pip, then checked against the base
    image's own interpreter (markers such as ``python_full_version < "3.11.3"`` can ask for
    more there): whatever an offline install in the image still misses is added.
    """
    image_python = image_python_version(runner, base_image)
    host_python = platform.python_version()
    if image_python.split(".")[:2] != host_python.split(".")[:2]:
        raise SmokeFailure(
            f"the wheels are built with this interpreter (Python {host_python}) but the base "
            f"image has Python {image_python}: run this script with that Python version"
        )
    pyproject = (REPOSITORY / "pyproject.toml").read_bytes()
    key = content_key(pyproject, image_python, host_python, platform.machine(), RECIPE_VERSION)
    directory = cache / "wheels" / key
    if (directory / ".complete").exists():
        log(f"wheelhouse: cached ({directory.name})")
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    requirements = runner.output(
        [
            sys.executable,
            str(DEPLOY / "docker" / "requirements.py"),
            str(REPOSITORY / "pyproject.toml"),
            "services",
        ]
    ).splitlines()
    requirements += ["setuptools>=68", "wheel"]
    (directory / "requirements.txt").write_text("\n".join(requirements) + "\n")
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(directory),
    ]
    runner.run(
        [*pip_wheel, "--requirement", str(directory / "requirements.txt")],
        capture=True,
        timeout=900,
    )
    for _ in range(10):
        missing = missing_in_image(runner, base_image, directory)
        if not missing:
            break
        log(f"wheels the image's Python {image_python} also needs: {', '.join(missing)}")
        runner.run([*pip_wheel, "--no-deps", *missing], capture=True, timeout=600)
    else:
        raise SmokeFailure("the wheelhouse still misses packages after 10 rounds")
    (directory / ".complete").write_text("")
    for stale in directory.parent.iterdir():
        if stale != directory:
            shutil.rmtree(stale, ignore_errors=True)
    return directory


def missing_in_image(runner: Runner, base_image: str, wheels: Path) -> list[str]:
    """Requirements an offline install in ``base_image`` cannot satisfy from ``wheels``."""
    script = (
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --quiet --dry-run "
        "--disable-pip-version-check --no-index --find-links /wheelhouse "
        "--requirement /wheelhouse/requirements.txt"
    )
    result = runner.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--volume",
            f"{wheels}:/wheelhouse:ro",
            "--entrypoint",
            "sh",
            base_image,
            "-c",
            script,
        ],
        check=False,
        capture=True,
        quiet=True,
        timeout=300,
    )
    if result.returncode == 0:
        return []
    output = (result.stdout + result.stderr).decode(errors="replace")
    found = re.findall(r"No matching distribution found for (.+)", output)
    if not found:
        raise SmokeFailure(f"an offline install in {base_image} fails:\n{output[-3000:]}")
    # Drop the environment marker: it was evaluated in the image already.
    return sorted({re.sub(r"\x1b\[[0-9;]*m", "", spec).split(";")[0].strip() for spec in found})


@contextlib.contextmanager
def wheels_in_build_context(wheels: Path) -> Iterator[None]:
    """Put the wheels in deploy/wheelhouse/ for the build, and take them out again."""
    placed: list[Path] = []
    try:
        for wheel in sorted(wheels.glob("*.whl")):
            target = WHEELHOUSE / wheel.name
            if target.exists():
                continue
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
            placed.append(target)
        yield
    finally:
        for path in placed:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The compose stack


@dataclass
class Stack:
    runner: Runner
    compose: list[str]
    env_file: Path
    gateway_port: int
    token: str

    def command(self, *arguments: str) -> list[str]:
        return [
            *self.compose,
            "--project-name",
            PROJECT,
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            str(self.env_file),
            *arguments,
        ]

    def run(self, *arguments: str, **options: Any) -> subprocess.CompletedProcess[bytes]:
        return self.runner.run(self.command(*arguments), **options)

    def container(self, service: str) -> str:
        return self.runner.output(self.command("ps", "-q", service))

    def state(self, service: str) -> dict[str, Any]:
        container = self.container(service)
        if not container:
            return {}
        raw = self.runner.output(
            ["docker", "inspect", "--format", "{{json .State}}|{{.RestartCount}}", container]
        )
        state_json, restarts = raw.rsplit("|", 1)
        state: dict[str, Any] = json.loads(state_json)
        state["RestartCount"] = int(restarts)
        return state

    def wait_healthy(self, services: Sequence[str], timeout: float) -> None:
        started = time.monotonic()
        pending = list(services)
        while pending:
            for service in list(pending):
                state = self.state(service)
                health = (state.get("Health") or {}).get("Status")
                if health == "healthy":
                    log(f"{service}: healthy after {time.monotonic() - started:.0f} s")
                    pending.remove(service)
                elif state and not state.get("Running", False):
                    raise SmokeFailure(f"{service} stopped (exit {state.get('ExitCode')})")
                elif state.get("RestartCount", 0) >= 2:
                    raise SmokeFailure(
                        f"{service} keeps crashing ({state['RestartCount']} restarts)"
                    )
            if pending and time.monotonic() - started > timeout:
                raise SmokeFailure(f"not healthy within {timeout:.0f} s: {', '.join(pending)}")
            if pending:
                time.sleep(2)

    def dump_logs(self) -> None:
        self.runner.run(self.command("ps"), check=False, timeout=60)
        self.runner.run(self.command("logs", "--no-color", "--tail", "80"), check=False, timeout=60)

    def down(self) -> None:
        self.runner.run(
            self.command("down", "--volumes", "--remove-orphans", "--timeout", "20"),
            check=False,
            timeout=300,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_env_file(path: Path, images: Mapping[str, str], port: int, token: str) -> None:
    """A throwaway deploy/.env equivalent with fresh random secrets."""
    values = {
        "COMPOSE_PROJECT_NAME": PROJECT,
        "RABBITMQ_DEFAULT_USER": "colmena-" + secrets.token_hex(4),
        "RABBITMQ_DEFAULT_PASS": secrets.token_urlsafe(24),
        "REDIS_PASSWORD": secrets.token_urlsafe(24),
        "COLMENA_CAMPAIGN_SECRET": secrets.token_urlsafe(32),
        **{
            f"COLMENA_{kind}_BROKER_PASSWORD": secrets.token_urlsafe(24)
            for kind in ("THINKER", "TASKSERVER", "GATEWAY", "MONITOR")
        },
        "COLMENA_GATEWAY_TOKENS": f"{token}:smoke-client",
        "COLMENA_CAMPAIGN": "smoke",
        "COLMENA_GATEWAY_BIND": "127.0.0.1",
        "COLMENA_GATEWAY_PORT": str(port),
        "COLMENA_IMAGE_PREFIX": IMAGE_PREFIX,
        "COLMENA_IMAGE_TAG": IMAGE_TAG,
        "COLMENA_BASE_IMAGE": images["python"],
        "COLMENA_RABBITMQ_IMAGE": images["rabbitmq"],
        "COLMENA_REDIS_IMAGE": images["redis"],
        "COLMENA_PIP_OFFLINE": "1",
    }
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(0o600)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


# ---------------------------------------------------------------------------------------------
# Checks


def check_images(runner: Runner, stage: str) -> None:
    """Each image runs as the unprivileged user and imports the library; one runs the example."""
    hardened = [
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/var/lib/colmena:uid=10001,gid=10001",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
    ]
    probe = (
        "import os, sys, colmena_core; "
        "assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid()); "
        "print(sys.version.split()[0], colmena_core.__file__)"
    )
    for service in SERVICES:
        image = f"{IMAGE_PREFIX}/{service}:{IMAGE_TAG}"
        shown = runner.output(
            ["docker", "run", *hardened, "--entrypoint", "python", image, "-c", probe]
        )
        size = runner.output(["docker", "image", "inspect", "--format", "{{.Size}}", image])
        log(f"{image}: {int(size) / 1e6:.0f} MB, Python {shown}")
        if stage == "full":
            runner.run(
                ["docker", "run", *hardened, image, "--help"], capture=True, quiet=True, timeout=120
            )
    # The quickstart campaign (pipes and a local Parsl executor) inside the task-server image,
    # as the services will run there: unprivileged, read-only root, no network.
    runner.run(
        [
            "docker",
            "run",
            *hardened,
            "--volume",
            f"{REPOSITORY / 'examples'}:/opt/colmena-examples/examples:ro",
            "--workdir",
            "/opt/colmena-examples",
            "--entrypoint",
            "python",
            f"{IMAGE_PREFIX}/taskserver:{IMAGE_TAG}",
            "-m",
            "examples.quickstart",
            "--guesses",
            "3",
        ],
        timeout=300,
    )


def check_infra(stack: Stack, runner: Runner, env: Mapping[str, str]) -> None:
    environment = runner.output(
        stack.command("exec", "-T", "rabbitmq", "rabbitmq-diagnostics", "-q", "environment")
    )
    shipped = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    for setting in ("consumer_timeout", "max_message_size"):
        configured = re.search(rf"\{{{setting},\s*(\d+)\}}", environment)
        expected = re.search(rf"^{setting}\s*=\s*(\d+)", shipped, re.M)
        if not configured or not expected or configured.group(1) != expected.group(1):
            raise SmokeFailure(
                f"the broker does not run with deploy/rabbitmq/rabbitmq.conf's {setting}"
            )
        log(f"rabbitmq: {setting} = {configured.group(1)}")
    # The broker runs the major version compose.yaml ships (whichever image it came from).
    version = runner.output(
        stack.command("exec", "-T", "rabbitmq", "rabbitmq-diagnostics", "-q", "server_version")
    )
    shipped_image = re.search(r"COLMENA_RABBITMQ_IMAGE:-rabbitmq:(\d+)\.", COMPOSE_FILE.read_text())
    if not shipped_image or version.split(".")[0] != shipped_image.group(1):
        raise SmokeFailure(
            f"the broker runs RabbitMQ {version!r}, not the major version compose.yaml ships"
        )
    log(f"rabbitmq: version {version}")
    users = runner.output(
        stack.command("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "list_users")
    )
    names = {line.split()[0] for line in users.splitlines() if line.strip()}
    if env["RABBITMQ_DEFAULT_USER"] not in names or "guest" in names:
        raise SmokeFailure(f"unexpected broker users: {sorted(names)}")
    # Log in to both servers from a service image, over the backend network, with the URLs
    # compose gives the services.
    # ... and check that the service's scratch space is writable on its read-only root.
    login = (
        "import os, pika, redis, tempfile; "
        "pika.BlockingConnection(pika.URLParameters(os.environ['COLMENA_BROKER_URL'])).close(); "
        "assert redis.Redis.from_url(os.environ['COLMENA_REDIS_URL']).ping(); "
        "[tempfile.mkdtemp(dir=d) for d in ('/tmp', '/var/lib/colmena')]; "
        "print('broker and redis: logged in; scratch space writable')"
    )
    stack.run(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "--entrypoint",
        "python",
        "taskserver",
        "-c",
        login,
        timeout=120,
    )


def http(
    method: str, url: str, token: str | None, body: object | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """One request to the gateway (always on 127.0.0.1); returns status and decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        raw = error.read()
        status = error.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def results_in(payload: Any) -> list[dict[str, Any]]:
    """The results in a long-poll answer: a result, a list of them, or {"results": [...]}."""
    if isinstance(payload, dict) and isinstance(payload.get("results"), list):
        payload = payload["results"]
    if isinstance(payload, dict):
        payload = [payload]
    return [item for item in payload if isinstance(item, dict)] if isinstance(payload, list) else []


def check_gateway(stack: Stack, runner: Runner) -> None:
    base = f"http://127.0.0.1:{stack.gateway_port}"
    started = time.monotonic()
    while True:
        runner.remaining()
        try:
            status, _ = http("GET", f"{base}/readyz", None, timeout=5)
        except (urllib.error.URLError, OSError):
            status = 0
        if status == 200:
            break
        if time.monotonic() - started > 120:
            raise SmokeFailure(f"gateway /readyz not 200 within 120 s (last: {status})")
        time.sleep(2)
    log("gateway: /readyz answers 200")
    status, _ = http("GET", f"{base}/api/v1/methods", None)
    if status not in (401, 403):
        raise SmokeFailure(f"gateway answered {status} to a request without a token")
    status, methods = http("GET", f"{base}/api/v1/methods", stack.token)
    if status != 200:
        raise SmokeFailure(f"GET /api/v1/methods: {status} {methods}")
    if PROBE_METHOD not in json.dumps(methods):
        raise SmokeFailure(f"the demo method {PROBE_METHOD} is not served: {methods}")
    log(f"gateway: methods served {methods}")
    status, submitted = http(
        "POST",
        f"{base}/api/v1/tasks",
        stack.token,
        {"method": PROBE_METHOD, "args": [PROBE_ARGUMENT], "kwargs": {}, "topic": "default"},
    )
    if (
        status not in (200, 201, 202)
        or not isinstance(submitted, dict)
        or "task_id" not in submitted
    ):
        raise SmokeFailure(f"POST /api/v1/tasks: {status} {submitted}")
    task_id = submitted["task_id"]
    log(f"gateway: submitted {PROBE_METHOD}({PROBE_ARGUMENT}) as task {task_id}")
    started = time.monotonic()
    while time.monotonic() - started < 180:
        runner.remaining()
        status, payload = http("GET", f"{base}/api/v1/results?timeout=20", stack.token, timeout=40)
        if status != 200:
            raise SmokeFailure(f"GET /api/v1/results: {status} {payload}")
        for result in results_in(payload):
            if result.get("task_id") != task_id:
                continue
            if result.get("success") is False:
                raise SmokeFailure(f"task {task_id} failed: {result}")
            if result.get("value") != PROBE_EXPECTED:
                raise SmokeFailure(f"task {task_id}: expected {PROBE_EXPECTED}, got {result}")
            log(f"gateway: result of task {task_id} = {result.get('value')} (correct)")
            return
    raise SmokeFailure(f"no result for task {task_id} within 180 s")


def wait_for_campaign(stack: Stack, timeout: float) -> None:
    """The demo thinker exits 0 once its campaign is complete."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = stack.state("thinker")
        if state and not state.get("Running", True):
            if state.get("ExitCode") == 0 and state.get("Status") == "exited":
                log(f"thinker: campaign complete after {time.monotonic() - started:.0f} s")
                return
            raise SmokeFailure(f"thinker exited with {state.get('ExitCode')}")
        time.sleep(3)
    raise SmokeFailure(f"the demo campaign did not complete within {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------
# Main


def image_python_version(runner: Runner, base_image: str) -> str:
    return runner.output(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            base_image,
            "-c",
            "import platform; print(platform.python_version())",
        ]
    )


def run(arguments: argparse.Namespace) -> None:
    stage_index = STAGES.index(arguments.stage)
    cache: Path = arguments.cache_dir.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    runner = Runner(deadline=time.monotonic() + arguments.timeout)
    runner.env.update(DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
    runner.env.pop("COMPOSE_FILE", None)
    runner.env.pop("COMPOSE_PROJECT_NAME", None)

    use_local_bases = not (
        arguments.base_image and arguments.rabbitmq_image and arguments.redis_image
    )
    existing_engine = engine_answers(runner.env)
    if not existing_engine and not is_root():
        raise CannotRun("no container engine answers, and starting one needs root")
    ensure_host_tools(need_engine=not existing_engine, need_debootstrap=use_local_bases)
    compose = compose_command()

    engine: PrivateEngine | None = None
    stack: Stack | None = None
    run_dir = Path(tempfile.mkdtemp(prefix="colmena-smoke-"))
    try:
        if existing_engine:
            log(f"using the running engine ({runner.env.get('DOCKER_HOST', 'default socket')})")
        else:
            engine = PrivateEngine(cache / "engine")
            with step("starting the engine"):
                try:
                    engine.start()
                except SmokeFailure as error:
                    # A state directory damaged by an earlier crash: start from nothing.
                    log(f"{error}\nretrying with an empty engine state")
                    engine.stop()
                    shutil.rmtree(cache / "engine", ignore_errors=True)
                    engine = PrivateEngine(cache / "engine")
                    engine.start()
            runner.env["DOCKER_HOST"] = engine.host

        with step("base images"):
            images = ensure_local_images(cache, runner) if use_local_bases else {}
            images["python"] = arguments.base_image or images["python"]
            images["rabbitmq"] = arguments.rabbitmq_image or images["rabbitmq"]
            images["redis"] = arguments.redis_image or images["redis"]

        with step("wheels for the offline build"):
            wheels = ensure_wheelhouse(cache, runner, images["python"])

        token = secrets.token_urlsafe(24)
        port = free_port()
        env_file = run_dir / "smoke.env"
        write_env_file(env_file, images, port, token)
        stack = Stack(runner, compose, env_file, port, token)
        stack.down()  # leftovers of an interrupted earlier run
        stack.run("config", "--quiet")

        with step("building the service images"), wheels_in_build_context(wheels):
            stack.run("build", *SERVICES, cwd=REPOSITORY, timeout=1200)

        with step("checking the images"):
            check_images(runner, arguments.stage)
        if stage_index < STAGES.index("infra"):
            return

        try:
            if stage_index == STAGES.index("infra"):
                with step("starting rabbitmq and redis"):
                    stack.run("up", "--detach", "rabbitmq", "redis", timeout=300)
                    stack.wait_healthy(["rabbitmq", "redis"], timeout=180)
                with step("checking the broker and redis"):
                    check_infra(stack, runner, read_env_file(env_file))
                return
            with step("starting the whole stack"):
                stack.run("up", "--detach", "--no-build", timeout=600)
                stack.wait_healthy(["rabbitmq", "redis", "taskserver", "gateway"], timeout=300)
            with step("checking the broker and redis"):
                check_infra(stack, runner, read_env_file(env_file))
            with step("one task through the gateway"):
                check_gateway(stack, runner)
            with step("the demo campaign"):
                wait_for_campaign(stack, timeout=600)
            stack.wait_healthy(["taskserver", "gateway"], timeout=30)
        except BaseException:
            with contextlib.suppress(Exception):
                stack.dump_logs()
            raise
    finally:
        with step("cleaning up"):
            cleanup(runner, stack, engine, existing_engine, arguments)
            shutil.rmtree(run_dir, ignore_errors=True)


def cleanup(
    runner: Runner,
    stack: Stack | None,
    engine: PrivateEngine | None,
    existing_engine: bool,
    arguments: argparse.Namespace,
) -> None:
    """Remove what this run created, even after a failure or when out of time."""
    runner.deadline = max(runner.deadline, time.monotonic() + 600)
    if stack is not None:
        stack.down()
    if existing_engine and not arguments.keep_images:
        # Not our engine: take our images away. (A private engine keeps them as a cache.)
        built = [f"{IMAGE_PREFIX}/{service}:{IMAGE_TAG}" for service in SERVICES]
        runner.run(["docker", "image", "rm", "--force", *built], check=False, capture=True)
        local = runner.output(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "colmena-local/*"],
            check=False,
        ).split()
        if local:
            runner.run(["docker", "image", "rm", "--force", *local], check=False, capture=True)
    if engine is not None:
        # Everything in the private engine is ours: no container may outlive the run.
        leftovers = runner.output(["docker", "ps", "--all", "--quiet"], check=False).split()
        if leftovers:
            log(f"removing {len(leftovers)} leftover container(s)")
            runner.run(["docker", "rm", "--force", "--volumes", *leftovers], check=False)
        # The private engine's images are the build cache of the next run; only what has been
        # superseded for a while goes.
        runner.run(
            ["docker", "image", "prune", "--force", "--filter", "until=72h"],
            check=False,
            capture=True,
        )
        engine.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--stage", choices=STAGES, default=os.environ.get("COLMENA_DEPLOY_SMOKE_STAGE", "full")
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("COLMENA_DEPLOY_CACHE", "~/.cache/colmena-deploy")),
        help="base images, wheels and the private engine's state (default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=1500, help="overall limit in seconds")
    parser.add_argument("--base-image", help="a Python 3 image to build on, instead of a local one")
    parser.add_argument("--rabbitmq-image", help="a RabbitMQ image, instead of a local one")
    parser.add_argument("--redis-image", help="a Redis image, instead of a local one")
    parser.add_argument(
        "--keep-images", action="store_true", help="keep the images in an engine we did not start"
    )
    parser.add_argument(
        "--purge-cache", action="store_true", help="delete the cache directory and exit"
    )
    arguments = parser.parse_args(argv)

    if arguments.purge_cache:
        shutil.rmtree(arguments.cache_dir.expanduser(), ignore_errors=True)
        log(f"removed {arguments.cache_dir}")
        return 0

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    try:
        run(arguments)
    except CannotRun as reason:
        log(f"CANNOT RUN: {reason}")
        return EXIT_CANNOT_RUN
    except (SmokeFailure, Deadline, KeyboardInterrupt, subprocess.CalledProcessError) as failure:
        log(f"FAILED after {time.monotonic() - started:.0f} s: {failure}")
        return 1
    log(f"PASSED (stage {arguments.stage}) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
