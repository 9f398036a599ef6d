"""The one settings object. Every option is an environment variable `MEKB_<NAME>`.

Environment variables are read here and nowhere else; CLI flags override them by
building a new (frozen) object with `Settings(**overrides)`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """MeKB-Stream configuration (env prefix `MEKB_`)."""

    model_config = SettingsConfigDict(env_prefix="MEKB_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset = the embedded Tansu "
        "broker on 127.0.0.1, with its workarounds switched on.",
    )
    broker_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port of the embedded broker; 0 picks a free port.",
    )
    topic_prefix: str = Field(
        default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$",
        description="Prefix of every topic name (lets several deployments share a cluster).",
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions per topic.")
    replication_factor: int = Field(
        default=1, ge=1, le=16, description="Replication factor of created topics."
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="Kafka security protocol (production brokers)."
    )
    sasl_mechanism: SaslMechanism | None = Field(default=None, description="SASL mechanism.")
    sasl_username: str | None = Field(default=None, description="SASL username.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SSL brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (mTLS).")
    broker_flavor: Literal["kafka", "tansu"] | None = Field(
        default=None,
        description="Broker implementation. Unset = `tansu` for the embedded broker, `kafka` "
        "when MEKB_BOOTSTRAP_SERVERS is set. Selects the workarounds in mekb.kafka_config.",
    )
    exactly_once: bool = Field(
        default=False,
        description="Faust processing guarantee exactly_once (Apache Kafka only; the embedded "
        "broker lacks transactions, so this is refused there).",
    )

    # --- Local state -------------------------------------------------------
    data_dir: Path = Field(
        default=Path("var"), description="Root of RocksDB state, registry and sample data."
    )

    # --- monitoring ---
    monitor_port: int = Field(
        default=9466, ge=0, le=65535,
        description="Port on 127.0.0.1 of the drift monitor's /metrics (`mekb monitor`).",
    )
    drift_window_s: float = Field(
        default=3600.0, gt=0,
        description="Event-time window of the entity-distribution drift (seconds).",
    )
    drift_probe_users: int = Field(
        default=200, ge=1, le=100_000,
        description="Size of the fixed probe set of users for embedding drift.",
    )

    # --- Logging -----------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of every process."
    )
    log_json: bool = Field(default=False, description="Emit one JSON object per log line.")

    # --- Producer tool -----------------------------------------------------
    produce_rate: float = Field(
        default=0.0, ge=0.0, description="Events/s for `mekb produce` (0 = as fast as possible)."
    )

    @property
    def embedded(self) -> bool:
        """True when no external broker is configured (the embedded Tansu default)."""
        return self.bootstrap_servers is None

    @property
    def flavor(self) -> Literal["kafka", "tansu"]:
        if self.broker_flavor is not None:
            return self.broker_flavor
        return "tansu" if self.embedded else "kafka"

    @property
    def broker_file(self) -> Path:
        """Where a running embedded broker writes its address for other processes."""
        return self.data_dir / "broker.json"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


def describe_settings() -> str:
    """One line per option, for `--help` texts and the README."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else default
        lines.append(f"MEKB_{name.upper()} (default {shown}): {field.description}")
    return "\n".join(lines)
