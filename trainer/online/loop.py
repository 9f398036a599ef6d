"""The continuous trainer's core: micro-batch fine-tuning, checkpoints, publication,
item-tower refit. Kafka stays outside (trainer/online/service.py feeds records in and
commits the offsets this returns), so all of it runs in-process in tests.

Commit order (DESIGN.md), written down where it happens (`publish_full`):

  1. save weights: a checkpoint (weights + optimiser + the offsets they have
     consumed + the publication about to happen, with its version id) becomes LATEST;
  2. export: the bundle (ONNX user tower, tokenizer, items, embedme/) is written to
     `<state>/outbox/<version>`;
  3. publish: Registry.publish moves it into the registry (staging dir, fsync,
     rename: all or nothing), then ACTIVE moves to it, then model-updates announces it;
  4. commit: only then does the runner commit the Kafka offsets of step 1.

A SIGKILL anywhere is safe. Restart loads LATEST and seeks to *its* offsets (not the
group's committed ones, which are never ahead of them), so every example the weights
have not seen is read again and no committed example is lost. A publication recorded
in the checkpoint is finished on restart under the same version id: published already
→ only activated if it never was; not published → re-exported from the very weights
of that checkpoint. A half-written version never exists: readers ignore staging
directories and `Registry.cleanup()` removes those of dead processes.

Without a publication, a checkpoint is taken every MEKB_TRAINER_CHECKPOINT_INTERVAL_S
and followed by a commit (steps 1 and 4). Held-out examples (trainer/online/holdout.py)
are never trained on: they feed the quality gate.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mekb.registry import ModelVersion, Registry, new_version_id
from mekb.settings import Settings
from trainer.model import EmbedMe, EmbedMeConfig, replace_param_in_optimizer
from trainer.online.checkpoint import Checkpoint, CheckpointStore, TrainerState
from trainer.online.examples import Example, InvalidExample, parse_example
from trainer.online.gate import GateDecision, run_gate
from trainer.online.holdout import RecentWindow, is_held_out
from trainer.online.kinds import OnlineKind, build_items_bundle, online_kind, trainer_kind
from trainer.online.metrics import TrainerMetrics
from trainer.online.publishing import publish
from trainer.online.refit import initial_table, refit_items
from trainer.online.scorers import BundleScorer, TorchScorer, TowerCache
from trainer.optim import make_optimizer

logger = logging.getLogger(__name__)

# Owed replay is taken in slices of this much wall time between polls.
REPLAY_SLICE_S = 0.25


@dataclass(frozen=True)
class Record:
    """One consumed training-examples record. `decoded`: its value parsed ahead of
    `process` (`decode`; the runner does it while the previous poll trains)."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    decoded: Example | InvalidExample | None = None


def decode(rec: Record) -> Record:
    """`rec` with its value parsed (or the reason it is not an example); tombstones as
    they are. Pure: it can run on another thread than the trainer's."""
    if rec.value is None:
        return rec
    try:
        decoded: Example | InvalidExample = parse_example(rec.value)
    except InvalidExample as exc:
        decoded = exc
    return replace(rec, decoded=decoded)


def state_dir(settings: Settings) -> Path:
    return Path(settings.trainer_state_dir or Path(settings.data_dir) / "trainer")


def model_config(settings: Settings) -> EmbedMeConfig:
    return EmbedMeConfig(encoder=settings.trainer_encoder, dim=settings.trainer_dim,
                         max_tokens=settings.trainer_max_tokens, k_star=settings.k_star)


def build_optimizer(model: EmbedMe, settings: Settings) -> torch.optim.Optimizer:
    """trainer/optim.py's optimiser (one implementation with `mekb train`): AdamW or LAMB
    for the user tower, plain Adam steps at their own, larger lr for the ID table (fresh
    rows start near zero and must catch up within a few steps)."""
    logger.info("optimiser: %s lr %g, item table Adam lr %g", settings.trainer_optimizer,
                settings.trainer_lr, settings.trainer_item_lr)
    return make_optimizer(model, lr=settings.trainer_lr,
                          weight_decay=settings.trainer_weight_decay,
                          name=settings.trainer_optimizer, item_lr=settings.trainer_item_lr)


