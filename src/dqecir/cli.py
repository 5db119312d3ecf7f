"""The one command line: ``dqecir <command> ...``; each command dispatches to the library.

Heavy imports happen inside each command so that ``dqecir --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dqecir.errors import DqecirError

log = logging.getLogger("dqecir")


def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from dqecir.data.synthetic import make_benchmark

    summary = make_benchmark(
        args.kind,
        Path(args.out),
        seed=args.seed,
        size=args.size,
        hard_only_train=args.hard_only_train,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dqecir.scoring import score_predictions_file

    metrics = score_predictions_file(
        args.benchmark, Path(args.root), args.split, Path(args.predictions)
    )
    print(json.dumps(metrics))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dqecir.config import load_config
    from dqecir.train import train

    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        best = train(None, Path(args.resume), resume=True)
    else:
        if not args.config or not args.out:
            raise SystemExit("dqecir train: --config and --out are required (or --resume DIR)")
        cfg = load_config(args.config, overrides)
        best = train(cfg, Path(args.out), stop_after_epoch=args.stop_after_epoch)
    print(best)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dqecir.evaluate import evaluate_checkpoint

    metrics, written = evaluate_checkpoint(
        Path(args.checkpoint),
        args.benchmark,
        Path(args.root),
        args.split,
        out_dir=Path(args.out) if args.out else None,
        device=args.device,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
    )
    for p in written:
        log.info("wrote %s", p)
    print(json.dumps(metrics))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dqecir.demo import run_demo

    run_demo(Path(args.data), Path(args.out), size=args.size, overrides=args.set or [])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dqecir", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    mb = sub.add_parser(
        "make-benchmark",
        help="write an embedded benchmark (shapes or fmnist) in the CIRR and CIRCO layouts",
    )
    mb.add_argument("kind", choices=["shapes", "fmnist"])
    mb.add_argument("--out", required=True, help="output folder")
    mb.add_argument("--seed", type=int, default=0)
    mb.add_argument("--size", choices=["tiny", "small", "default"], default="default")
    mb.add_argument(
        "--hard-only-train",
        action="store_true",
        help="variant whose train split lists only the hard target (as FashionIQ does)",
    )
    mb.set_defaults(func=_cmd_make_benchmark)

    sc = sub.add_parser("score", help="score a predictions file with the official protocol")
    sc.add_argument("--benchmark", required=True, choices=["fashioniq", "cirr", "circo"])
    sc.add_argument("--root", required=True, help="benchmark root folder (annotations)")
    sc.add_argument("--split", required=True)
    sc.add_argument("--predictions", required=True, help="predictions JSON file")
    sc.set_defaults(func=_cmd_score)

    tr = sub.add_parser("train", help="train a model; prints the best checkpoint's path last")
    tr.add_argument("--config", help="YAML config (see configs/)")
    tr.add_argument("--out", help="run folder (config, log, checkpoints)")
    tr.add_argument("--data-root", help="override the config's data.root")
    tr.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=3"
    )
    tr.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last epoch")
    tr.add_argument("--stop-after-epoch", type=int, default=0, help=argparse.SUPPRESS)
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate", help="evaluate a checkpoint (metrics for val; submission files for test)"
    )
    ev.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    ev.add_argument("--benchmark", required=True, choices=["fashioniq", "cirr", "circo"])
    ev.add_argument("--root", required=True, help="benchmark root folder")
    ev.add_argument("--split", required=True)
    ev.add_argument("--out", help="folder for submission files (default: next to the checkpoint)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--cache-dir", help="frozen-feature cache (default: <root>/.dqecir-cache)")
    ev.set_defaults(func=_cmd_evaluate)

    de = sub.add_parser("demo", help="the main job: build fmnist, train lite, compare baselines")
    de.add_argument("--data", default="data", help="where benchmarks are built")
    de.add_argument("--out", default="demo", help="results folder")
    de.add_argument("--size", choices=["tiny", "small", "default"], default="default")
    de.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    de.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except DqecirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
