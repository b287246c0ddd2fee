"""Find a RabbitMQ broker, or start a throwaway one, for tests, benchmarks and local runs.

:class:`ThrowawayRabbitMQ` runs a private RabbitMQ node as a plain process: its own ports
(picked at random among free ones, away from the usual 5672/25672), its own ``HOME`` (where
the Erlang cookie lives), database and log directories under one temporary directory, and
the configuration you give it. It can be stopped and started again on the same ports with
its data intact, which is how tests simulate a broker restart, and it is always cleaned up:
on :meth:`~ThrowawayRabbitMQ.close`, at the end of a ``with`` block, or when the program
exits. Given a root file system holding another RabbitMQ (``root=``, or the
``COLMENA_TEST_RABBITMQ_ROOT`` environment variable; ``scripts/rabbitmq4-root.sh`` makes one
with RabbitMQ 4), the node runs from it, in a private mount namespace that the kernel removes
with the node's last process. :class:`ThrowawayCluster` joins several such nodes into a
cluster.

:func:`acquire_rabbitmq` chooses a broker in this order:

1. the URL in the ``COLMENA_TEST_AMQP_URL`` environment variable, which must answer;
2. a throwaway node from the root in ``COLMENA_TEST_RABBITMQ_ROOT``, when that is set (to test
   against another RabbitMQ version than the machine's own);
3. a broker already answering on ``127.0.0.1:5672`` with the default guest account;
4. a throwaway node, when ``rabbitmq-server`` is installed;
5. a RabbitMQ container from testcontainers, when a Docker engine answers.

:class:`ThrowawayCampaign` gives tests and benchmarks a campaign of their own on a shared
broker, and deletes its queues afterwards. When no broker can be found or started, the
``*_for_pytest`` helpers skip the tests that need one, except in CI (``CI=true``), where a
missing broker fails the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from colmena_core.testing.redis import skip_or_fail

if TYPE_CHECKING:
    from colmena_core.queue.rabbitmq import RabbitMQQueues

__all__ = [
    "DEFAULT_URL",
    "URL_VARIABLE",
    "BrokerUnavailableError",
    "RabbitMQBroker",
    "ThrowawayCampaign",
    "ThrowawayCluster",
    "ThrowawayRabbitMQ",
    "acquire_rabbitmq",
    "amqp_answers",
    "docker_engine_answers",
    "find_rabbitmq_server",
    "rabbitmq_broker",
    "rabbitmq_url_for_pytest",
    "throwaway_cluster_for_pytest",
    "throwaway_rabbitmq_for_pytest",
]

logger = logging.getLogger(__name__)

URL_VARIABLE = "COLMENA_TEST_AMQP_URL"
"""Environment variable naming the broker to test against."""

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
"""Where a running broker is looked for when no URL is given."""

SERVER_VARIABLE = "COLMENA_RABBITMQ_SERVER"
"""Environment variable naming the ``rabbitmq-server`` program to run throwaway nodes with."""

ROOT_VARIABLE = "COLMENA_TEST_RABBITMQ_ROOT"
"""Environment variable naming a root file system whose RabbitMQ throwaway nodes run from
(``scripts/rabbitmq4-root.sh`` makes one with RabbitMQ 4); unset: the machine's own."""

CONFIG_VARIABLE = "COLMENA_TEST_RABBITMQ_CONFIG"
"""Environment variable naming a ``rabbitmq.conf`` whose settings every throwaway node takes
before its own (e.g. ``deploy/rabbitmq/rabbitmq.conf``, to test the settings we ship)."""

_ROOT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""Where Debian's package puts the script that runs a node as the calling user."""

_IN_ROOT = 'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && exec chroot "$0" "$@"'
"""Shell command run in a private mount namespace: what a node in a root file system needs
mounted, gone with the namespace when its last process exits (never left behind)."""

_SERVER_CANDIDATES = (
    # Package layouts that ship the script which runs the node as the calling user
    # (the ``/usr/sbin`` wrapper of Debian switches to the rabbitmq user instead)
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/local/opt/rabbitmq/sbin/rabbitmq-server",
    "/opt/homebrew/opt/rabbitmq/sbin/rabbitmq-server",
)

_PORT_RANGE = (20000, 30000)
"""Ports of throwaway nodes: below the ephemeral range, away from the usual broker ports."""


class BrokerUnavailableError(RuntimeError):
    """No RabbitMQ broker could be found or started."""