class OnlineTrainer:
    """State is rebuilt from (model, TrainerState, optimiser state): nothing hidden."""

    def __init__(
        self, settings: Settings, model: Any, state: TrainerState,
        optimizer_state: dict[str, Any] | None, store: CheckpointStore, registry: Registry,
        metrics: TrainerMetrics, *, announce: Callable[[ModelVersion], None] | None = None,
        kind: OnlineKind | None = None,
    ) -> None:
        self.settings = settings
        # the model kind (trainer/online/kinds.py): model is an EmbedMe or an EntityGraph
        self.kind = kind or online_kind(trainer_kind(settings), settings)
        self.model = model
        self.state = state
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.announce = announce
        self.topic = settings.topic("training-examples")
        if self.kind.torch_threads:  # process-wide: a trainer process trains one kind
            torch.set_num_threads(self.kind.torch_threads)
        self.optimizer = self.kind.optimizer(model)
        self.batch_size = settings.trainer_batch_size or self.kind.default_batch
        self.catchup_batch = settings.trainer_catchup_batch or \
            self.batch_size * self.kind.catchup_factor
        self.replay = settings.trainer_replay if settings.trainer_replay is not None \
            else self.kind.default_replay
        self.publish_every = settings.trainer_publish_every \
            if settings.trainer_publish_every is not None else self.kind.default_publish_every
        if optimizer_state is not None:
            try:
                self.optimizer.load_state_dict(optimizer_state)
            except (ValueError, KeyError) as exc:  # another optimiser than last time
                logger.warning("optimiser state not restored (%s): starting it afresh", exc)
        extra = state.extra
        self.recent: RecentWindow[Example] = RecentWindow(settings.trainer_recent_window)
        for row in extra.get("recent", []):
            self.recent.add(Example.from_json(row))
        self.holdout: RecentWindow[Example] = RecentWindow(settings.trainer_holdout_window)
        for row in extra.get("holdout", []):
            self.holdout.add(Example.from_json(row))
        self.pending: list[Example] = []
        self.offsets: dict[str, int] = dict(state.offsets)  # next offset, all consumed
        self.since_publish = int(extra.get("since_publish", 0))
        self.since_checkpoint = 0
        # Replay steps owed: taken while the trainer keeps up, deferred while it is behind
        # (set_backlog) so that new examples come first, paid when it catches up.
        self.replay_owed = int(extra.get("replay_owed", 0))
        self.behind = False
        self._warned_cut = False  # examples cut short of the model's input: warned once
        self.state_dirty = False  # state changed without new weights (a publication)
        self.last_checkpoint_at = time.time()
        self.last_publish_try = state.last_publish_at or time.time()
        if state.last_refit_at <= 0:
            state.last_refit_at = time.time()  # the refit schedule starts now
        self.tower_cache = TowerCache()
        self.generator = torch.Generator().manual_seed(settings.trainer_seed)
        self.metrics.items.set(model.n_items)
        self.metrics.holdout.set(len(self.holdout))

    # --- consuming and training ----------------------------------------------------
    def set_backlog(self, waiting: int) -> None:
        """The runner's count of records waiting behind the ones it hands to `process`
        next: over MEKB_TRAINER_REPLAY_DEFER_LAG, replay is deferred."""
        limit = self.settings.trainer_replay_defer_lag
        self.behind = bool(limit) and waiting > limit

    def process(self, records: Sequence[Record], now: float | None = None) -> dict[str, int] | None:
        """Ingest records, train full micro-batches (the rest when the poll was empty),
        take owed replay steps for up to REPLAY_SLICE_S when not behind, then
        publish/refit/checkpoint when due. Returns offsets to commit, if any."""
        self.ingest(records)
        size = self.catchup_batch if self.behind else self.batch_size
        while len(self.pending) >= size:
            batch, self.pending = self.pending[:size], self.pending[size:]
            self.train_step(batch)
        if not records and self.pending:
            self.drain()
        if not self.behind:
            # in slices, so that new records are polled (and `behind` re-read) in between
            self.pay_replay(REPLAY_SLICE_S)
        return self.housekeeping(time.time() if now is None else now)

    def ingest(self, records: Sequence[Record]) -> None:
        frac = self.settings.trainer_holdout_fraction
        new_items: dict[str, str] = {}
        parsed: list[Example] = []
        max_tokens = getattr(self.model.config, "max_tokens", 0)  # EntityGraph: no cut
        for rec in records:
            self.offsets[f"{self.topic}:{rec.partition}"] = rec.offset + 1
            if rec.value is None and rec.key:
                self.forget_user(rec.key.decode("utf-8", "replace"))
                continue
            ex = rec.decoded if rec.decoded is not None else decode(rec).decoded
            if isinstance(ex, InvalidExample) or ex is None:
                self.metrics.examples.labels("invalid").inc()
                logger.warning("skipping training example at %s:%d@%d: %s", self.topic,
                               rec.partition, rec.offset, ex or "empty record")
                continue
            parsed.append(ex)
            if max_tokens and ex.cut_short(max_tokens):
                self.metrics.examples_cut.inc()
                if not self._warned_cut:
                    self._warned_cut = True
                    logger.warning(
                        "training examples carry %d of the user's %d entities, fewer than "
                        "the %d titles this %d-token model reads: raise MEKB_EXAMPLE_ENTITIES "
                        "on the stream worker (0 = the whole MeKB)", len(ex.titles),
                        ex.mekb_size, max_tokens // 2, max_tokens)
            if not self.model.has_item(ex.item_id):
                new_items.setdefault(ex.item_id, ex.domain)
            if is_held_out(ex.example_id, frac):
                self.holdout.add(ex)
                self.metrics.examples.labels("held_out").inc()
            else:
                self.pending.append(ex)
        if new_items:
            self.add_items(list(new_items), list(new_items.values()))
        # held-out examples too: the gate scores them with the candidate
        added = self.kind.prepare(self.model, parsed, self.optimizer)
        if added:
            self.metrics.entities_added.inc(added)
            self.metrics.entities.set(self.model.n_entities)
        self.metrics.holdout.set(len(self.holdout))

    def forget_user(self, user_id: str) -> None:
        """A user was deleted (the stream worker's tombstone on training-examples, after
        every example it made of the user): drop its examples not trained yet, and those
        kept for replay, refit and the gate; the next checkpoint no longer holds them."""
        pending = [ex for ex in self.pending if ex.user_id != user_id]
        dropped = len(self.pending) - len(pending)
        self.pending = pending
        for window in (self.recent, self.holdout):
            dropped += window.drop(lambda ex: ex.user_id != user_id)
        self.state_dirty = True
        self.metrics.examples.labels("erased").inc(dropped)
        self.metrics.holdout.set(len(self.holdout))
        logger.info("user %s deleted: %d queued examples dropped", user_id, dropped)

    def add_items(self, item_ids: list[str], domains: list[str]) -> None:
        """Grow the item table; the optimiser follows the new Parameter (its moments are
        padded with zeros for the new rows)."""
        old = self.model.item_table
        self.model.add_items(item_ids, domains)
        if self.model.item_table is not old:
            replace_param_in_optimizer(self.optimizer, old, self.model.item_table)
        self.metrics.items.set(self.model.n_items)
        logger.info("item table: +%d items (%d)", len(item_ids), self.model.n_items)

    def drain(self) -> None:
        size = self.batch_size
        while self.pending:
            batch, self.pending = self.pending[:size], self.pending[size:]
            self.train_step(batch)

    def train_step(self, batch: Sequence[Example]) -> float:
        """One step of the paper's objective: full softmax over each example's domain."""
        started = time.perf_counter()
        model = self.model
        model.train()
        value = self._step(batch)
        for ex in batch:
            self.recent.add(ex)
        if self.behind:
            # a catch-up step owes the replay of each batch-sized share of it
            self._owe_replay(-(-len(batch) // self.batch_size))
        else:
            self._replay(len(batch), self.replay)
        self.state.step += 1
        self.state.examples_seen += len(batch)
        self.since_publish += len(batch)
        self.since_checkpoint += len(batch)
        self.metrics.steps.inc()
        self.metrics.loss.set(value)
        kg_loss = getattr(self.kind, "last_kg_loss", None)
        if kg_loss is not None:
            self.metrics.kg_loss.set(kg_loss)
        self.metrics.examples.labels("trained").inc(len(batch))
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        return value

    def _step(self, batch: Sequence[Example]) -> float:
        return self.kind.step(self.model, batch, self.optimizer, self.generator)

    def _replay(self, size: int, rounds: int) -> None:
        """Experience replay: after each step on new examples, `replay` steps on as many
        examples drawn from the recent window (trained already, never held out). A
        stream shows each example once; a model whose step costs milliseconds
        (EntityGraph) affords several passes over the recent stream that way."""
        if not rounds or len(self.recent) < size:
            return
        window = list(self.recent)
        rows = torch.randint(len(window), (rounds, size), generator=self.generator)
        for r in range(rounds):
            self._step([window[i] for i in rows[r].tolist()])
            self.metrics.examples.labels("replayed").inc(size)

    def _owe_replay(self, steps: int = 1) -> None:
        """Defer the replay of `steps` batches' worth of new examples. What is owed is
        capped at `replay` passes over the recent window: under a lasting overload the
        rest is forgone (and counted), and the trainer trains each new example once."""
        if not self.replay:
            return
        cap = self.replay * max(1, len(self.recent) // self.batch_size)
        owed = self.replay_owed + self.replay * steps
        if owed > cap:
            self.metrics.examples.labels("replay_forgone").inc((owed - cap) * self.batch_size)
            owed = cap
        self.replay_owed = owed
        self.metrics.replay_owed.set(owed)

    def pay_replay(self, budget_s: float | None = None) -> int:
        """Take owed replay steps (batches drawn from the whole recent window) until none
        is owed or `budget_s` has passed; returns the steps taken."""
        started, taken = time.perf_counter(), 0
        size = min(self.batch_size, len(self.recent))
        while self.replay_owed and size:
            if budget_s is not None and time.perf_counter() - started >= budget_s:
                break
            self.model.train()
            self._replay(size, 1)
            self.replay_owed -= 1
            taken += 1
        if taken:
            self.metrics.replay_owed.set(self.replay_owed)
        return taken

    # --- schedule ------------------------------------------------------------------
    def housekeeping(self, now: float) -> dict[str, int] | None:
        s = self.settings
        if self.registry.active_version() is None:
            # serving waits for a first version (EntityGraph: once it has entity rows)
            return self.publish_full(now) if self.kind.can_serve(self.model) else None
        if (self.publish_every and self.since_publish >= self.publish_every) or (
            s.trainer_publish_interval_s and self.since_publish
            and now - self.last_publish_try >= s.trainer_publish_interval_s
        ):
            return self.publish_full(now)
        if now - self.state.last_refit_at >= s.trainer_refit_interval_s:
            self.refit(now)
            return self.checkpoint_and_offsets()
        dirty = self.since_checkpoint or self.pending or self.state_dirty or \
            self.offsets != self.state.offsets
        if dirty and now - self.last_checkpoint_at >= s.trainer_checkpoint_interval_s:
            return self.checkpoint_and_offsets()
        return None

    # --- checkpoints ---------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """Train what is pending, then save weights + optimiser + offsets atomically."""
        self.drain()
        st = self.state
        st.offsets = dict(self.offsets)
        st.item_ids = list(self.model.item_ids)
        st.item_domains = list(self.model.item_domains)
        st.extra.update(
            **self.kind.checkpoint_extra(self.model),
            model_kind=self.kind.name,
            since_publish=self.since_publish,
            replay_owed=self.replay_owed,
            recent=[e.to_json() for e in self.recent],
            holdout=[e.to_json() for e in self.holdout],
        )
        tensors = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        ckpt = self.store.save(st, tensors, self.optimizer.state_dict())
        self.since_checkpoint = 0
        self.state_dirty = False
        self.last_checkpoint_at = time.time()
        logger.info("checkpoint %s (step %d, %d examples, offsets %s)", ckpt.path.name,
                    st.step, st.examples_seen, st.offsets)
        return ckpt

    def checkpoint_and_offsets(self) -> dict[str, int]:
        return dict(self.checkpoint().state.offsets)

    # --- publication -----------------------------------------------------------------
    def publish_full(self, now: float) -> dict[str, int] | None:
        """Gate the live model against the active version; publish it if it passes."""
        started = time.perf_counter()
        self.drain()
        if not self.behind:  # a version includes its owed replay unless that delays new data
            self.pay_replay()
        active = self.registry.active()
        gate = self._gate(TorchScorer(self.model, self.kind.user_embeddings), active, "full")
        self.since_publish = 0
        self.last_publish_try = now
        if not gate.publish:
            self.state.extra["last_gate"] = gate.to_json()
            return self.checkpoint_and_offsets()
        version = new_version_id(now)
        self.state.extra["publishing"] = {
            "version": version, "kind": "full", "model_kind": self.kind.name,
            "parent": self.state.parent_version,
            "gate": gate.to_json(), "metrics": self._metrics_json(gate),
        }
        ckpt = self.checkpoint()                       # 1. save weights
        self.finish_publication(ckpt)                  # 2. export, 3. publish
        self.metrics.publish_seconds.labels("full").observe(time.perf_counter() - started)
        return dict(ckpt.state.offsets)                # 4. the runner commits these

    def finish_publication(self, ckpt: Checkpoint) -> ModelVersion | None:
        """Export + publish the publication recorded in the checkpoint (also on restart)."""
        pub = self.state.extra.get("publishing")
        if not pub:
            return None
        version = str(pub["version"])
        outbox = self.store.root.parent / "outbox" / version
        if not self._published(version):
            self.kind.write_full_bundle(self.model, outbox, version=version,
                                        parent=pub.get("parent"), gate=pub["gate"],
                                        metrics=pub["metrics"], offsets=dict(ckpt.state.offsets))
        mv = publish(self.registry, outbox, version=version, kind="full",
                     parent=pub.get("parent"),
                     extra={"trainer": {"checkpoint": ckpt.path.name,
                                        "step": ckpt.state.step,
                                        "examples_seen": ckpt.state.examples_seen},
                            "training_topic_ids": dict(ckpt.state.topic_ids)})
        self.state.parent_version = version
        self.state.last_publish_at = mv.created_at
        self.state.extra.pop("publishing", None)
        # Recorded by the next checkpoint; a restart before it finds the publication
        # done and only activates/announces it again.
        self.state_dirty = True
        self._after_publish(mv)
        return mv

    def _published(self, version: str) -> bool:
        return (self.registry.versions_dir / version / "manifest.json").is_file()

    def _after_publish(self, mv: ModelVersion) -> None:
        self.metrics.last_publish.set(mv.created_at)
        # Not active = held by a pin (mekb/registry.py): nothing serves it, so nothing to
        # announce; training goes on and, after `unpin`, the next candidate that passes
        # the gate becomes active.
        active = self.registry.active_version() == mv.version
        if active:
            self.metrics.mark_item_tower(mv.created_at)
            self.metrics.active.info({"version": mv.version, "kind": mv.kind,
                                      "model_kind": mv.model_kind})
        if active and self.announce is not None:
            try:
                self.announce(mv)
            except Exception as exc:  # serving also polls ACTIVE: not fatal
                logger.warning("model-updates not announced for %s: %s", mv.version, exc)
        try:
            self.registry.prune(self.settings.registry_keep_last)
        except Exception as exc:  # retention is best effort
            logger.warning("registry prune failed: %s", exc)
        if active:
            logger.info("published %s (%s), active", mv.version, mv.kind)
        else:
            pin = self.registry.pinned()
            logger.info("published %s (%s), inactive: the registry is pinned to %s",
                        mv.version, mv.kind, pin.version if pin else "another version")

    def _gate(self, candidate: Any, active: ModelVersion | None, kind: str) -> GateDecision:
        s = self.settings
        active_scorer = BundleScorer(active.path, cache=self.tower_cache) if active else None
        gate = run_gate(
            candidate, active_scorer, list(self.holdout), item_domains=self.model.item_domains,
            n_negatives=s.trainer_gate_negatives, tolerance=s.trainer_gate_tolerance,
            min_examples=s.trainer_gate_min_examples,
            active_version=active.version if active else None,
            candidate_kind=self.kind.name if kind == "full" else
            (active.model_kind if active else None),
            active_kind=active.model_kind if active else None,
        )
        self.metrics.gate.labels(gate.decision, kind).inc()
        self.metrics.gate_slice.set(gate.slice)
        self.metrics.gate_kinds.info({"candidate": gate.candidate_kind or "",
                                      "active": gate.active_kind or ""})
        for who, scores in (("candidate", gate.candidate), ("active", gate.active)):
            if scores is not None:
                self.metrics.gate_score.labels(who, "hr10").set(scores.hr10)
                self.metrics.gate_score.labels(who, "ndcg10").set(scores.ndcg10)
        return gate

    def _metrics_json(self, gate: GateDecision) -> dict[str, Any]:
        out: dict[str, Any] = {"examples_seen": float(self.state.examples_seen),
                               "steps": float(self.state.step)}
        if gate.candidate is not None:
            out.update(hr10=gate.candidate.hr10, ndcg10=gate.candidate.ndcg10)
        return out

    # --- item-tower refit ------------------------------------------------------------
    def refit(self, now: float) -> ModelVersion | None:
        """Refit the item table to the active version's user tower; publish `items`."""
        started = time.perf_counter()
        self.state.last_refit_at = now
        active = self.registry.active()
        window = list(self.recent)
        fresh = self.state.examples_seen != self.state.extra.get("refit_examples_seen")
        if active is None or not window or not fresh:
            logger.info("item refit skipped: %s", "no active version" if active is None
                        else "no example trained since the last refit")
            return None
        self.state.extra["refit_examples_seen"] = self.state.examples_seen
        tower = BundleScorer(active.path, cache=self.tower_cache)
        if tower.items.ndim != 2 or int(active.manifest.get("dim") or 0) != \
                self.model.config.dim:
            logger.warning("item refit skipped: active %s has another dim", active.version)
            return None
        tower_version = active.parent if active.kind == "items" and active.parent \
            else active.version
        ids, domains = list(self.model.item_ids), list(self.model.item_domains)
        live = self.model.item_embeddings().detach().cpu().float().numpy()
        init = initial_table(ids, self.model.config.dim, seed=self.settings.trainer_seed,
                             sources=[(tower.item_ids, tower.items), (ids, live)])
        users = tower.user_embeddings(window)
        result = refit_items(
            users, [e.item_id for e in window], [e.domain for e in window], ids, domains,
            init, epochs=self.settings.trainer_refit_epochs, lr=self.settings.trainer_refit_lr,
            seed=self.settings.trainer_seed + self.state.step,
        )
        candidate = tower.with_items(result.table, ids)
        gate = self._gate(candidate, active, "items")
        self.metrics.refit_seconds.observe(time.perf_counter() - started)
        if not gate.publish:
            self.state.extra["last_gate"] = gate.to_json()
            return None
        version = new_version_id(now)
        outbox = self.store.root.parent / "outbox" / version
        metrics = {"refit_loss_before": result.loss_before, "refit_loss_after": result.loss_after,
                   "refit_examples": float(result.n_examples)}
        if gate.candidate is not None:
            metrics.update(hr10=gate.candidate.hr10, ndcg10=gate.candidate.ndcg10)
        build_items_bundle(active, outbox, table=result.table, item_ids=ids, domains=domains,
                           version=version, parent=tower_version, gate=gate.to_json(),
                           metrics=metrics, offsets=dict(self.offsets))
        mv = publish(self.registry, outbox, version=version, kind="items",
                     parent=tower_version, extra={"trainer": {"refit_of": active.version},
                                                  "training_topic_ids": dict(self.state.topic_ids)})
        self._after_publish(mv)
        self.metrics.publish_seconds.labels("items").observe(time.perf_counter() - started)
        return mv

    # --- start-up --------------------------------------------------------------------
    def startup(self) -> dict[str, int] | None:
        """Finish a publication a crash interrupted; publish a first version into an
        empty registry (serving becomes ready on it). Returns offsets to commit."""
        removed = self.registry.cleanup()
        if removed:
            logger.info("registry: removed leftovers of crashed publications: %s", removed)
        outbox = self.store.root.parent / "outbox"
        pending = self.state.extra.get("publishing")
        if outbox.is_dir():
            for leftover in outbox.iterdir():
                if not pending or leftover.name != pending.get("version"):
                    shutil.rmtree(leftover, ignore_errors=True)
        ckpt = self.store.latest()
        if pending and ckpt is not None:
            logger.info("finishing publication %s interrupted by a restart", pending["version"])
            self.finish_publication(ckpt)
            return dict(ckpt.state.offsets)
        active = self.registry.active()
        if active is not None:
            self.metrics.active.info({"version": active.version, "kind": active.kind,
                                      "model_kind": active.model_kind})
            self.metrics.mark_item_tower(active.created_at)
            if self.state.last_publish_at:
                self.metrics.last_publish.set(self.state.last_publish_at)
            return None
        if not self.kind.can_serve(self.model):
            logger.info("registry empty: the first %s version follows the first examples",
                        self.kind.name)
            return None
        logger.info("registry empty: publishing an initial version")
        return self.publish_full(time.time())
