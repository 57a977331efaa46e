"""The coordinator: schedules steps onto workers, re-runs the steps of dead workers, keeps score.

In the spirit of tf.distribute's ``ClusterCoordinator``: steps wait in a queue, each
idle worker gets the next one (``torch.distributed.rpc.rpc_async``), and a step whose
worker fails (connection reset, or no answer within the RPC timeout) goes back to the
front of the queue for another worker — at-least-once scheduling; the servers drop a
step's second update, so each step lands once. ``torch.distributed.rpc`` itself never
retries.

Modes:
- ``async``: every worker runs as fast as it can; servers apply each update on arrival.
- ``bounded``: Stale Synchronous Parallel — a worker gets no new step while it is more
  than ``staleness_bound`` steps ahead of the slowest live worker. The version lag of
  an update is then at most ``(workers - 1) * (2 * bound + 1)``.
- ``sync``: rounds of one step per live worker; the servers average the round's
  gradients into one update (version lag 0).

Example::

    coordinator = Coordinator(workers=["worker0", "worker1"], servers=["server0"], mode="async")
    report = coordinator.run(steps, log=print)
"""

from __future__ import annotations

import collections
import queue
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed.rpc as rpc

from hpmodel.kernel.errors import HpmodelError
from hpmodel.parameter_server import server, worker


