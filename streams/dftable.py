"""The global document-frequency table: df(e) and N summed over partition partials.

Each MeKB partition owns exact partial counts df_p(e) (users of partition p whose
MeKB holds e) and n_p (users of p with a non-empty MeKB), kept in its own state and
changelog, and publishes them as absolute values with a per-partition sequence
number to the compacted `df-partials` topic (key `<p>/<entity>`, `<p>/` for n_p).
Every worker replicates that topic into this table. Absolute values with sequence
numbers make the table idempotent under redelivery and re-publication, so
df(e) = Σ_p df_p(e) and N = Σ_p n_p are exact once the topic is read.
"""

from __future__ import annotations

from streams.codec import dumps, loads

USERS_KEY = ""  # the entity slot that carries n_p
NO_PARTIAL = (0, 0)  # (seq, value) of a slot never published


def partial_key(partition: int, entity: str) -> bytes:
    return f"{partition}/{entity}".encode()


def partial_value(seq: int, value: int) -> bytes:
    return dumps({"seq": seq, "v": value})


class DfTable:
    def __init__(self) -> None:
        self.df: dict[str, int] = {}
        self.n_users = 0
        # (partition, entity) -> (seq, value): read directly by MeKBPartition's idf view
        self.partials: dict[tuple[int, str], tuple[int, int]] = {}

    def apply(self, key: bytes, value: bytes) -> None:
        """Apply one `df-partials` record (older sequence numbers are ignored)."""
        part, _, entity = key.decode().partition("/")
        obj = loads(value)
        self.apply_partial(int(part), entity, int(obj["seq"]), int(obj["v"]))

    def apply_partial(self, partition: int, entity: str, seq: int, value: int) -> None:
        slot = (partition, entity)
        old_seq, old = self.partials.get(slot, (-1, 0))
        if seq < old_seq:
            return
        # Zeros are kept with their sequence number so an older, larger value is never
        # re-applied over them.
        self.partials[slot] = (seq, value)
        if entity == USERS_KEY:
            self.n_users += value - old
            return
        total = self.df.get(entity, 0) + value - old
        if total:
            self.df[entity] = total
        else:
            self.df.pop(entity, None)

    def partial(self, partition: int, entity: str) -> int:
        return self.partials.get((partition, entity), NO_PARTIAL)[1]
