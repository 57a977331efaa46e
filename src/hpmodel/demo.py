"""The demo: the toolkit's journey on embedded data (digits), on whatever machine this is.

Stages are added as capabilities land; each prints a one-line headline.
"""

from __future__ import annotations

from pathlib import Path

from hpmodel.config import load_config
from hpmodel.report import print_summary

EXAMPLE_CONFIG = Path(__file__).resolve().parent / "examples" / "digits.toml"


def demo_config(quick: bool):
    cfg = load_config(EXAMPLE_CONFIG)
    if quick:
        cfg.train.epochs = 2
    return cfg


def run_demo(out: Path, quick: bool = False) -> dict:
    from hpmodel.train.run import evaluate_run, train_from_config

    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(quick)
    print(f"[1/2] train a {cfg.model.name} on digits with strategy "
          f"'{cfg.strategy.get('name', 'one-device')}' → {out / 'train'}", flush=True)
    summary = train_from_config(cfg, out / "train")
    print_summary(summary, title="training")
    print(f"[2/2] re-score the saved weights from disk", flush=True)
    scores = evaluate_run(out / "train")
    print_summary(scores, title="evaluate")
    return summary