@dataclass
class WorkerStats:
    """What one worker did: steps, examples, busy seconds and the version lag of its updates."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    lags: list[int] = field(default_factory=list)
    alive: bool = True
    lost_steps: int = 0  # steps it had in flight when it died, run again elsewhere

    def row(self, name: str, wall: float) -> dict:
        return {"worker": name, "steps": self.steps, "examples": self.examples,
                "examples_per_second": self.examples / max(wall, 1e-9),
                "staleness_mean": sum(self.lags) / max(len(self.lags), 1),
                "staleness_max": max(self.lags, default=0), "alive": self.alive}


class Coordinator:
    """Runs a list of steps on the workers (see the module docstring for the modes)."""

    def __init__(self, workers: list[str], servers: list[str], mode: str = "async",
                 staleness_bound: int = 2, rpc_timeout_s: float = 30.0, log_every_steps: int = 10):
        self.workers, self.servers = list(workers), list(servers)
        self.mode, self.bound = mode, staleness_bound
        self.rpc_timeout_s = rpc_timeout_s
        self.log_every_steps = max(1, log_every_steps)
        self.stats = {name: WorkerStats() for name in self.workers}
        self.results: queue.Queue = queue.Queue()
        self.clock_gap_max = 0  # SSP: most steps any worker was ahead of the slowest at dispatch
        self.window = collections.Counter()
        self.last_error = ""
        self.window_start = time.perf_counter()

    @property
    def alive(self) -> list[str]:
        return [name for name in self.workers if self.stats[name].alive]

    def run(self, steps: list[tuple[int, torch.Tensor]], log: Callable[[dict], None]) -> dict:
        """Run every step once (at least); ``log`` gets one record per window and per event."""
        started = time.perf_counter()
        self.window_start = started
        pending = collections.deque(steps)
        if self.mode == "sync":
            self.run_rounds(pending, log)
        else:
            self.run_async(pending, log)
        wall = time.perf_counter() - started
        return self.report(wall)

    # -- async and bounded --------------------------------------------------------------------
    def run_async(self, pending: collections.deque, log) -> None:
        self.run_until_done(pending, log, self.may_start)

    def run_until_done(self, todo: collections.deque, log, may_start=lambda name: True) -> None:
        """Hand ``todo``'s steps to live workers, one each at a time, until all are recorded;
        a step whose worker died goes back to the front of ``todo`` (at-least-once)."""
        in_flight: dict[str, tuple[int, torch.Tensor]] = {}
        while todo or in_flight:
            for name in self.alive:
                if name not in in_flight and todo and may_start(name):
                    in_flight[name] = todo.popleft()
                    self.dispatch(name, in_flight[name])
            if not in_flight:
                self.require_workers()
                continue
            name, step, result = self.next_result()
            del in_flight[name]
            if not self.record(name, step, result, log):
                todo.appendleft(step)

    def may_start(self, name: str) -> bool:
        if self.mode != "bounded":
            return True
        slowest = min(self.stats[n].steps for n in self.alive)
        ahead = self.stats[name].steps - slowest
        if ahead <= self.bound:
            self.clock_gap_max = max(self.clock_gap_max, ahead)
            return True
        return False

    # -- sync -----------------------------------------------------------------------------------
    def run_rounds(self, pending: collections.deque, log) -> None:
        while pending:
            self.require_workers()
            round_steps = [pending.popleft() for _ in range(min(len(self.alive), len(pending)))]
            self.run_until_done(collections.deque(round_steps), log)
            ids = [step_id for step_id, _ in round_steps]
            self.call_servers(server.apply_round, ids)

    # -- shared ---------------------------------------------------------------------------------
    def dispatch(self, name: str, step: tuple[int, torch.Tensor]) -> None:
        def done(future, name=name, step=step):
            self.results.put((name, step, future))

        try:
            future = rpc.rpc_async(name, worker.run_step, args=step, timeout=self.rpc_timeout_s)
        except RuntimeError as error:  # the agent already knows this peer is gone
            self.results.put((name, step, error))
            return
        future.add_done_callback(done)

    def next_result(self):
        name, step, future = self.results.get()
        if isinstance(future, Exception):
            return name, step, {"error": str(future)}
        try:
            return name, step, future.wait()
        except RuntimeError as error:
            return name, step, {"error": f"worker unreachable: {error}"}

    def record(self, name: str, step, result: dict, log) -> bool:
        """Book a finished step; False when it failed (its worker is then taken out)."""
        stats = self.stats[name]
        if "error" in result:
            if result["error"].startswith(("pull failed", "push failed")):
                raise HpmodelError(f"a parameter server stopped answering {name} "
                                   f"({result['error'].splitlines()[0][:200]}): restart the run; "
                                   "servers resume from their backups")
            stats.alive, stats.lost_steps = False, stats.lost_steps + 1
            self.last_error = f"{name}: {result['error'].splitlines()[0][:300]}"
            log({"kind": "event", "event": "worker_lost", "worker": name, "step_id": step[0],
                 "message": result["error"].splitlines()[0][:200]})
            self.require_workers()
            return False
        stats.steps += 1
        stats.examples += result["examples"]
        stats.seconds += result["seconds"]
        if not result.get("duplicate"):
            stats.lags.append(result["lag"])
        self.window.update({"loss": result["loss"], "correct": result["correct"],
                            "examples": result["examples"], "lag": result["lag"], "count": 1})
        self.window["lag_max"] = max(self.window["lag_max"], result["lag"])
        done = sum(s.steps for s in self.stats.values())
        if done % self.log_every_steps == 0:
            log(self.window_record(done))
        return True

    def window_record(self, done: int) -> dict:
        now = time.perf_counter()
        w, seconds = self.window, max(now - self.window_start, 1e-9)
        record = {"kind": "step", "step": done, "loss": w["loss"] / max(w["examples"], 1),
                  "accuracy": w["correct"] / max(w["examples"], 1),
                  "examples_per_second": w["examples"] / seconds,
                  "staleness_mean": w["lag"] / max(w["count"], 1), "staleness_max": w["lag_max"],
                  "worker_steps": {n: s.steps for n, s in self.stats.items()}}
        self.window, self.window_start = collections.Counter(), now
        return record

    def require_workers(self) -> None:
        if not self.alive:
            raise HpmodelError(f"every parameter-server worker died (last: {self.last_error}): fix "
                               "the cause, then start the run again (servers resume from their backups)")

    def call_servers(self, fn, *args):
        futures = [rpc.rpc_async(name, fn, args=args, timeout=self.rpc_timeout_s) for name in self.servers]
        try:
            return [future.wait() for future in futures]
        except RuntimeError as error:
            raise HpmodelError(f"a parameter server stopped answering the coordinator "
                               f"({str(error).splitlines()[0][:200]}): restart the run; servers "
                               "resume from their backups") from None

    def report(self, wall: float) -> dict:
        rows = [self.stats[name].row(name, wall) for name in self.workers]
        lags = [lag for s in self.stats.values() for lag in s.lags]
        examples = sum(s.examples for s in self.stats.values())
        return {"rows": rows, "wall_seconds": wall, "examples": examples,
                "steps": sum(s.steps for s in self.stats.values()),
                "examples_per_second": examples / max(wall, 1e-9),
                "staleness_mean": sum(lags) / max(len(lags), 1), "staleness_max": max(lags, default=0),
                "clock_gap_max": self.clock_gap_max,
                "workers_lost": [n for n in self.workers if not self.stats[n].alive]}
