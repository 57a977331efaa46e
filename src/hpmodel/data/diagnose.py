"""Why the accelerator waited: :meth:`Pipeline.stats` turned into one verdict.

Plain Python over the per-stage counters of ``core.Stats``: the stage with the highest
utilisation (busy seconds over wall seconds times its workers) is the slowest; the
AUTOTUNE knobs each stage reports (map ``window``, interleave ``lookahead``, prefetch
``buffer_size``) say what the tuner changed, and a short rule set says what it would
change next. The input bench prints it; the Trainer puts the last epoch's into its
summary (``summary["input"]``) and the run report shows its ``text``.

Example::

    pipe = from_tensors(x).map(fn, num_parallel_calls=AUTOTUNE).batch(32)
    for _ in pipe: ...
    print(why_waited(pipe.stats())["text"])
"""

from __future__ import annotations

# Stages whose busy time includes their upstream's (they pull in their own thread).
_WRAPPERS = ("prefetch", "to_device")
_KNOBS = {"map": "window", "interleave": "lookahead", "prefetch": "buffer_size",
          "to_device": "buffer_size"}


def _utilisation(stage: dict, wall: float) -> float:
    workers = max(1, int(stage.get("workers") or 1))
    return stage.get("busy_seconds", 0.0) / max(wall * workers, 1e-9)


def _advice(slowest: dict, util: float, bound: float) -> str:
    kind = slowest["stage"]
    if bound < 0.02:
        return "input is not the bottleneck (< 2% input-bound): nothing to change"
    if kind == "map" and util > 0.8:
        if slowest.get("workers", 1) <= 1:
            return "parallelise the map: num_parallel_calls=AUTOTUNE"
        return ("the map saturates its workers: raise cpu_budget (with_options) or, for "
                "GIL-bound Python, use_processes=True")
    if kind == "interleave":
        return "reading waits on I/O: raise cycle_length or num_parallel_calls=AUTOTUNE"
    if kind in ("source", "filter", "batch"):
        return (f"the {kind} stage runs on the consumer thread: add .prefetch(AUTOTUNE) "
                "after it or move work into a parallel map")
    return "add .prefetch(AUTOTUNE) at the end so the consumer never waits on a stage"


def why_waited(stats: dict) -> dict:
    """The slowest stage, its utilisation, and what AUTOTUNE changed or would change.

    ``stats`` is :meth:`Pipeline.stats`'s dict. Returns a JSON-ready dict with a one-
    paragraph ``text``.

    Example::

        why_waited(pipe.stats())["slowest_stage"]   # e.g. 'map'
    """
    wall = float(stats.get("wall_seconds") or 0.0)
    bound = float(stats.get("input_bound_fraction") or 0.0)
    stages = [s for s in stats.get("stages", []) if s.get("busy_seconds") is not None]
    if not stages or wall <= 0:
        return {"slowest_stage": None, "text": "no statistics yet: iterate the pipeline first"}
    candidates = [s for s in stages if s["stage"] not in _WRAPPERS] or stages
    slowest = max(candidates, key=lambda s: _utilisation(s, wall))
    util = _utilisation(slowest, wall)
    tuned = {}
    for s in stages:
        knob = _KNOBS.get(s["stage"])
        if knob and knob in s:
            tuned[f"{s['stage']}.{knob}"] = s[knob]
    advice = _advice(slowest, util, bound)
    tuned_text = ", ".join(f"{k}={v}" for k, v in tuned.items()) or "no AUTOTUNE knob reported"
    text = (f"input-bound {bound:.1%} of {wall:.2f} s; slowest stage: {slowest['stage']} "
            f"({util:.0%} busy over {max(1, int(slowest.get('workers') or 1))} worker(s)); "
            f"AUTOTUNE settled at {tuned_text}; next: {advice}")
    return {"input_bound_fraction": bound, "slowest_stage": slowest["stage"],
            "utilisation": round(util, 4), "workers": slowest.get("workers", 1),
            "autotuned": tuned, "advice": advice, "text": text}
