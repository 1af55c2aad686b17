"""The results store: one SQLite database per output dir (``OUTPUT_DIR/results.sqlite``).

WAL mode with a busy timeout, so several worker processes (local or on a cluster's shared
file system) read and write it at once. Claims use ``BEGIN IMMEDIATE`` so two workers never
take the same stage; a stage is marked done in the same transaction that inserts its
metrics, so a worker killed mid-write leaves no half row and no "done" without metrics. A
"running" claim whose pid is dead on this host, or whose heartbeat is older than
``stale_after`` seconds, is taken back.

Claiming is O(1) in the number of stages: every stage keeps ``pending_deps``, the number of
its upstream stages that are not done (kept up to date when a stage becomes done or stops
being done; the ``stage_deps`` table maps a stage to its dependents), so the next ready stage
is the first row of the index ``stages_ready (state, pending_deps)`` in registration order
(rowid: the plan's topological order). An idle worker's look finds nothing without taking the
write lock; the lock is taken only to claim a stage that was seen ready or to take back a
dead worker's claim. The store must stay on one host's file system: SQLite's WAL does not
work across hosts on a network file system, so Slurm jobs never open it
(:mod:`xstilts.experiments.slurm` collects their results on the submitting host).

Every claim is owned: :meth:`ResultsStore.heartbeat`, :meth:`~ResultsStore.complete`,
:meth:`~ResultsStore.fail` and :meth:`~ResultsStore.release` change a stage only while the
caller still holds it (same host, pid and attempt number), so a worker that stalled past
``stale_after`` and lost its stage to another worker can never mark the new owner's run.

A damaged database file raises :class:`~xstilts.errors.StoreError` (naming the file and
``xstilts store rebuild``), a full disk :class:`~xstilts.errors.DiskFullError`; never a raw
``sqlite3`` traceback.

Tables: ``runs``, ``stages`` (one row per stage id, shared by every spec using that output
dir), ``stage_labels`` (which model/setup/target/seed cell each stage serves), ``metrics``.
The analysis layer reads it only through :meth:`ResultsStore.metrics_frame` and
:meth:`ResultsStore.stages_frame`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xstilts.errors import StoreError
from xstilts.paths import STORE_FILE

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from xstilts.experiments.plan import Plan

logger = logging.getLogger(__name__)

STATES = ("waiting", "running", "done", "failed")
WAITING, RUNNING, DONE, FAILED = STATES  # the states, by name (analysis imports them)
DEFAULT_STALE_AFTER_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_file TEXT, spec_name TEXT, command TEXT, host TEXT, pid INTEGER,
    started_at REAL, finished_at REAL, n_stages INTEGER, status TEXT
);
CREATE TABLE IF NOT EXISTS stages (
    stage_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    settings TEXT NOT NULL,
    depends_on TEXT NOT NULL DEFAULT '[]',
    description TEXT,
    created_at REAL, started_at REAL, finished_at REAL, heartbeat REAL,
    host TEXT, pid INTEGER, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, result TEXT, progress TEXT,
    pending_deps INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS stage_labels (
    stage_id TEXT NOT NULL, model TEXT NOT NULL, setup TEXT NOT NULL, target TEXT NOT NULL DEFAULT '',
    seed INTEGER NOT NULL,
    PRIMARY KEY (stage_id, model, setup, target, seed)
);
CREATE TABLE IF NOT EXISTS metrics (
    stage_id TEXT NOT NULL, model TEXT NOT NULL, setup TEXT NOT NULL, target TEXT NOT NULL,
    language TEXT NOT NULL, seed INTEGER NOT NULL, split TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (stage_id, model, setup, target, language, seed, split, metric)
);
CREATE TABLE IF NOT EXISTS stage_deps (
    stage_id TEXT NOT NULL, depends_on TEXT NOT NULL,
    PRIMARY KEY (stage_id, depends_on)
);
CREATE INDEX IF NOT EXISTS metrics_by_cell ON metrics (target, setup, model);
CREATE INDEX IF NOT EXISTS stages_by_state ON stages (state);
CREATE INDEX IF NOT EXISTS stage_deps_by_upstream ON stage_deps (depends_on);
"""

