"""``hpmodel compress RUN_DIR --out DIR [--modes ...]``: quantized and pruned variants + report."""

from __future__ import annotations

from hpmodel.commands.common import add_trust_argument


def add_parser(sub) -> None:
    from hpmodel.compress.variants import CPU_MODES, MODES

    parser = sub.add_parser("compress", help="build quantized / pruned variants of a run and compare them")
    parser.add_argument("run_dir", help="a directory written by 'hpmodel train'")
    parser.add_argument("--out", required=True, help="directory for the variants, report.md, summary.json")
    parser.add_argument("--modes", default=",".join(CPU_MODES),
                        help=f"comma-separated, from: {', '.join(MODES)} (default: every CPU mode; "
                             "GPU modes are skipped without a GPU)")
    parser.add_argument("--sparsity", type=float, default=0.8, help="magnitude pruning target")
    parser.add_argument("--structured-amount", type=float, default=0.5,
                        help="share of the parameters structured pruning removes (Torch-Pruning; without it: of hidden units / channels)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs for QAT and pruning")
    parser.add_argument("--calibration-batches", type=int, default=8, help="batches for static int8")
    parser.add_argument("--int4-block-size", type=int, default=32,
                        help="weights per int4 scale (int4: ORT MatMulNBits; int4-torchao: group size)")
    parser.add_argument("--int4-accuracy-level", type=int, default=0,
                        help="int4 MatMulNBits compute: 0 fp32 (default), 4 int8 activations")
    parser.add_argument("--int4-fp32-embeddings", action="store_true",
                        help="keep the GPT's token / position tables fp32 (default: int4 too)")
    parser.add_argument("--weight-scales", choices=["per-channel", "per-tensor"],
                        default="per-channel",
                        help="static-int8 and qat weight scales: per output channel (default) or "
                             "one per tensor, for int8 accelerators without per-channel support")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per latency")
    add_trust_argument(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from hpmodel.compress.variants import CompressOptions
    from hpmodel.runs.compress import compress_run

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    options = CompressOptions(modes=modes, sparsity=args.sparsity,
                              structured_amount=args.structured_amount, fine_tune_epochs=args.epochs,
                              calibration_batches=args.calibration_batches,
                              int4_block_size=args.int4_block_size,
                              int4_accuracy_level=args.int4_accuracy_level,
                              int4_embeddings=not args.int4_fp32_embeddings,
                              weight_scales=args.weight_scales)
    compress_run(args.run_dir, args.out, options, repeats=args.repeats,
                 trust_model_target=args.trust_model_target)
    return 0
