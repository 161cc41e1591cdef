"""`ns-nas-search --storage postgresql://…` on a real PostgreSQL server that the test starts itself: one worker
killed (SIGKILL) in the middle of its trial and two workers sharing the study. The killed trial is found by its
stale heartbeat, failed and run once more; no trial is lost or run twice, and the search finishes."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import optuna
import psycopg
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from support import entrypoint_in_process, fault_env, write_fault_injector

from nas_nerf.search.cli import entrypoint
from nas_nerf.search.records import outcome
from nas_nerf.search.targets import TIERS

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
SERVER_USER = "postgres"
"""PostgreSQL refuses to run as root: as root, the server runs as this user (Debian's package creates it)."""
DATABASE = "nas_search"
INSTALL = "apt-get install postgresql (as .ci/run does where initdb is missing)"
# The search settings of tests/test_search.py (a tiny space, seconds a trial, heartbeats every second), with a
# longer grace period: a live worker starved of CPU for a few seconds must not count as killed.
SEARCH_ARGS = [
    "--coarse.depth1", "1", "2", "--coarse.depth3", "1", "1", "--coarse.widths", "8", "32",
    "--fine.depth1", "1", "2", "--fine.depth3", "1", "2", "--fine.widths", "8", "64", "--max-gflops", "42",
    "--training.steps", "30", "--training.rays-per-batch", "512", "--training.num-coarse-samples", "16",
    "--training.num-importance-samples", "16", "--training.lr", "2e-2", "--training.eval-images", "2",
    "--training.max-step-factor", "1.25", "--heartbeat-interval", "1", "--grace-period", "8", "--threads", "1",
    "--trials-per-tier", "1", "--timing-repeats", "0",
]  # fmt: skip
WAIT_SECONDS = 600
"""Generous: the workers share two cores with whatever else runs."""
T = TypeVar("T")
LABEL = re.compile(r"^\s*(targets|s|xs|xxs)#(\d+) ", re.MULTILINE)
"""The line a worker prints for each trial it finished."""


def server_programs() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: initdb's on PATH, else Debian's (newest version first)."""
    on_path = shutil.which("initdb")
    folders = [Path(on_path).resolve().parent] if on_path else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    folders += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True)
    return next((f for f in folders if all((f / name).is_file() for name in SERVER_PROGRAMS)), None)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server (unix socket only, trust auth, no fsync) with an empty database."""
    programs = server_programs()
    if programs is None:
        pytest.skip(f"PostgreSQL server programs ({', '.join(SERVER_PROGRAMS)}) not found: {INSTALL}")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no '{SERVER_USER}' user to run PostgreSQL as: {INSTALL}")
    # under /tmp, not pytest's root-only temp folder, so that the server user reaches it; short for the socket path
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    if as_root:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"

    def server_command(program: str, *args: str) -> None:
        command = [str(programs / program), *args]
        command = ["runuser", "-u", SERVER_USER, "--", *command] if as_root else command
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{program} failed:\n{result.stdout}{result.stderr}" + (
            log.read_text()[-2000:] if log.exists() else ""
        )

    try:
        server_command("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
                       "--no-sync")  # fmt: skip
        options = f"-k {root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        server_command("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            # autocommit: CREATE DATABASE cannot run in a transaction
            with psycopg.connect(host=str(root), dbname="postgres", user="postgres", autocommit=True) as connection:
                connection.execute(f"CREATE DATABASE {DATABASE}")
            yield f"postgresql://postgres@/{DATABASE}?host={root}"
        finally:
            server_command("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def studies(url: str) -> dict[str, optuna.Study]:
    storage = RDBStorage(url, skip_table_creation=True)  # read only: the search creates the tables
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    return {
        part: optuna.load_study(study_name=f"nas-nerf.{part}", storage=storage)
        for part in ("targets", *TIERS)
        if f"nas-nerf.{part}" in names
    }


def running(url: str, part: str) -> list[int]:
    """Numbers of the running trials of one study (its connections closed: the test polls this)."""
    storage = RDBStorage(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=f"nas-nerf.{part}", storage=storage)
        return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    finally:
        storage.engine.dispose()


def trained(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if outcome(t) in ("trained", "pruned")]


def start_worker(args: list[str], log: Path, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`ns-nas-search` as its own process, printing to `log` (a pipe nobody reads could fill up and block it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    with log.open("w") as output:
        command = [sys.executable, "-m", "nas_nerf.search.cli", *args]
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def wait_until(condition: Callable[[], T], process: subprocess.Popen[bytes], log: Path) -> T:
    """Poll `condition` (on the search's database) until it holds, while the process runs."""
    deadline = time.monotonic() + WAIT_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if found := condition():
                return found
        except Exception:  # the search has not created its tables or studies yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"condition never held (exit code {process.poll()}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_workers_and_a_killed_one_share_a_postgres_study(
    synthetic_scene: Path, postgres_url: str, tmp_path: Path
) -> None:
    output_dir = tmp_path / "search"
    args = ["--data", str(synthetic_scene), "--output-dir", str(output_dir), "--storage", postgres_url, *SEARCH_ARGS]
    # the doomed worker starts alone, so the boundary trial running first is its own; it dies (SIGKILL) once that
    # trial is trained, as it writes its checkpoint, before the trial is finished
    injector = write_fault_injector(tmp_path / "injector")
    doomed_log = tmp_path / "doomed.log"
    doomed = start_worker(args, doomed_log, fault_env(injector, kill_at="replace:.ckpt"))
    workers, other_log = [doomed], tmp_path / "other.log"
    try:
        [killed] = wait_until(lambda: running(postgres_url, "targets"), doomed, doomed_log)
        other = start_worker(args, other_log)
        workers.append(other)
        logs = [entrypoint_in_process(entrypoint, ["ns-nas-search", *args])]
        assert other.wait(timeout=WAIT_SECONDS) == 0, other_log.read_text()[-3000:]
        assert doomed.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL, doomed_log.read_text()[-3000:]
    finally:  # a failed test leaves no worker behind
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs.append(other_log.read_text())
    assert not LABEL.findall(doomed_log.read_text())  # it finished nothing

    after = studies(postgres_url)
    boundaries = after["targets"].trials
    assert boundaries[killed].state == TrialState.FAIL  # its heartbeat stopped: not counted
    [retry] = [t for t in boundaries if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert retry.state == TrialState.COMPLETE and retry.params == boundaries[killed].params  # run again, once
    complete = [t.params["boundary"] for t in boundaries if t.state == TrialState.COMPLETE]
    assert sorted(complete) == ["largest", "smallest"] and len(boundaries) == 3  # each boundary trained once
    ran = [set(LABEL.findall(log)) for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both workers worked, never on the same trial
    finished = set()
    for part, study in after.items():
        assert [t.number for t in study.trials] == list(range(len(study.trials)))
        failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
        assert failed == ([killed] if part == "targets" else []), part
        assert all(t.state.is_finished() for t in study.trials), part  # nothing left running or queued
        if part != "targets":
            assert 1 <= len(trained(study)) <= 2, part  # the budget, plus at most one trial in flight when it was met
        finished |= {(part, str(t.number)) for t in study.trials
                     if t.state != TrialState.FAIL and not t.user_attrs.get("warm_start")}  # fmt: skip
    assert ran[0] | ran[1] == finished  # nothing lost (replays of known cells at a tier's start print no line)
    runs = {p.name for p in (output_dir / "runs").iterdir()}
    trainings = {f"{part}-{t.number:04d}" for part, study in after.items() for t in trained(study)}
    assert runs == trainings | {f"targets-{killed:04d}"}  # one run per training, the killed one's included
    summary = json.loads((output_dir / "summary.json").read_text())
    assert set(summary["targets"]["ssim"]) == set(TIERS)