#: ``PRAGMA user_version`` of a store with ``pending_deps`` and ``stage_deps`` (older files are migrated on open)
SCHEMA_VERSION = 2

# unfinished upstream stages of the stage in the outer query (a dependency never registered counts)
_PENDING = ("(SELECT COUNT(*) FROM stage_deps d LEFT JOIN stages u ON u.stage_id = d.depends_on "
            "WHERE d.stage_id = stages.stage_id AND (u.state IS NULL OR u.state != 'done'))")

METRIC_COLUMNS = ["model", "setup", "target", "language", "seed", "split", "metric", "value", "stage_id"]
STAGE_COLUMNS = ["stage_id", "kind", "state", "setup", "target", "model", "seed", "started_at", "finished_at",
                 "host", "error", "settings"]


@dataclass(frozen=True)
class Claim:
    """A stage this worker now owns (state "running"). ``attempts`` (this claim's attempt number)
    with the worker's host and pid is the claim's token: a later claim of the same stage has another."""

    stage_id: str
    kind: str
    settings: dict[str, Any]
    attempts: int


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (garbage header, bad pages, truncated), as opposed to a busy or full database."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return False
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        return "malformed" in text or "not a database" in text or "disk i/o error" in text
    return True


def _sqlite_cause(exc: BaseException) -> sqlite3.DatabaseError | None:
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, sqlite3.DatabaseError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def store_error(exc: BaseException, path: Path) -> BaseException:
    """The user-facing error for a SQLite failure on the store file ``path`` (``exc`` itself if none applies)."""
    from xstilts.experiments.faults import disk_full_error, is_disk_full

    cause = _sqlite_cause(exc)
    if cause is None:
        return exc
    if is_disk_full(cause):
        return disk_full_error(cause, [path.parent], what=f"writing the results store {path}")
    if _is_corrupt(cause):
        return StoreError(
            f"{path} is damaged and cannot be read ({cause}). The stage directories beside it hold every finished "
            f"result: rebuild the store with `xstilts store rebuild {path.parent}` (the damaged file is kept "
            "beside it), then run the same command again.")
    return exc


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class ResultsStore:
    """Access to one output dir's ``results.sqlite``. Cheap to open; one per process."""

    def __init__(self, path: str | Path, *, stale_after: float = DEFAULT_STALE_AFTER_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after
        self.host = socket.gethostname()
        with self._errors():
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx() as c:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    c.execute(statement)
            if c.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _migrate(c)
        self._want_key: tuple[int, int] | None = None
        self._want_ref: Sequence[str] | None = None
        self._want_len, self._want_ends = -1, None

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's errors on a damaged file or a full disk into clear user errors."""
        try:
            yield
        except Exception as exc:
            translated = store_error(exc, self.path)
            if translated is exc:
                raise
            raise translated from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately (no lock upgrade races between workers).

        A failed COMMIT (e.g. the disk filled up) is rolled back, so the store keeps its last
        committed state and the connection stays usable."""
        conn = self._conn
        with self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # pragma: no cover - nothing more to undo
                        pass
                raise

    # ------------------------------------------------------------------ runs

    def start_run(self, plan: Plan, command: str = "") -> int:
        """Record a run (one ``xstilts run`` invocation); returns its id."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO runs (spec_file, spec_name, command, host, pid, started_at, n_stages, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
                (str(plan.spec_file) if plan.spec_file else None, plan.spec_name, command, self.host, os.getpid(),
                 time.time(), len(plan)))
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: str) -> None:
        """Record how run ``run_id`` ended."""
        with self._tx() as c:
            c.execute("UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?", (time.time(), status, run_id))

    # ------------------------------------------------------------------ plan

    def register_plan(self, plan: Plan, *, retry_failed: bool = True) -> None:
        """Insert the plan's stages (existing ones keep their state) and labels.

        Labels new to an already-finished eval stage get its metrics copied, so a stage
        shared by another spec under another setup name shows up under both. With
        ``retry_failed``, failed stages of this plan go back to waiting. An eval stage marked
        done without a single metric (possible before evaluations that score nothing failed)
        waits again, so it is redone once its data is found.
        """
        now = time.time()
        with self._tx() as c:
            for stage in plan:
                cur = c.execute(
                    "INSERT OR IGNORE INTO stages (stage_id, kind, state, settings, depends_on, description, created_at) "
                    "VALUES (?, ?, 'waiting', ?, ?, ?, ?)",
                    (stage.id, stage.kind, json.dumps(stage.settings, sort_keys=True), json.dumps(list(stage.depends_on)),
                     stage.description, now))
                if cur.rowcount:
                    _add_deps(c, stage.id, stage.depends_on)
                if retry_failed:
                    c.execute("UPDATE stages SET state = 'waiting' WHERE stage_id = ? AND state = 'failed'", (stage.id,))
                if stage.kind == "eval":
                    cur = c.execute("UPDATE stages SET state = 'waiting' WHERE stage_id = ? AND state = 'done' AND NOT "
                                    "EXISTS (SELECT 1 FROM metrics WHERE metrics.stage_id = stages.stage_id)", (stage.id,))
                    if cur.rowcount:
                        _dependents_pending(c, stage.id, +1)
                for lab in stage.labels:
                    cur = c.execute("INSERT OR IGNORE INTO stage_labels VALUES (?, ?, ?, ?, ?)",
                                    (stage.id, lab.model, lab.setup, lab.target or "", lab.seed))
                    if cur.rowcount and stage.kind == "eval":
                        c.execute(
                            "INSERT OR IGNORE INTO metrics SELECT DISTINCT stage_id, ?, ?, ?, language, ?, split, metric, value "
                            "FROM metrics WHERE stage_id = ?",
                            (lab.model, lab.setup, lab.target or "", lab.seed, stage.id))

    # ------------------------------------------------------------------ claims

    def _gone(self, row: sqlite3.Row, now: float) -> str | None:
        """Why the worker holding running stage ``row`` is gone ("died", "went silent"), or None."""
        if row["host"] == self.host and not pid_alive(row["pid"]):
            return "died"
        if row["heartbeat"] is None or now - row["heartbeat"] > self.stale_after:
            return "went silent"
        return None

    def _stale(self, c: sqlite3.Connection) -> list[tuple[sqlite3.Row, str]]:
        """Running stages whose worker is gone, with why. Reads only running rows that are silent or
        held on this host (whose pid is checked); indexed on state."""
        now = time.time()
        rows = c.execute("SELECT stage_id, host, pid, heartbeat FROM stages WHERE state = 'running' AND "
                         "(host = ? OR heartbeat IS NULL OR heartbeat < ?)", (self.host, now - self.stale_after)
                         ).fetchall()
        return [(r, why) for r in rows if (why := self._gone(r, now)) is not None]

    def reclaim_stale(self, conn: sqlite3.Connection | None = None) -> list[str]:
        """Put back to waiting every running stage whose worker is gone; returns their ids."""
        own = conn is None
        ctx = self._tx() if own else _nullctx(conn)
        back: list[str] = []
        with ctx as c:
            for row, why in self._stale(c):
                c.execute("UPDATE stages SET state = 'waiting', pid = NULL, worker = NULL, error = ? "
                          "WHERE stage_id = ? AND state = 'running'",
                          (f"reclaimed: worker {row['host']}:{row['pid']} {why}", row["stage_id"]))
                back.append(row["stage_id"])
        if back:
            logger.info("reclaimed %d stale stage(s): %s", len(back), ", ".join(back))
        return back

    def _want(self, stage_ids: Sequence[str]) -> None:
        """Load ``stage_ids`` into this connection's temporary ``claim_want`` table (once per distinct list).

        The same list object passed again (a worker's loop) is recognised without hashing it; a
        list changed in place between calls must be passed as a new object."""
        if (stage_ids is self._want_ref and len(stage_ids) == self._want_len
                and (not stage_ids or (stage_ids[0], stage_ids[-1]) == self._want_ends)):
            return
        ids = tuple(stage_ids)
        key = (len(ids), hash(ids))
        self._want_ref, self._want_len = stage_ids, len(ids)
        self._want_ends = (ids[0], ids[-1]) if ids else None
        if key == self._want_key:
            return
        with self._errors():
            c = self._conn
            c.execute("CREATE TEMP TABLE IF NOT EXISTS claim_want (stage_id TEXT PRIMARY KEY)")
            c.execute("BEGIN")
            try:
                c.execute("DELETE FROM temp.claim_want")
                c.executemany("INSERT OR IGNORE INTO temp.claim_want VALUES (?)", ((i,) for i in ids))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        self._want_key = key

    @staticmethod
    def _ready_query(kinds: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
        """The next ready stage of ``claim_want``: the first row of the ``stages_ready`` index, in registration order."""
        sql = ("SELECT stage_id, kind, attempts FROM stages INDEXED BY stages_ready "
               "WHERE state = 'waiting' AND pending_deps = 0 AND +stage_id IN temp.claim_want")
        params: tuple[str, ...] = ()
        if kinds is not None:
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params = tuple(kinds)
        return sql + " ORDER BY rowid LIMIT 1", params

    def claim_next(self, stage_ids: Sequence[str], *, worker: str = "", kinds: Sequence[str] | None = None) -> Claim | None:
        """Atomically take the next waiting stage of ``stage_ids`` whose upstream stages are all done.

        Stages are taken in the order they were registered (a plan registers them in topological
        order). Cost does not grow with the number of stages: an indexed look at one row, done
        first without the write lock (an idle worker never takes it), then again under the lock to
        claim; running stages of dead workers are taken back on the way."""
        if kinds is not None and not kinds:
            return None
        self._want(stage_ids)
        sql, params = self._ready_query(kinds)
        with self._errors():
            seen = self._conn.execute(sql, params).fetchone()
            stale = self._stale(self._conn)
        if seen is None and not stale:
            return None
        with self._tx() as c:
            if stale:
                self.reclaim_stale(c)
            row = c.execute(sql, params).fetchone()
            if row is None:
                return None
            now = time.time()
            c.execute("UPDATE stages SET state = 'running', host = ?, pid = ?, worker = ?, started_at = ?, "
                      "heartbeat = ?, attempts = attempts + 1, error = NULL, progress = NULL WHERE stage_id = ?",
                      (self.host, os.getpid(), worker, now, now, row["stage_id"]))
        with self._errors():  # settings never change for a stage id: read after the lock is gone
            settings = self._conn.execute("SELECT settings FROM stages WHERE stage_id = ?", (row["stage_id"],)).fetchone()
        return Claim(row["stage_id"], row["kind"], json.loads(settings[0]), row["attempts"] + 1)

    def _owned(self, claim: Claim | str) -> tuple[str, str, tuple[Any, ...]]:
        """``(stage_id, WHERE clause, parameters)`` matching the stage only while this caller holds ``claim``
        (a :class:`Claim`: that very attempt; a stage id: any claim of this process)."""
        sid = claim.stage_id if isinstance(claim, Claim) else claim
        where = "stage_id = ? AND state = 'running' AND host = ? AND pid = ?"
        params: tuple[Any, ...] = (sid, self.host, os.getpid())
        if isinstance(claim, Claim):
            where += " AND attempts = ?"
            params += (claim.attempts,)
        return sid, where, params

    def heartbeat(self, claim: Claim | str, progress: dict[str, Any] | None = None) -> bool:
        """Refresh this worker's claim (and its progress note); False if it lost the claim."""
        _, where, params = self._owned(claim)
        with self._tx() as c:
            cur = c.execute(f"UPDATE stages SET heartbeat = ?, progress = COALESCE(?, progress) WHERE {where}",
                            (time.time(), json.dumps(progress) if progress is not None else None, *params))
            return cur.rowcount == 1

    def owns(self, claim: Claim | str) -> bool:
        """Whether this caller still holds ``claim``."""
        _, where, params = self._owned(claim)
        with self._errors():
            return self._conn.execute(f"SELECT 1 FROM stages WHERE {where}", params).fetchone() is not None

    def complete(self, claim: Claim | str, metrics: Iterable[tuple[str, str, str, float]] = (),
                 result: dict[str, Any] | None = None) -> bool:
        """Mark the claimed stage done and insert its metrics ``(language, split, metric, value)`` — one
        row per label of the stage — in one transaction. Returns False, and changes nothing, when
        the caller no longer holds the claim (another worker took the stage over)."""
        rows = list(metrics)
        sid, where, params = self._owned(claim)
        with self._tx() as c:
            cur = c.execute(f"UPDATE stages SET state = 'done', finished_at = ?, heartbeat = ?, error = NULL, "
                            f"result = ? WHERE {where}",
                            (time.time(), time.time(), json.dumps(result or {}, default=str), *params))
            if cur.rowcount != 1:
                return False
            _dependents_pending(c, sid, -1)
            self._insert_metrics(c, sid, rows)
        return True

    @staticmethod
    def _insert_metrics(c: sqlite3.Connection, stage_id: str, rows: list[tuple[str, str, str, float]]) -> None:
        labels = c.execute("SELECT model, setup, target, seed FROM stage_labels WHERE stage_id = ?",
                           (stage_id,)).fetchall()
        for lab in labels:
            c.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(stage_id, lab["model"], lab["setup"], lab["target"], lang, lab["seed"], split, metric,
                            float(value)) for lang, split, metric, value in rows])

    def fail(self, claim: Claim | str, error: str) -> bool:
        """Mark the claimed stage failed with ``error`` (kept for ``xstilts status``); False, and
        nothing changed, when the caller no longer holds the claim."""
        _, where, params = self._owned(claim)
        with self._tx() as c:
            cur = c.execute(f"UPDATE stages SET state = 'failed', finished_at = ?, error = ? WHERE {where}",
                            (time.time(), error[-20000:], *params))
            return cur.rowcount == 1

    def release(self, claim: Claim | str) -> bool:
        """Give a claim back (e.g. on Ctrl-C): the stage waits again and keeps its checkpoints."""
        _, where, params = self._owned(claim)
        with self._tx() as c:
            cur = c.execute(f"UPDATE stages SET state = 'waiting', pid = NULL, worker = NULL WHERE {where}", params)
            return cur.rowcount == 1

    def record_done(self, stage_id: str, metrics: Iterable[tuple[str, str, str, float]] = (),
                    result: dict[str, Any] | None = None) -> None:
        """Mark a registered stage done with its metrics, whoever holds it (``xstilts store rebuild``)."""
        rows = list(metrics)
        with self._tx() as c:
            was = c.execute("SELECT state FROM stages WHERE stage_id = ?", (stage_id,)).fetchone()
            c.execute("UPDATE stages SET state = 'done', finished_at = COALESCE(finished_at, ?), error = NULL, "
                      "pid = NULL, worker = NULL, result = ? WHERE stage_id = ?",
                      (time.time(), json.dumps(result or {}, default=str), stage_id))
            if was is not None and was[0] != DONE:
                _dependents_pending(c, stage_id, -1)
            self._insert_metrics(c, stage_id, rows)

    def record_failed(self, stage_id: str, error: str) -> None:
        """Mark a registered stage that is not done failed with ``error``, whoever held it (a Slurm
        job's ``FAILED.json``, collected by :func:`xstilts.experiments.slurm.collect_results`)."""
        with self._tx() as c:
            c.execute("UPDATE stages SET state = 'failed', finished_at = ?, error = ?, pid = NULL, worker = NULL "
                      "WHERE stage_id = ? AND state != 'done'", (time.time(), error[-20000:], stage_id))

    # ------------------------------------------------------------------ reading

    def states(self, stage_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``{stage_id: state}`` (all stages, or those of ``stage_ids`` that are registered)."""
        with self._errors():
            rows = self._conn.execute("SELECT stage_id, state FROM stages").fetchall()
        want = set(stage_ids) if stage_ids is not None else None
        return {r[0]: r[1] for r in rows if want is None or r[0] in want}

    def stage_rows(self, stage_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Raw stage rows as dicts."""
        with self._errors():
            rows = [dict(r) for r in self._conn.execute("SELECT * FROM stages").fetchall()]
        if stage_ids is not None:
            want = set(stage_ids)
            rows = [r for r in rows if r["stage_id"] in want]
        return rows

    def metrics_frame(self, stage_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Every stored metric: columns model, setup, target, language, seed, split, metric,
        value (a percentage), stage_id. ``stage_ids`` limits it to those stages."""
        import pandas as pd

        with self._errors():
            df = pd.read_sql_query(f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics ORDER BY target, setup, model, "
                                   "seed, language, metric", self._conn)
        if stage_ids is not None:
            df = df[df["stage_id"].isin(set(stage_ids))].reset_index(drop=True)
        df["seed"] = df["seed"].astype(int)
        df["value"] = df["value"].astype(float)
        return df[METRIC_COLUMNS]

    def stages_frame(self, stage_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per (stage, label): stage_id, kind, state, setup, target, model, seed,
        started_at, finished_at, host, error, settings (json). Shared stages appear once per use."""
        import pandas as pd

        with self._errors():
            df = pd.read_sql_query(
                "SELECT s.stage_id, s.kind, s.state, l.setup, NULLIF(l.target, '') AS target, l.model, l.seed, "
                "s.started_at, s.finished_at, s.host, s.error, s.settings, s.attempts, s.description "
                "FROM stages s LEFT JOIN stage_labels l ON s.stage_id = l.stage_id ORDER BY s.created_at, s.stage_id",
                self._conn)
        if stage_ids is not None:
            df = df[df["stage_id"].isin(set(stage_ids))].reset_index(drop=True)
        return df[[*STAGE_COLUMNS, "attempts", "description"]]

    def runs_frame(self) -> pd.DataFrame:
        import pandas as pd

        with self._errors():
            return pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", self._conn)


@contextmanager
def _nullctx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    yield conn


def _add_deps(c: sqlite3.Connection, stage_id: str, depends_on: Iterable[str]) -> None:
    """Record a new stage's upstream stages and count those not done yet."""
    c.executemany("INSERT OR IGNORE INTO stage_deps VALUES (?, ?)", [(stage_id, d) for d in depends_on])
    c.execute(f"UPDATE stages SET pending_deps = {_PENDING} WHERE stage_id = ?", (stage_id,))


def _dependents_pending(c: sqlite3.Connection, stage_id: str, delta: int) -> None:
    """``stage_id`` became done (``delta`` -1) or stopped being done (+1): its dependents' counts follow."""
    c.execute("UPDATE stages SET pending_deps = pending_deps + ? WHERE stage_id IN "
              "(SELECT stage_id FROM stage_deps WHERE depends_on = ?)", (delta, stage_id))


def _migrate(c: sqlite3.Connection) -> None:
    """Bring a store file written before :data:`SCHEMA_VERSION` up to it (inside the open transaction):
    the ``pending_deps`` column, ``stage_deps`` from each stage's ``depends_on``, the ready index."""
    columns = {r[1] for r in c.execute("PRAGMA table_info(stages)")}
    if "pending_deps" not in columns:
        c.execute("ALTER TABLE stages ADD COLUMN pending_deps INTEGER NOT NULL DEFAULT 0")
    for sid, deps in c.execute("SELECT stage_id, depends_on FROM stages").fetchall():
        c.executemany("INSERT OR IGNORE INTO stage_deps VALUES (?, ?)", [(sid, d) for d in json.loads(deps or "[]")])
    c.execute(f"UPDATE stages SET pending_deps = {_PENDING}")
    c.execute("CREATE INDEX IF NOT EXISTS stages_ready ON stages (state, pending_deps)")
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def store_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STORE_FILE


def open_store(output_dir: str | Path, *, stale_after: float = DEFAULT_STALE_AFTER_S) -> ResultsStore:
    """Open (creating if needed) the results store of ``output_dir``."""
    return ResultsStore(store_path(output_dir), stale_after=stale_after)
