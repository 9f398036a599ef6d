"""Kafka client configuration: security pass-through and broker-specific workarounds.

This is the one place that knows the embedded Tansu broker's defects
(see docs/architecture.md). With an external bootstrap server the defaults are
the production Apache Kafka settings.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

from mekb.settings import Settings


class BrokerNotFound(RuntimeError):
    """No bootstrap server configured and no embedded broker running."""


@dataclass(frozen=True)
class BrokerProfile:
    """Tunings that differ between Apache Kafka and the embedded Tansu broker."""

    # Tansu answers a group join only after half the session timeout: keep it short.
    session_timeout_ms: int
    heartbeat_interval_ms: int
    # Tansu's ListOffsets(LATEST) is wrong unless every batch holds one record, which
    # breaks Faust changelog recovery: write changelogs one record per batch there.
    changelog_max_batch_size: int
    # aiokafka has no idempotent producer/transactions against Tansu.
    supports_transactions: bool


KAFKA = BrokerProfile(
    session_timeout_ms=45_000,
    heartbeat_interval_ms=3_000,
    changelog_max_batch_size=16_384,
    supports_transactions=True,
)
TANSU = BrokerProfile(
    session_timeout_ms=6_000,
    heartbeat_interval_ms=1_000,
    changelog_max_batch_size=1,
    supports_transactions=False,
)


def profile(settings: Settings) -> BrokerProfile:
    return TANSU if settings.flavor == "tansu" else KAFKA


def bootstrap_servers(settings: Settings) -> str:
    """The configured bootstrap servers, or the address of the running embedded broker."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    try:
        info = json.loads(settings.broker_file.read_text())
        return str(info["bootstrap_servers"])
    except (OSError, ValueError, KeyError):
        raise BrokerNotFound(
            f"no broker: set MEKB_BOOTSTRAP_SERVERS or start one with `mekb broker` "
            f"(looked for {settings.broker_file})"
        ) from None


def _security(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        conf["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        conf["sasl_plain_username"] = settings.sasl_username
        conf["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return conf


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.security_protocol.endswith("SSL"):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )
    if settings.ssl_certfile:
        ctx.load_cert_chain(
            str(settings.ssl_certfile),
            str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        )
    return ctx


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (KafkaProducer, KafkaConsumer, admin)."""
    conf = {"bootstrap_servers": bootstrap_servers(settings), **_security(settings)}
    if settings.security_protocol.endswith("SSL"):
        conf["ssl_cafile"] = str(settings.ssl_cafile) if settings.ssl_cafile else None
        conf["ssl_certfile"] = str(settings.ssl_certfile) if settings.ssl_certfile else None
        conf["ssl_keyfile"] = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
    return conf


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients."""
    conf = {"bootstrap_servers": bootstrap_servers(settings), **_security(settings)}
    ctx = _ssl_context(settings)
    if ctx is not None:
        conf["ssl_context"] = ctx
    return conf


def faust_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `faust.App` (broker, credentials, guarantee, timeouts)."""
    import faust

    prof = profile(settings)
    if settings.exactly_once and not prof.supports_transactions:
        raise ValueError(
            "MEKB_EXACTLY_ONCE needs Apache Kafka transactions; the embedded Tansu broker "
            "has none (use the default at-least-once with idempotent state)"
        )
    servers = bootstrap_servers(settings).split(",")
    conf: dict[str, Any] = {
        "broker": [f"kafka://{s.strip()}" for s in servers],
        "processing_guarantee": "exactly_once" if settings.exactly_once else "at_least_once",
        "broker_session_timeout": prof.session_timeout_ms / 1000,
        "broker_heartbeat_interval": prof.heartbeat_interval_ms / 1000,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
    }
    if settings.security_protocol != "PLAINTEXT":
        ctx = _ssl_context(settings)
        if settings.security_protocol.startswith("SASL"):
            password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
            conf["broker_credentials"] = faust.SASLCredentials(
                username=settings.sasl_username or "",
                password=password,
                mechanism=settings.sasl_mechanism or "PLAIN",
                ssl_context=ctx,
            )
        elif ctx is not None:
            conf["broker_credentials"] = faust.SSLCredentials(ctx)
    return conf
