"""AMQP over TLS (``amqps://``) to a throwaway broker whose certificate a private CA signed.

What a user relies on: with ``SSL_CERT_FILE`` naming the campaign's CA (as the Helm chart
sets it, and docs/security.md says for compose), a campaign runs over TLS; a client that
does not trust that CA does not connect, and says why.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from colmena_core.queue.rabbitmq import BrokerConnectionError, RabbitMQQueues
from colmena_core.testing import free_port
from colmena_core.testing.brokers import ThrowawayRabbitMQ

WAIT = 30.0


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for localhost and 127.0.0.1, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Colmena test CA"))
        .issuer_name(_name("Colmena test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.crt",
        "cert": directory / "tls.crt",
        "key": directory / "tls.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in files.values():
        path.chmod(0o644)  # the node may run as another user
    directory.chmod(0o755)
    return files


@pytest.fixture(scope="module")
def tls_broker(
    throwaway_rabbitmq_factory: Callable[..., ThrowawayRabbitMQ],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path]]:
    """``(amqps URL, CA file)`` of a throwaway node serving AMQP over TLS."""
    files = make_certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    node = throwaway_rabbitmq_factory(
        config_lines=[
            f"listeners.ssl.default = 127.0.0.1:{port}",
            f"ssl_options.cacertfile = {files['ca']}",
            f"ssl_options.certfile = {files['cert']}",
            f"ssl_options.keyfile = {files['key']}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    )
    yield f"amqps://guest:guest@localhost:{port}/%2F", files["ca"]
    node.close()


def test_a_campaign_runs_over_tls_with_the_campaigns_ca(
    tls_broker: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = tls_broker
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    thinker = RabbitMQQueues(url=url, campaign="tls", client_id="thinker", methods=["add"])
    server = RabbitMQQueues(url=url, campaign="tls", methods=["add"])
    try:
        thinker.set_role("client")
        server.set_role("server")
        task_id = thinker.send_inputs(1, 2, method="add")
        _, task = server.get_task(timeout=WAIT)
        task.deserialize()
        task.set_result(sum(task.args))
        server.send_result(task)
        result = thinker.get_result(timeout=WAIT)
        assert result is not None and result.task_id == task_id and result.value == 3
    finally:
        thinker.disconnect()
        server.disconnect()


def test_a_client_that_does_not_trust_the_ca_does_not_connect(
    tls_broker: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, _ = tls_broker
    other = make_certificates(tmp_path)  # another CA, which did not sign the broker's certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(other["ca"]))
    queues = RabbitMQQueues(url=url, campaign="tls", connect_timeout=3)
    try:
        with pytest.raises(BrokerConnectionError, match=r"(?i)certificate"):
            queues.connect()
    finally:
        queues.disconnect()
