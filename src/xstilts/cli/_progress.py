"""``xstilts run``'s progress: one line per stage start/finish, its duration, and an estimate of
the time left, printed through the progress bars' lock (a stage's own bars stay intact)."""

from __future__ import annotations

import threading
import time
from typing import Any

from xstilts.cli._app import say


def fmt_duration(seconds: float | None) -> str:
    """``75.2`` -> ``1m15s``; ``None`` -> ``?``."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RunProgress:
    """Follows a plan's stages in the store (``tick(store)``, the runner's ``on_tick``)."""

    def __init__(self, plan: Any, *, workers: int = 1) -> None:
        self.plan = plan
        self.workers = max(1, workers)
        self.t0 = time.time()
        self.states: dict[str, str] = {}
        self.durations: dict[str, float] = {}  # stage id -> seconds, for finished stages (any run)
        self._lock = threading.Lock()
        self.before_run = self._snapshot()

    def _snapshot(self) -> dict[str, str]:
        """States recorded before this run (stages already done are not announced again)."""
        from xstilts.experiments import open_store
        from xstilts.experiments.store import store_path

        if not store_path(self.plan.output_dir).is_file():
            return {}
        with open_store(self.plan.output_dir) as store:
            for sid, row in ((r["stage_id"], r) for r in store.stage_rows(self.plan.stages)):
                self._update(sid, row, announce=False)
        return dict(self.states)

    def describe(self, sid: str) -> str:
        """``train anli -> xnli (seed 0)``: what a stage is, short."""
        st = self.plan.stages[sid]
        setups = ",".join(st.setups())
        seeds = ",".join(str(x) for x in sorted({lab.seed for lab in st.labels}))
        what = f"{st.kind} {setups}" + (f" -> {st.target}" if st.target else "")
        from rich.markup import escape

        return escape(f"{what} (seed {seeds}) [{sid[:8]}]")

    def tick(self, store: Any) -> None:
        """Print the stages that started, finished or failed since the last tick."""
        with self._lock:
            rows = {r["stage_id"]: r for r in store.stage_rows(self.plan.stages)}
            for sid, row in rows.items():
                self._update(sid, row)

    def _update(self, sid: str, row: dict[str, Any], announce: bool = True) -> None:
        state, before = row.get("state", "waiting"), self.states.get(sid)
        self.states[sid] = state
        if state == "done" and row.get("started_at") and row.get("finished_at"):
            self.durations[sid] = float(row["finished_at"]) - float(row["started_at"])
        if state == before or not announce:
            return
        if state == "done":  # (a start is logged by the runner)
            say(f"[green]done[/]     {self.describe(sid)} in {fmt_duration(self.durations.get(sid))}; "
                f"{self._overall()}")
        elif state == "failed":
            error = (row.get("error") or "").strip().splitlines()
            say(f"[red]failed[/]   {self.describe(sid)}: {error[0][:200] if error else '?'}; {self._overall()}")

    def remaining_seconds(self) -> float | None:
        """Estimated seconds left: for each stage not done, the mean duration of finished stages of
        its kind (else of any kind), divided among the workers; None before any stage finished."""
        if not self.durations:
            return None
        by_kind: dict[str, list[float]] = {}
        for sid, secs in self.durations.items():
            by_kind.setdefault(self.plan.stages[sid].kind, []).append(secs)
        overall = sum(self.durations.values()) / len(self.durations)
        left = 0.0
        for sid, st in self.plan.stages.items():
            if self.states.get(sid) not in ("done", "failed"):
                same = by_kind.get(st.kind)
                left += sum(same) / len(same) if same else overall
        return left / self.workers

    def _overall(self, *, elapsed: bool = True) -> str:
        done = sum(1 for s in self.states.values() if s == "done")
        failed = sum(1 for s in self.states.values() if s == "failed")
        left = self.remaining_seconds()
        return (f"{done}/{len(self.plan.stages)} done" + (f", [red]{failed} failed[/]" if failed else "")
                + (f", elapsed {fmt_duration(time.time() - self.t0)}" if elapsed else "")
                + ("" if done + failed == len(self.plan.stages) else f", about {fmt_duration(left)} left"))

    def start(self) -> None:
        """The opening line: how many stages, how many already done."""
        done = sum(1 for s in self.before_run.values() if s == "done")
        say(f"running {len(self.plan.stages) - done} of {len(self.plan.stages)} stage(s) ({done} already done) "
            f"with {self.workers} worker(s)")

    def finish(self) -> None:
        """The closing line: stages run in this call and the wall time."""
        say(f"finished in {fmt_duration(time.time() - self.t0)}: {self._overall(elapsed=False)}")