# ------------------------------------------------------------------- probes
def _redacted(url: str) -> str:
    """``url`` without its password (a CI secret must not reach a log or a failure)."""
    from colmena_core.queue.amqp.connection import redact_url  # needs pika

    return redact_url(url)


def amqp_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether an AMQP broker at ``url`` accepts a connection (credentials included)."""
    import pika  # optional dependency: only needed when a broker is probed

    parameters = pika.URLParameters(url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    try:
        connection = pika.BlockingConnection(parameters)
    except Exception:
        return False
    with contextlib.suppress(Exception):
        connection.close()
    return True


def docker_engine_answers(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers (so that testcontainers can start a broker)."""
    try:  # installed with testcontainers; untyped, hence imported by name
        docker: Any = importlib.import_module("docker")
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(timeout, 1)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def find_rabbitmq_server() -> str | None:
    """Path of a ``rabbitmq-server`` program that runs a node as the calling user, if any."""
    configured = os.environ.get(SERVER_VARIABLE)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for candidate in _SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """Distinct free ports of :data:`_PORT_RANGE`, each with its neighbour +10000 free too.

    The neighbour matters for the distribution port: the command line tools listen ten
    thousand ports above it.
    """
    picked: list[int] = []
    generator = random.Random()
    for _ in range(1000):
        port = generator.randrange(*_PORT_RANGE)
        if port in picked or not _port_is_free(port) or not _port_is_free(port + 10000):
            continue
        picked.append(port)
        if len(picked) == count:
            return picked
    raise BrokerUnavailableError("Could not find free ports for a throwaway RabbitMQ node")


