"""Logging set-up: called once, at the entry point."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable

# Kafka client libraries log one ERROR per failed connection attempt and metadata
# refresh: thousands a minute per process while a broker is down. Their records pass
# once per (logger, level, message template) per interval; the first one after an
# interval says how many like it were suppressed.
CLIENT_LOGGERS = ("kafka", "aiokafka")
CLIENT_LOG_INTERVAL_S = 30.0


class RateLimitFilter(logging.Filter):
    """Pass the first record of each (logger, level, message template) of the loggers
    under `prefixes` per `interval_s`; drop the others but count them, and append the
    count to the next record that passes. Other loggers are not touched."""

    def __init__(self, prefixes: tuple[str, ...] = CLIENT_LOGGERS,
                 interval_s: float = CLIENT_LOG_INTERVAL_S, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[tuple[str, int, str], list[float]] = {}  # key -> [start, dropped]
        self._lock = threading.Lock()  # kafka-python logs from its own threads

    def _limited(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._limited(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                return False
            if window is None and len(self._windows) >= self.max_keys:
                self._windows.pop(next(iter(self._windows)))  # the oldest key
            self._windows[key] = [now, 0]
        if window is not None and window[1]:
            # no '%' in the suffix: the record's own args still format the message
            record.msg = (f"{record.msg} [{int(window[1])} more like this suppressed in "
                          f"the last {now - window[0]:.0f}s]")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str = "INFO", json_lines: bool = False,
                      client_interval_s: float = CLIENT_LOG_INTERVAL_S) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # On the handler, not the loggers: a logger's filters do not apply to its children.
    handler.addFilter(RateLimitFilter(CLIENT_LOGGERS, client_interval_s))
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO (every rebalance, every connection).
    for name in ("kafka", "aiokafka"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
