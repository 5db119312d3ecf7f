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