# --------------------------------------------------------------- throwaway
def _settings(path: Path) -> list[str]:
    """The settings of a ``rabbitmq.conf`` (its lines without comments and blank lines)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerUnavailableError(
            f"Cannot read the RabbitMQ configuration {path}: {exc}"
        ) from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _kill_group(process: subprocess.Popen[bytes] | None, workdir: Path | None) -> None:
    """Last-resort cleanup of a node (used by the finalizer: must not reference the node)."""
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class _StartedInWith:
    """Started on entering a ``with`` block, closed on leaving it (or if starting fails)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ThrowawayRabbitMQ(_StartedInWith):
    """A private RabbitMQ node running as a child process, for tests and local campaigns.

    Example::

        with ThrowawayRabbitMQ(consumer_timeout=3.0) as broker:
            queues = RabbitMQQueues(url=broker.url)
            ...
            broker.restart()  # same ports, same data: clients reconnect

    Args:
        config_lines: Extra lines for ``rabbitmq.conf``
        advanced_config: Extra entries of the ``rabbit`` application for ``advanced.config``,
            as Erlang terms without the enclosing list, e.g. ``"{channel_max, 64}"``
        consumer_timeout: Seconds a delivery may stay unacknowledged before the node closes
            the channel (``None``: RabbitMQ's default of 30 minutes). The node then checks
            it every ``consumer_timeout / 3`` seconds instead of once a minute.
        startup_timeout: Seconds to wait for the node to start
        server: The ``rabbitmq-server`` program (default: :func:`find_rabbitmq_server`, or
            Debian's path inside ``root``)
        keep_workdir: Keep the node's directory after :meth:`close` (for debugging)
        root: Root file system to run the node from, with ``chroot`` in a private mount
            namespace (needs root privileges); default: ``COLMENA_TEST_RABBITMQ_ROOT`` if
            set, else none (the machine's own RabbitMQ)
        cookie: Erlang cookie of the node (nodes of one cluster share theirs)
        base_config: A ``rabbitmq.conf`` whose settings come before ``config_lines`` and
            ``consumer_timeout`` (default: the file in ``COLMENA_TEST_RABBITMQ_CONFIG``)
    """

    def __init__(
        self,
        *,
        config_lines: Sequence[str] = (),
        advanced_config: Sequence[str] = (),
        consumer_timeout: float | None = None,
        startup_timeout: float = 60.0,
        server: str | None = None,
        keep_workdir: bool = False,
        root: str | os.PathLike[str] | None = None,
        cookie: str | None = None,
        base_config: str | os.PathLike[str] | None = None,
    ) -> None:
        root = root if root is not None else os.environ.get(ROOT_VARIABLE) or None
        self.root = Path(root) if root is not None else None
        program: str | None
        if self.root is not None:
            program = server or _ROOT_SERVER
            self.ctl = str(Path(program).with_name("rabbitmqctl"))
            self._check_root(program)
        else:
            program = server or find_rabbitmq_server()
            if program is None:
                raise BrokerUnavailableError(
                    f"rabbitmq-server is not installed (or set {SERVER_VARIABLE} to its path)"
                )
            self.ctl = str(Path(program).with_name("rabbitmqctl"))
            if not os.access(self.ctl, os.X_OK):
                found = shutil.which("rabbitmqctl")
                if found is None:
                    raise BrokerUnavailableError(f"No rabbitmqctl next to {program} or on the PATH")
                self.ctl = found
        self.server = program
        self.startup_timeout = startup_timeout
        self.keep_workdir = keep_workdir
        self.node_name = f"colmena-{uuid.uuid4().hex[:10]}@localhost"
        self.port, self.dist_port = _pick_ports(2)
        self.workdir = Path(
            tempfile.mkdtemp(
                prefix="colmena-rabbitmq-",
                dir=None if self.root is None else self.root / "tmp",
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(
            self, _kill_group, None, None if keep_workdir else self.workdir
        )

        conf = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "log.file.level = info",
            "log.console = false",
        ]
        base_config = base_config or os.environ.get(CONFIG_VARIABLE) or None
        if base_config is not None:
            conf.extend(_settings(Path(base_config)))
        rabbit = []
        if consumer_timeout is not None:
            timeout_ms = max(1, round(consumer_timeout * 1000))
            conf.append(f"consumer_timeout = {timeout_ms}")
            # The node checks consumer timeouts on every channel tick (60 s by default)
            rabbit.append(f"{{channel_tick_interval, {max(100, min(timeout_ms // 3, 60000))}}}")
        conf.extend(config_lines)
        rabbit.extend(advanced_config)
        for name in ("home", "mnesia", "log"):
            (self.workdir / name).mkdir()
        (self.workdir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.workdir / "advanced.config").write_text(f"[{{rabbit, [{', '.join(rabbit)}]}}].\n")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        if cookie is not None:
            cookie_file = self.workdir / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)

    def _check_root(self, program: str) -> None:
        assert self.root is not None
        if not (self.root / program.lstrip("/")).is_file():
            raise BrokerUnavailableError(
                f"No RabbitMQ in the root file system {self.root} (scripts/rabbitmq4-root.sh "
                f"makes one): {program} is missing"
            )
        if os.geteuid() != 0:
            raise BrokerUnavailableError(
                f"Running RabbitMQ from the root file system {self.root} needs root privileges"
            )
        if shutil.which("unshare") is None or shutil.which("chroot") is None:
            raise BrokerUnavailableError("unshare and chroot (util-linux, coreutils) are needed")

    def _path(self, path: Path) -> str:
        """``path`` as the node sees it (inside its root file system, if any)."""
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def _command(self, program: str, *args: str) -> list[str]:
        """Command line running ``program`` (in the root file system, if any)."""
        if self.root is None:
            return [program, *args]
        return [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _IN_ROOT, str(self.root), program, *args,
        ]  # fmt: skip

    # --------------------------------------------------------------- facts
    @property
    def url(self) -> str:
        """AMQP URL of the node (guest account, default virtual host)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        """File where the node writes the process ID of its Erlang VM."""
        return self.workdir / "node.pid"

    @property
    def log_file(self) -> Path:
        """Console output of the node (its detailed log is in ``<workdir>/log``)."""
        return self.workdir / "console.log"

    @property
    def is_running(self) -> bool:
        """Whether the node's process is alive."""
        return self._process is not None and self._process.poll() is None

    def environment(self) -> dict[str, str]:
        """Environment for ``rabbitmq-server`` and ``rabbitmqctl`` calls on this node."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=self._path(self.workdir / "home"),
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=self._path(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=self._path(self.workdir / "log"),
            RABBITMQ_CONFIG_FILE=self._path(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=self._path(self.workdir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=self._path(self.workdir / "enabled_plugins"),
            RABBITMQ_PID_FILE=self._path(self.pid_file),
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # ----------------------------------------------------------- lifecycle
    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node and return its outcome."""
        return subprocess.run(
            self._command(self.ctl, "-n", self.node_name, *args),
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> Self:
        """Start the node (its data survives from a previous run) and wait until it serves.

        Raises:
            BrokerUnavailableError: the node did not start within the startup timeout
        """
        if self.is_running:
            return self
        self.pid_file.unlink(missing_ok=True)
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(self.server),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one
            )
        finally:
            log.close()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _kill_group, self._process, None if self.keep_workdir else self.workdir
        )
        deadline = time.monotonic() + self.startup_timeout
        waited = self.rabbitmqctl(
            "wait", "--timeout", str(int(self.startup_timeout)), self._path(self.pid_file),
            timeout=self.startup_timeout + 10,
        )  # fmt: skip
        if waited.returncode == 0:
            while time.monotonic() < deadline and self.is_running:
                if amqp_answers(self.url, timeout=2.0):
                    logger.info("Throwaway RabbitMQ node %s serves %s", self.node_name, self.url)
                    return self
        reason = waited.stderr.strip() or waited.stdout.strip()
        tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
        self.kill()
        raise BrokerUnavailableError(
            f"The throwaway RabbitMQ node did not start: {reason}\n{tail}".strip()
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly, keeping its data for :meth:`start`."""
        if not self.is_running:
            self._process = None
            return
        assert self._process is not None
        stopped = self.rabbitmqctl("stop", self._path(self.pid_file), timeout=timeout + 10)
        if stopped.returncode != 0:
            logger.warning("rabbitmqctl stop failed (%s); terminating the node", stopped.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._process = None

    def kill(self) -> None:
        """Kill the node abruptly with SIGKILL, as a crash would (data on disk is kept)."""
        if self._process is not None:
            _kill_group(self._process, None)
        self._process = None

    def restart(self) -> None:
        """Stop the node and start it again on the same ports with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the node and delete its directory (unless asked to keep it)."""
        try:
            self.stop()
        finally:
            self.kill()
            self._finalizer()


class ThrowawayCluster(_StartedInWith):
    """A RabbitMQ cluster of throwaway nodes on loopback, for tests of failover.

    The nodes share one Erlang cookie; the first is started alone, the others join it.
    Quorum queues declared on the cluster get a member on every node. Stop a node with
    ``cluster.nodes[i].stop()`` (and start it again with ``start()``: it rejoins).

    Example::

        with ThrowawayCluster(3) as cluster:
            queues = RabbitMQQueues(url=cluster.url)  # every node's address, comma-separated
            ...

    Args:
        size: Number of nodes
        options: Arguments of :class:`ThrowawayRabbitMQ` for every node
    """

    def __init__(self, size: int = 3, **options: Any) -> None:
        if size < 1:
            raise ValueError("A cluster has at least one node")
        cookie = uuid.uuid4().hex
        self.nodes: list[ThrowawayRabbitMQ] = []
        try:
            for _ in range(size):
                self.nodes.append(ThrowawayRabbitMQ(cookie=cookie, **options))
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """The AMQP URLs of every node, comma-separated (what the queues and services take)."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> Self:
        """Start the nodes (at once) and join the others to the first.

        Raises:
            BrokerUnavailableError: a node did not start or could not join
        """
        errors: list[BaseException] = []

        def start(node: ThrowawayRabbitMQ) -> None:
            try:
                node.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise BrokerUnavailableError(f"A node of the cluster did not start: {errors[0]}")
        first = self.nodes[0]
        for node in self.nodes[1:]:
            for step in (("stop_app",), ("join_cluster", first.node_name), ("start_app",)):
                done = node.rabbitmqctl(*step)
                if done.returncode != 0:
                    raise BrokerUnavailableError(
                        f"{node.node_name} could not {step[0]}: "
                        f"{done.stderr.strip() or done.stdout.strip()}"
                    )
        return self

    def node_named(self, name: str) -> ThrowawayRabbitMQ:
        """The node called ``name`` (as RabbitMQ reports it, e.g. a queue's leader)."""
        for node in self.nodes:
            if node.node_name == name:
                return node
        raise KeyError(name)

    def queues(self, vhost: str = "/") -> list[dict[str, Any]]:
        """Name, type, leader and members of every queue of ``vhost``, asked of a running node."""
        for node in self.nodes:
            if not node.is_running:
                continue
            done = node.rabbitmqctl(
                "list_queues", "-p", vhost, "name", "type", "leader", "members",
                "--formatter", "json", "--quiet",
            )  # fmt: skip
            if done.returncode == 0:
                listed: list[dict[str, Any]] = json.loads(done.stdout or "[]")
                return listed
        raise BrokerUnavailableError("No node of the cluster answers")

    def close(self) -> None:
        """Stop every node and delete their directories."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()


# ---------------------------------------------------------------- discovery
@dataclass
class RabbitMQBroker:
    """A broker found or started by :func:`acquire_rabbitmq`; ``close()`` releases it."""

    url: str
    kind: str
    """``environment``, ``local``, ``throwaway`` or ``container``"""
    _resource: Any = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the broker if we started it (a broker found running is left alone)."""
        resource, self._resource = self._resource, None
        if isinstance(resource, ThrowawayRabbitMQ):
            resource.close()
        elif resource is not None:
            resource.stop()


def _start_container() -> RabbitMQBroker:
    from testcontainers.community.rabbitmq import RabbitMqContainer

    container = RabbitMqContainer("rabbitmq:3").start()
    params = container.get_connection_params()
    url = f"amqp://guest:guest@{params.host}:{params.port}/%2F"
    return RabbitMQBroker(url, "container", container)


def acquire_rabbitmq(*, allow_start: bool = True) -> RabbitMQBroker:
    """Find a RabbitMQ broker, or start one (see the module documentation for the order).

    Args:
        allow_start: Whether a throwaway node or a container may be started
    Returns:
        The broker; call :meth:`RabbitMQBroker.close` when done with it
    Raises:
        BrokerUnavailableError: no broker could be found or started; the message says why
    """
    url = os.environ.get(URL_VARIABLE)
    if url:
        if not amqp_answers(url):
            raise BrokerUnavailableError(f"No broker answers at {URL_VARIABLE}={_redacted(url)}")
        return RabbitMQBroker(url, "environment")
    if os.environ.get(ROOT_VARIABLE):  # the version in that root, never the machine's own
        if not allow_start:
            raise BrokerUnavailableError(f"{ROOT_VARIABLE} is set: its node must be started")
        node = ThrowawayRabbitMQ()
        return RabbitMQBroker(node.url, "throwaway", node.__enter__())
    if amqp_answers(DEFAULT_URL, timeout=1.0):
        return RabbitMQBroker(DEFAULT_URL, "local")
    reasons = [f"no broker answers on 127.0.0.1:5672 and {URL_VARIABLE} is not set"]
    if not allow_start:
        raise BrokerUnavailableError("; ".join(reasons))
    try:
        node = ThrowawayRabbitMQ()
        return RabbitMQBroker(node.url, "throwaway", node.__enter__())
    except BrokerUnavailableError as exc:
        reasons.append(f"no throwaway node: {exc}")
    if docker_engine_answers():
        try:
            return _start_container()
        except Exception as exc:
            reasons.append(f"no RabbitMQ container: {exc!r}")
    else:
        reasons.append("no Docker engine answers for a testcontainers broker")
    raise BrokerUnavailableError("; ".join(reasons))


@contextlib.contextmanager
def rabbitmq_broker(*, allow_start: bool = True) -> Iterator[RabbitMQBroker]:
    """Context manager around :func:`acquire_rabbitmq` that releases the broker afterwards."""
    broker = acquire_rabbitmq(allow_start=allow_start)
    try:
        yield broker
    finally:
        broker.close()


# -------------------------------------------------------------------- pytest
def _require_pika() -> None:
    if importlib.util.find_spec("pika") is None:
        skip_or_fail("The pika package is not installed: pip install 'colmena-core[rabbitmq]'")


def rabbitmq_url_for_pytest() -> Iterator[str]:
    """Body of a pytest fixture that yields the URL of a broker (see :func:`acquire_rabbitmq`).

    Skips the tests that use it when no broker is available (fails them in CI).
    """
    _require_pika()
    try:
        broker = acquire_rabbitmq()
    except BrokerUnavailableError as exc:
        skip_or_fail(str(exc))
    logger.info("Testing against the %s RabbitMQ broker at %s", broker.kind, _redacted(broker.url))
    try:
        with private_vhost(broker) as url:
            yield url
    finally:
        broker.close()


@contextlib.contextmanager
def private_vhost(broker: RabbitMQBroker) -> Iterator[str]:
    """The broker's URL on a virtual host of its own, deleted (with every queue) at the end.

    A test run leaves many queues behind (each campaign has its own); on a long-lived broker
    they pile up until the broker slows down. On the local broker, where ``rabbitmqctl``
    can administer it, the run gets a fresh virtual host; elsewhere it uses the URL as is.
    """
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if broker.kind != "local" or not os.access(ctl, os.X_OK):
        yield broker.url
        return
    vhost = f"colmena-test-{uuid.uuid4().hex[:10]}"

    def run(*args: str) -> bool:
        try:
            done = subprocess.run(
                [ctl, *args], capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("rabbitmqctl %s failed: %r", args[0], exc)
            return False
        if done.returncode != 0:
            logger.warning("rabbitmqctl %s failed: %s", args[0], done.stderr.strip()[-500:])
        return done.returncode == 0

    user = urllib.parse.urlsplit(broker.url).username or "guest"
    if not (
        run("add_vhost", vhost) and run("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    ):
        yield broker.url
        return
    base = broker.url.split("://", 1)
    host = base[1].split("/", 1)[0]
    try:
        yield f"{base[0]}://{host}/{vhost}"
    finally:
        run("delete_vhost", vhost)


_Started = TypeVar("_Started", bound=_StartedInWith)


def _started_for_pytest(
    make: Callable[..., _Started], what: str
) -> Iterator[Callable[..., _Started]]:
    """Yields a factory that makes and starts ``make(...)``; closes all it made afterwards.

    Something that cannot be made or started skips the test (fails it in CI), naming
    ``what``.
    """
    _require_pika()
    made: list[_Started] = []

    def start(*args: Any, **options: Any) -> _Started:
        try:
            thing = make(*args, **options)
        except BrokerUnavailableError as exc:
            skip_or_fail(f"Cannot run {what}: {exc}")
        made.append(thing)
        try:
            return thing.start()
        except BrokerUnavailableError as exc:
            skip_or_fail(f"{what[0].upper()}{what[1:]} did not start: {exc}")

    try:
        yield start
    finally:
        for thing in made:
            thing.close()


def throwaway_rabbitmq_for_pytest() -> Iterator[Callable[..., ThrowawayRabbitMQ]]:
    """Body of a pytest fixture that yields a factory of started :class:`ThrowawayRabbitMQ`.

    The factory takes the arguments of :class:`ThrowawayRabbitMQ`; every node it made is
    closed afterwards. A node that cannot start skips the test (fails it in CI).
    """
    yield from _started_for_pytest(ThrowawayRabbitMQ, "a throwaway RabbitMQ node")


def throwaway_cluster_for_pytest() -> Iterator[Callable[..., ThrowawayCluster]]:
    """Body of a pytest fixture that yields a factory of started :class:`ThrowawayCluster`.

    The factory takes the arguments of :class:`ThrowawayCluster` (size 3 by default); every
    cluster it made is closed afterwards. A cluster that cannot start skips the test (fails
    it in CI).
    """
    yield from _started_for_pytest(ThrowawayCluster, "a throwaway RabbitMQ cluster")


# ---------------------------------------------------------------- campaigns
class ThrowawayCampaign:
    """A campaign with a unique name on a broker, deleted with its queues when closed.

    Example::

        with ThrowawayCampaign(url) as campaign:
            thinker = campaign.queues(["simulate"], methods=["run"])
            ...

    Args:
        url: Broker URL
        prefix: Start of the campaign name
    """

    def __init__(self, url: str, prefix: str = "test") -> None:
        self.url = url
        self.name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.methods: set[str] = set()
        """Methods whose request queues to delete (those of the queues made here are added)"""
        self.clients: dict[str, set[str]] = {}
        """Client IDs and topics whose result queues to delete"""
        self._made: list[RabbitMQQueues] = []

    def queues(self, topics: Collection[str] = (), **options: Any) -> RabbitMQQueues:
        """Make queues of this campaign (arguments of :class:`RabbitMQQueues`)."""
        from colmena_core.queue.rabbitmq import RabbitMQQueues

        queues = RabbitMQQueues(topics, url=self.url, campaign=self.name, **options)
        self._made.append(queues)
        self.methods.update(options.get("methods") or ())
        self.clients.setdefault(queues.client_id, set()).update(queues.topics)
        return queues

    def close(self) -> None:
        """Disconnect the queues made here and delete the campaign from the broker."""
        from colmena_core.queue.rabbitmq import delete_campaign

        for queues in self._made:
            with contextlib.suppress(Exception):
                queues.disconnect(timeout=10)
        delete_campaign(self.url, self.name, methods=self.methods, clients=self.clients)

    def __enter__(self) -> ThrowawayCampaign:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
