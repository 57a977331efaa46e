"""``hpmodel distill CONFIG.toml --teacher RUN_DIR [--teacher RUN_DIR2 ...] --out DIR``:
train the CONFIG's model as a student of the teachers, and the same model from scratch,
then write the report (report.md, summary.json) into DIR."""

from __future__ import annotations

from hpmodel.commands.common import add_config_arguments, add_trust_argument, overrides_from_args


def add_parser(sub) -> None:
    parser = sub.add_parser("distill", help="distill teacher run(s) into the CONFIG's student model")
    parser.add_argument("config", help="TOML config of the student, with an optional [distill] table")
    parser.add_argument("--teacher", action="append", default=[], required=True, metavar="RUN_DIR",
                        help="a run directory written by 'hpmodel train' (repeat for several)")
    parser.add_argument("--out", required=True, help="run directory to write")
    add_config_arguments(parser)
    add_trust_argument(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.runs.distill import distill_from_config, load_distill_config
    from hpmodel.reporting.distill import lm_markdown, markdown_table

    cfg, dcfg = load_distill_config(args.config, overrides_from_args(args))
    summary = distill_from_config(cfg, dcfg, args.teacher, args.out,
                                  trust_model_target=args.trust_model_target)
    table = lm_markdown(summary) if summary.get("task") == "causal-lm" else \
        markdown_table(summary["report"])
    print(f"hpmodel distill → {args.out}\n\n{table}\n")  # as in report.md
    gap = summary.get("gap_recovered")
    if isinstance(gap, float):
        print(f"gap recovered: {gap:.1%} of the teacher−student gap")
    return 0
