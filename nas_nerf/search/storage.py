"""Where a search lives: four Optuna studies, `<study>.targets`, `<study>.s`, `<study>.xs` and `<study>.xxs`, in
one storage (SQLite by default, or a database server that workers on many machines share). Heartbeats mark the
trials of a killed worker failed, and RetryHeartbeatStaleTrialCallback queues them again."""

from __future__ import annotations

import json
import time

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from nas_nerf.search import SearchError
from nas_nerf.search.config import SearchConfig
from nas_nerf.search.records import Record, outcome
from nas_nerf.search.targets import TIERS

PARTS: tuple[str, ...] = ("targets", *TIERS)
STORAGE_ATTEMPTS = 5


def _fast_sqlite(connection: object, _: object) -> None:
    """Optuna commits every attribute it stores; in SQLite's default mode each commit waits for the disk. With
    write-ahead logging, commits survive a killed process without that wait, and readers do not block the
    writer."""
    connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]
    connection.execute("PRAGMA synchronous=NORMAL")  # type: ignore[attr-defined]


def connect(config: SearchConfig) -> RDBStorage:
    """Open (or create) the search's storage, retrying while other workers create its tables."""
    url, attempt = config.storage_url(), 0
    while True:
        try:
            storage = RDBStorage(
                url,
                # SQLite serialises writers: wait for the lock rather than fail when workers write at once
                engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=config.grace_period or 3 * config.heartbeat_interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
            if url.startswith("sqlite"):
                event.listen(storage.engine, "connect", _fast_sqlite)
                storage.engine.dispose()  # later connections get the pragmas
            return storage
        except SQLAlchemyError as err:
            reason = " ".join(str(getattr(err, "orig", None) or err).split())  # the driver's words, not the SQL
            if "disk" in reason:  # SQLite on a full disk: "disk I/O error", "database or disk is full"
                raise SearchError(
                    f"could not write the Optuna storage {url}: {reason}. Free some space and run the same command "
                    "again: finished trials are kept."
                ) from err
            # workers starting together race to create the tables: the losers find them on a second look
            attempt += 1
            if attempt == STORAGE_ATTEMPTS:
                raise SearchError(f"Cannot open the Optuna storage {url}: {reason}") from err
            time.sleep(attempt)


class SearchStorage:
    """The studies of one search, and the architectures their finished trials evaluated."""

    def __init__(self, config: SearchConfig) -> None:
        self.config = config
        self.storage = connect(config)

    def study(self, part: str, sampler: BaseSampler, pruner: BasePruner) -> optuna.Study:
        """Create or load the study of one part, checking it was run with this search's settings."""
        study = optuna.create_study(
            storage=self.storage, study_name=f"{self.config.study_name}.{part}", direction="maximize",
            sampler=sampler, pruner=pruner, load_if_exists=True,
        )  # fmt: skip
        self.claim(study, "search", self.config.fingerprint())
        return study

    def claim(self, study: optuna.Study, key: str, value: dict) -> None:
        """Record `value` on the study, or check it equals what the study was run with."""
        value = json.loads(json.dumps(value))
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif stored != value:
            raise SearchError(
                f"Study {study.study_name} in {self.config.storage_url()} was run with other {key} settings:\n"
                f"  stored: {json.dumps(stored)}\n  now:    {json.dumps(value)}\n"
                "Run the same command to continue it, or pass a new --study-name."
            )

    def studies(self) -> dict[str, optuna.Study]:
        """The studies created so far, by part."""
        names = {summary.study_name for summary in optuna.get_all_study_summaries(self.storage)}
        return {
            part: optuna.load_study(study_name=f"{self.config.study_name}.{part}", storage=self.storage)
            for part in PARTS
            if f"{self.config.study_name}.{part}" in names
        }

    def records(self) -> list[Record]:
        """Distinct architectures with a final evaluation, trained ones first."""
        finished = [
            Record.from_trial(part, trial)
            for part, study in self.studies().items()
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if outcome(trial) in ("trained", "reused")
        ]
        unique: dict[str, Record] = {}
        for record in sorted(finished, key=lambda r: r.outcome != "trained"):
            unique.setdefault(record.architecture.key, record)
        return list(unique.values())
