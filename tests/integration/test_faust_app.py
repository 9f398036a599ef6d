"""The item and MeKB agents installed into a platform's own Faust app (`streams.faust_app
.install`), run by Faust's own `faust -A module worker` next to an agent of the platform:
the state equals the independent reference, and the platform's agent keeps working."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mekb.broker import free_port
from mekb.settings import Settings
from mekb.topics import create_topics
from streams.synthetic import generate
from tests.integration.streams_helpers import produce, read_topic, wait_exact, worker_env
from tests.integration.test_streams_worker import events_pairs, items_pairs, reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# The README's example ("Running the agents in your own Faust app"), with a datadir
# and no web server.
PLATFORM_APP = '''
import faust

from mekb.kafka_config import faust_config
from mekb.settings import Settings
from streams.faust_app import install

settings = Settings()  # MEKB_* environment
app = faust.App(settings.topic("platform"), **faust_config(settings), web_enabled=False,
                topic_disable_leader=True, datadir=str(settings.data_dir / "platform"))
clicks = app.topic(settings.topic("platform-clicks"), value_serializer="raw")
seen = app.topic(settings.topic("platform-seen"), value_serializer="raw")


@app.agent(clicks)
async def forward(stream):  # the platform's own agent
    async for value in stream:
        await seen.send(value=value)


mekb = install(app, settings)  # the item and MeKB agents
'''


def test_agents_in_a_platform_faust_app_keep_state_exact(
    settings: Settings, alias: Path, tmp_path: Path
) -> None:
    wsettings = Settings(**{**settings.model_dump(), "mekb_max_entities": 100_000,
                            "example_entities": 0})
    create_topics(wsettings)
    # Smaller than the streams tests' log: exactness on both runtimes is theirs; this
    # is about the agents living in someone else's app.
    log = generate(n_users=30, n_items=40, n_events=1000, n_entities=120, seed=7,
                   dup_rate=0.10, malformed_rate=0.02, late_rate=0.10)
    ref, ref_df, ref_n = reference(wsettings, alias, log)
    (tmp_path / "platform_app.py").write_text(PLATFORM_APP)
    env = worker_env(wsettings, alias, "platform", free_port())
    env["PYTHONPATH"] = f"{tmp_path}:{ROOT}"
    out = tmp_path / "platform.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "platform_app", "worker", "-l", "info"],
        cwd=tmp_path, env=env, stdout=open(out, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    try:
        produce(wsettings, "items", items_pairs(log.items))
        produce(wsettings, "interactions", events_pairs(log))
        produce(wsettings, "platform-clicks", [(b"k", b"click-%d" % i) for i in range(5)])
        time.sleep(2.0)
        produce(wsettings, "items", items_pairs(log.late_items))  # after their interactions
        try:
            wait_exact(wsettings, ref, ref_df, ref_n)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{out.read_text()[-3000:]}") from None
        seen = sorted(r.value for r in read_topic(wsettings, "platform-seen"))
        assert seen == sorted(b"click-%d" % i for i in range(5))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == 0, out.read_text()[-3000:]
