from __future__ import annotations

import pytest
from pydantic import ValidationError

from mekb.kafka_config import KAFKA, TANSU, faust_config, kafka_python_config, profile
from mekb.settings import Settings, describe_settings


def test_env_prefix_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEKB_PARTITIONS", "8")
    monkeypatch.setenv("MEKB_TOPIC_PREFIX", "prod.")
    settings = Settings()
    assert settings.partitions == 8
    assert settings.topic("items") == "prod.items"
    with pytest.raises(ValidationError):
        settings.partitions = 2  # type: ignore[misc]


def test_invalid_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEKB_PARTITIONS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_an_empty_path_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    monkeypatch.setenv("MEKB_ALIAS_TABLE", "")
    monkeypatch.setenv("MEKB_REGISTRY_DIR", " ")
    monkeypatch.setenv("MEKB_TRAINER_STATE_DIR", "/srv/state")
    s = Settings()
    assert s.alias_table is None and s.registry_dir is None  # not Path("."), the cwd
    assert s.trainer_state_dir == Path("/srv/state")


def test_flavor_defaults_follow_bootstrap() -> None:
    assert Settings().flavor == "tansu"
    assert profile(Settings()) is TANSU
    external = Settings(bootstrap_servers="kafka:9092")
    assert external.flavor == "kafka" and profile(external) is KAFKA
    assert Settings(bootstrap_servers="h:1", broker_flavor="tansu").flavor == "tansu"


def test_sasl_password_is_secret_and_passed_through() -> None:
    settings = Settings(
        bootstrap_servers="kafka:9093", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="s3cret",
    )
    assert "s3cret" not in repr(settings)
    conf = kafka_python_config(settings)
    assert conf["sasl_plain_password"] == "s3cret"
    assert conf["sasl_mechanism"] == "SCRAM-SHA-512"
    assert conf["security_protocol"] == "SASL_PLAINTEXT"


def test_exactly_once_refused_on_tansu_allowed_on_kafka() -> None:
    with pytest.raises(ValueError, match="transactions"):
        faust_config(Settings(bootstrap_servers="h:1", broker_flavor="tansu", exactly_once=True))
    conf = faust_config(Settings(bootstrap_servers="a:1,b:2", exactly_once=True))
    assert conf["processing_guarantee"] == "exactly_once"
    assert conf["broker"] == ["kafka://a:1", "kafka://b:2"]


def test_every_option_is_documented() -> None:
    text = describe_settings()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"MEKB_{name.upper()}" in text


def test_state_topics_are_created_compacted() -> None:
    from mekb.topics import new_topic_requests

    requests = {t.name: t for t in new_topic_requests(Settings(topic_prefix="x.", partitions=3))}
    assert requests["x.mekb-updates"].topic_configs == {"cleanup.policy": "compact"}
    assert requests["x.interactions"].topic_configs == {}
    assert all(t.num_partitions == 3 for t in requests.values())
