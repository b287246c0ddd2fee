"""The broker users of deploy/rabbitmq/definitions.json on the real broker: each service kind
runs a campaign with its own user and permissions, and what it must not do is refused.

The users and permissions are taken from the same file compose and the Helm chart load,
imported into a virtual host of this test with ``rabbitmqctl import_definitions``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions
import pytest
from fastapi.testclient import TestClient

from colmena_core.queue.monitor import CampaignMonitor, HeartbeatPublisher
from colmena_core.queue.rabbitmq import RabbitMQQueues
from colmena_core.security import SECRET_VARIABLE, new_secret
from colmena_core.task_server.local import LocalTaskServer
from colmena_core.testing import wait_until
from colmena_core.testing.redis import skip_or_fail
from colmena_services.gateway.app import create_app
from colmena_services.gateway.settings import GatewaySettings

WAIT = 30.0
DEFINITIONS = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"
KINDS = ("thinker", "taskserver", "gateway", "monitor")
CAMPAIGN = "perms"


def add(a: int, b: int) -> int:
    return a + b


def _rabbitmqctl() -> str:
    found = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if not Path(found).exists():
        skip_or_fail("rabbitmqctl is needed to create the broker users of this test")
    return found


def test_no_service_user_is_an_administrator_and_each_kind_has_one() -> None:
    definitions = json.loads(DEFINITIONS.read_text())
    users = {user["name"]: user for user in definitions["users"]}
    services = {name: user for name, user in users.items() if name.startswith("colmena-")}
    assert sorted(services) == sorted(f"colmena-{kind}" for kind in KINDS)
    assert all(user["tags"] == [] for user in services.values())
    # The only other user is the operators' administrator of RABBITMQ_DEFAULT_USER
    assert set(users) - set(services) == {"@RABBITMQ_DEFAULT_USER@"}
    for permission in definitions["permissions"]:
        if permission["user"] in services:
            rules = (permission["configure"], permission["write"], permission["read"])
            assert ".*" not in rules


def render_definitions(tmp: Path, passwords: dict[str, str]) -> dict[str, Any]:
    """definitions.json as compose's broker entry point writes it, with these passwords."""
    entrypoint = tmp / "docker-entrypoint.sh"  # stands for the image's: shows its arguments
    entrypoint.write_text('#!/bin/sh\necho started "$@"\n')
    entrypoint.chmod(0o755)
    rendered = tmp / "definitions.json"
    done = subprocess.run(
        ["/bin/sh", str(DEFINITIONS.with_name("start-with-users.sh")), "rabbitmq-server"],
        env={
            "PATH": f"{tmp}:{os.environ['PATH']}",
            "COLMENA_DEFINITIONS_TEMPLATE": str(DEFINITIONS),
            "COLMENA_DEFINITIONS_FILE": str(rendered),
            **passwords,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started rabbitmq-server"
    assert rendered.stat().st_mode & 0o077 == 0  # readable by the broker only
    return dict(json.loads(rendered.read_text()))


def test_compose_entry_point_writes_the_users_with_their_passwords(tmp_path: Path) -> None:
    passwords = {f"COLMENA_{kind.upper()}_BROKER_PASSWORD": f"pw-{kind}" for kind in KINDS}
    passwords |= {"RABBITMQ_DEFAULT_USER": "ops", "RABBITMQ_DEFAULT_PASS": "ops-pw"}
    definitions = render_definitions(tmp_path, passwords)
    users = {user["name"]: user for user in definitions["users"]}
    assert users["colmena-thinker"]["password"] == "pw-thinker"
    assert users["ops"] == {"name": "ops", "password": "ops-pw", "tags": ["administrator"]}
    assert "@" not in json.dumps(definitions)
    passwords["COLMENA_GATEWAY_BROKER_PASSWORD"] = "not/url safe"
    with pytest.raises(AssertionError, match="must be URL-safe"):
        render_definitions(tmp_path, passwords)


@pytest.fixture(scope="module")
def user_urls(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """URL of each service kind's user, in a virtual host of this module."""
    ctl = _rabbitmqctl()
    run_id = uuid.uuid4().hex[:8]
    vhost = f"colmena-perms-{run_id}"
    passwords = {
        f"COLMENA_{kind.upper()}_BROKER_PASSWORD": secrets.token_urlsafe(16) for kind in KINDS
    }
    operator = {"RABBITMQ_DEFAULT_USER": "unused", "RABBITMQ_DEFAULT_PASS": "unused"}
    definitions = render_definitions(tmp_path_factory.mktemp("definitions"), passwords | operator)
    service_users = [user for user in definitions["users"] if user["name"].startswith("colmena-")]
    renamed = {user["name"]: f"{run_id}-{user['name']}" for user in service_users}
    imported = {
        "vhosts": [{"name": vhost}],
        "users": [{**user, "name": renamed[user["name"]]} for user in service_users],
        "permissions": [
            {**permission, "user": renamed[permission["user"]], "vhost": vhost}
            for permission in definitions["permissions"]
            if permission["user"] in renamed
        ],
    }
    base = urlsplit(rabbitmq_url)
    host = f"{base.hostname}:{base.port or 5672}"
    urls = {
        kind: f"amqp://{renamed[f'colmena-{kind}']}:"
        f"{passwords[f'COLMENA_{kind.upper()}_BROKER_PASSWORD']}@{host}/{quote(vhost, safe='')}"
        for kind in KINDS
    }
    path = Path(tempfile.gettempdir()) / f"colmena-perms-{run_id}.json"  # the broker reads it
    path.write_text(json.dumps(imported))
    path.chmod(0o644)
    try:
        done = subprocess.run(
            [ctl, "import_definitions", str(path)], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            skip_or_fail(f"rabbitmqctl import_definitions failed: {done.stderr[-500:]}")

        def can_log_in() -> bool:  # the import finishes asynchronously
            for url in urls.values():
                try:
                    pika.BlockingConnection(pika.URLParameters(url)).close()
                except pika.exceptions.AMQPError:
                    return False
            return True

        wait_until(can_log_in, "the imported users can log in", WAIT)
        yield urls
    finally:
        path.unlink(missing_ok=True)
        cleanups = [subprocess.Popen([ctl, "delete_vhost", vhost], stdout=subprocess.DEVNULL)]
        cleanups += [
            subprocess.Popen([ctl, "delete_user", name], stdout=subprocess.DEVNULL)
            for name in renamed.values()
        ]
        for process in cleanups:
            process.wait(timeout=60)


def _refused(url: str, action: Any) -> str:
    """Run ``action(channel)`` as the user of ``url``; return the broker's refusal."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refusal:
            action(channel)
        assert refusal.value.reply_code == 403
        return str(refusal.value.reply_text)
    finally:
        if connection.is_open:
            connection.close()


def test_each_service_kind_runs_a_campaign_with_its_own_user(
    user_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As deployed: every service signs with the campaign secret (the gateway's tasks too)
    monkeypatch.setenv(SECRET_VARIABLE, new_secret())
    thinker = RabbitMQQueues(
        url=user_urls["thinker"], campaign=CAMPAIGN, client_id="thinker", methods=["add"]
    )
    thinker.set_role("client")  # as a thinker does; a queue of role "any" is a server too
    server_queues = RabbitMQQueues(url=user_urls["taskserver"], campaign=CAMPAIGN, methods=["add"])
    server = LocalTaskServer([add], server_queues, num_workers=1, pool="thread")
    thread = threading.Thread(target=server.run, daemon=True)
    monitor = CampaignMonitor(user_urls["monitor"], CAMPAIGN, default_ttl=30)
    seen: list[Any] = []
    monitor.subscribe(seen.append)
    heartbeats = HeartbeatPublisher(user_urls["taskserver"], CAMPAIGN)
    try:
        monitor.start()
        assert monitor.wait_connected(WAIT)
        thread.start()
        assert server.ready.wait(WAIT)
        heartbeats.publish({"server_id": "perm-server", "methods": ["add"]}, ttl=30)
        wait_until(
            lambda: any(s.server_id == "perm-server" for s in monitor.servers()),
            "the monitor lists the task server",
            WAIT,
        )
        thinker.send_inputs(1, 2, method="add")
        result = thinker.get_result(timeout=WAIT)
        assert result is not None and result.success and result.value == 3
        wait_until(lambda: len(seen) >= 1, "the monitor sees a copy of the result", WAIT)

        settings = GatewaySettings(
            broker_url=user_urls["gateway"], campaign=CAMPAIGN, env="development"
        )
        with TestClient(create_app(settings)) as client:
            answer = client.post("/api/v1/tasks", json={"method": "add", "args": [2, 3]})
            assert answer.status_code in (200, 201, 202), answer.text
            results: list[dict[str, Any]] = []

            def arrived() -> bool:
                polled = client.get("/api/v1/results", params={"timeout": 1})
                assert polled.status_code == 200, polled.text
                results.extend(polled.json()["results"])
                return bool(results)

            wait_until(arrived, "the gateway's result", WAIT)
            assert results[0]["value"] == 5
            assert client.get("/api/v1/status").status_code == 200

        thinker.send_kill_signal()
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        heartbeats.close()
        monitor.stop()
        server.request_stop()
        if thread.is_alive():
            thread.join(WAIT)
        thinker.disconnect()
        server_queues.disconnect()


def test_what_a_service_kind_must_not_do_is_refused(user_urls: dict[str, str]) -> None:
    names = RabbitMQQueues(campaign=CAMPAIGN).names
    # Only a holder of a thinker's or the gateway's user sends tasks or the kill signal
    for kind in ("monitor", "taskserver"):
        _refused(
            user_urls[kind],
            lambda channel: channel.basic_publish(names.control_exchange, "", b"kill"),
        )
    _refused(
        user_urls["monitor"],
        lambda channel: channel.basic_publish(names.requests_exchange, "add", b"task"),
    )
    # Thinkers and the gateway do not publish results, and task servers do not read them
    _refused(
        user_urls["thinker"],
        lambda channel: channel.basic_publish(names.results_exchange, "thinker.default", b"x"),
    )
    _refused(
        user_urls["taskserver"],
        lambda channel: channel.basic_get(names.result_queue("thinker", "default")),
    )
    # Nobody but the broker's administrator makes or deletes other names
    for kind in KINDS:
        _refused(user_urls[kind], lambda channel: channel.exchange_declare("elsewhere", "fanout"))


def test_the_task_server_service_serves_with_its_own_user(user_urls: dict[str, str]) -> None:
    """``colmena taskserver`` as deployed: logged in as the task servers' user, it connects
    (declaring nothing its user may not), serves a thinker's task and stops on the kill."""
    secret = new_secret()
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        SECRET_VARIABLE: secret,
        "COLMENA_BROKER_URL": user_urls["taskserver"],
        "COLMENA_CAMPAIGN": CAMPAIGN,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")])),
    }
    command = ["taskserver", "--methods", "service_apps:METHODS", "--engine", "local"]
    service = subprocess.Popen(
        [sys.executable, "-m", "colmena_services.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    thinker = RabbitMQQueues(
        url=user_urls["thinker"],
        campaign=CAMPAIGN,
        client_id="service-thinker",
        methods=["double"],
        secret=secret,
    )
    thinker.set_role("client")
    try:
        thinker.send_inputs(21.0, method="double")
        result = thinker.get_result(timeout=WAIT * 2)
        assert result is not None and result.success and result.value == 42.0, result
        thinker.send_kill_signal()
        output, _ = service.communicate(timeout=WAIT * 2)
        assert service.returncode == 0, output
        assert "ACCESS_REFUSED" not in output and "Traceback" not in output, output
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=WAIT)
        thinker.disconnect()
