"""The one command line: ``dqecir <command> ...``; each command dispatches to the library.

Heavy imports happen inside each command so that ``dqecir --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from dqecir.errors import DqecirError
from dqecir.registry import BENCHMARKS, EMBEDDED, ENGINES

log = logging.getLogger("dqecir")


class _Lazy:
    """argparse ``choices`` computed when a command line is checked (or ``--help`` shown), so
    that building the parser imports nothing heavy."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self.names = names

    def __contains__(self, value: object) -> bool:
        return value in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the error names the value)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def _sizes() -> list[str]:
    from dqecir.data.synthetic.plan import SIZES

    return list(SIZES)


def _phrasings() -> tuple[str, ...]:
    from dqecir.evaluate import PHRASINGS

    return PHRASINGS


def _cmd_make_benchmark(args: argparse.Namespace) -> int:
    from dqecir.data.synthetic import make_benchmark

    extra = {"train_variants": args.train_variants} if args.train_variants is not None else {}
    summary = make_benchmark(
        args.kind,
        Path(args.out),
        seed=args.seed,
        size=args.size,
        hard_only_train=args.hard_only_train,
        **extra,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dqecir.scoring import has_targets, read_predictions_file, score_predictions

    splits, parsed = read_predictions_file(
        args.benchmark, Path(args.root), args.split, Path(args.predictions)
    )
    if not has_targets(splits):  # a test split: the file is checked, not scored
        print(json.dumps({"valid": True, "scored": False, "num_queries": len(parsed.rankings),
                          "metric": parsed.metric}))  # fmt: skip
        print(
            f"{args.predictions}: valid {args.benchmark} predictions for all "
            f"{len(parsed.rankings)} queries of split {args.split!r}; the split has no targets "
            "here, so submit the file to the benchmark's evaluation server for its scores",
            file=sys.stderr,
        )
        return 0
    print(json.dumps(score_predictions(splits, parsed)))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dqecir.config import ConfigError, load_config
    from dqecir.train import train

    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        given = [f for f, v in (("--set", args.set), ("--config", args.config),
                                ("--data-root", args.data_root), ("--out", args.out)) if v]  # fmt: skip
        if given:
            raise ConfigError(
                f"--resume continues the run in {args.resume} with its own config "
                f"({Path(args.resume) / 'config.yaml'}); {', '.join(given)} would be ignored, so "
                "they are refused. To change the config, start a new run: dqecir train --config "
                f"{Path(args.resume) / 'config.yaml'} --set ... --out NEW_DIR"
            )
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
        phrasings=args.phrasing,
    )
    for p in written:
        log.info("wrote %s", p)
    print(json.dumps(metrics))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from dqecir.ablate import VARIANTS, run_ablation

    res = run_ablation(
        Path(args.config), args.seeds, Path(args.out), overrides=args.set or [],
        variants=args.variants or VARIANTS, split=args.split,
    )  # fmt: skip
    print(Path(args.out) / "ablation.md")
    return 0 if res else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from dqecir.demo import run_demo

    run_demo(
        Path(args.data),
        Path(args.out),
        size=args.size,
        overrides=args.set or [],
        kind=args.kind,
        jobs=args.jobs,
    )
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from dqecir.plot import plot_runs

    done = plot_runs(args.runs, Path(args.out), metrics=args.metrics, columns=args.columns)
    print(done.path)
    return 0


def _qdrant_options(args: argparse.Namespace) -> object:
    """QdrantOptions from ``--url``, ``--collection``, ``--api-key-env`` (and, for the index
    command, ``--qdrant-points``); the API key is read from the named environment variable."""
    import os

    from dqecir.search import QdrantOptions

    if not args.url:
        raise SystemExit("--store qdrant needs --url (http://HOST:6333, a folder or :memory:)")
    return QdrantOptions(
        url=args.url,
        api_key=os.environ.get(args.api_key_env) or None,
        collection=args.collection,
        points=getattr(args, "qdrant_points", "auto"),
        shard_number=getattr(args, "qdrant_shards", None),
        replication_factor=getattr(args, "qdrant_replicas", None),
    )


def _cmd_index(args: argparse.Namespace) -> int:
    from dqecir.distributed import init_distributed, local_device, shutdown
    from dqecir.search import build_index

    env = init_distributed(args.device)  # one shard per process under torchrun
    try:
        report = build_index(
            args.checkpoint,
            Path(args.images),
            Path(args.out),
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=local_device(args.device, env),
            workers=args.workers,
            overwrite=args.overwrite,
            dist=env,
            keep_shards=args.keep_shards,
        )
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume into {args.out}", file=sys.stderr)
        raise
    finally:
        shutdown(env)
    if not env.is_main:
        return 0
    for bad in report.unreadable:
        print(f"unreadable image skipped: {bad['path']}: {bad['error']}", file=sys.stderr)
    out = report.to_dict()
    if args.store == "qdrant":
        from dqecir.search import load_index, open_qdrant, upload_to_qdrant

        options = _qdrant_options(args)
        index = load_index(Path(args.out), verify=False)
        out["qdrant"] = upload_to_qdrant(
            index, open_qdrant(options), options, overwrite=args.overwrite
        )
    print(json.dumps(out))
    return 0


def _engine(args: argparse.Namespace) -> tuple[str, object]:
    """(engine name, options) of the search / serve commands."""
    if args.store == "qdrant" or args.engine == "qdrant":
        if args.engine not in ("exact", "qdrant"):
            raise SystemExit(f"--store qdrant searches in Qdrant; drop --engine {args.engine}")
        return "qdrant", _qdrant_options(args)
    return args.engine, None


def _cmd_search(args: argparse.Namespace) -> int:
    from dqecir.search import Searcher, check_query

    check_query(args.text, args.k)  # the API's rules, before anything is loaded
    engine, options = _engine(args)
    searcher = Searcher.open(
        Path(args.index),
        checkpoint=args.checkpoint,
        engine=engine,
        device=args.device,
        options=options,
    )
    # --image is a file, or an id of the index when no such file exists
    by_id = not Path(args.image).is_file() and args.image in searcher.index
    result = searcher.query(
        args.text, args.k, file=None if by_id else args.image, image_id=args.image if by_id else None,
        keep_reference=args.keep_reference, word_effects=not args.no_word_effects,
    )  # fmt: skip
    if args.json:
        query = {"image": str(result.reference), "text": args.text, "k": args.k,
                 "excluded": list(result.excluded)}  # fmt: skip
        print(json.dumps({"query": query, **result.to_dict()}))
    else:
        print(result.to_text())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dqecir.serve.app import serve

    engine, options = _engine(args)
    serve(
        Path(args.index),
        host=args.host,
        port=args.port,
        checkpoint=args.checkpoint,
        engine=engine,
        device=args.device,
        options=options,
    )
    return 0


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", choices=["local", "qdrant"], default="local",
        help="qdrant: the vectors also live in (index) / are searched in (search, serve) Qdrant",
    )  # fmt: skip
    p.add_argument("--url", help="Qdrant: http(s)://HOST:6333, a local folder, or :memory:")
    p.add_argument("--collection", help="Qdrant collection (default: one named after the index)")
    p.add_argument(
        "--api-key-env", default="QDRANT_API_KEY", help="environment variable with the API key"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dqecir", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    mb = sub.add_parser(
        "make-benchmark",
        help="write an embedded benchmark (shapes or fmnist) in the CIRR and CIRCO layouts",
    )
    mb.add_argument("kind", choices=EMBEDDED, metavar="KIND", help="benchmark kind: %(choices)s")
    mb.add_argument("--out", required=True, help="output folder")
    mb.add_argument("--seed", type=int, default=0)
    mb.add_argument(
        "--size", choices=_Lazy(_sizes), metavar="SIZE", default="default",
        help="%(choices)s (default %(default)s)",
    )  # fmt: skip
    mb.add_argument(
        "--hard-only-train",
        action="store_true",
        help="variant whose train split lists only the hard target (as FashionIQ does)",
    )
    mb.add_argument(
        "--train-variants",
        type=int,
        help="fresh phrasings written per train query (training draws a new one every epoch; "
        "default 8)",
    )
    mb.set_defaults(func=_cmd_make_benchmark)

    sc = sub.add_parser("score", help="score a predictions file with the official protocol")
    sc.add_argument("--benchmark", required=True, choices=BENCHMARKS, metavar="BENCHMARK",
                    help="%(choices)s")  # fmt: skip
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
    ev.add_argument("--benchmark", required=True, choices=BENCHMARKS, metavar="BENCHMARK",
                    help="%(choices)s")  # fmt: skip
    ev.add_argument("--root", required=True, help="benchmark root folder")
    ev.add_argument("--split", required=True)
    ev.add_argument("--out", help="folder for submission files (default: next to the checkpoint)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--cache-dir", help="frozen-feature cache (default: <root>/.dqecir-cache)")
    ev.add_argument(
        "--phrasing",
        nargs="+",
        choices=_Lazy(_phrasings),
        metavar="PHRASING",
        help="%(choices)s: phrasings of the split to score (embedded benchmarks; default: every one present, "
        "others' keys prefixed '<phrasing>:')",
    )
    ev.set_defaults(func=_cmd_evaluate)

    ab = sub.add_parser(
        "ablate", help="baseline | baseline+mask | +AW | +TRNS | full over seeds, with a table"
    )
    ab.add_argument("--config", required=True, help="config of the full method")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ab.add_argument("--out", required=True)
    ab.add_argument("--split", help="split scored (default: the config's test split)")
    ab.add_argument("--variants", nargs="+", help="subset of baseline baseline+mask +AW +TRNS full")
    ab.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    ab.set_defaults(func=_cmd_ablate)

    de = sub.add_parser("demo", help="the main job: build fmnist, train lite, compare baselines")
    de.add_argument("--data", default="data", help="where benchmarks are built")
    de.add_argument("--out", default="demo", help="results folder")
    de.add_argument(
        "--kind",
        default="fmnist",
        choices=["fmnist", "shapes"],
        help="embedded benchmark (configs/lite_<kind>.yaml; default fmnist)",
    )
    de.add_argument("--size", choices=_Lazy(_sizes), metavar="SIZE", default="default")
    de.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    de.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="rows after the first trained in this many processes at once, the CPU threads "
        "shared among them; logs in OUT/runs/<row>/demo.log (default 1: one row at a time)",
    )
    de.set_defaults(func=_cmd_demo)

    pl = sub.add_parser(
        "plot", help="loss terms, TRNS statistics and val metrics of runs against epoch (PNG)"
    )
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run folder, or a folder of runs")
    pl.add_argument("--out", default="runs.png", help="PNG file (default runs.png)")
    pl.add_argument(
        "--metrics", nargs="+", metavar="GLOB",
        help="val metrics to draw, e.g. 'map@*' 'color/*' (default: the overall ones)",
    )  # fmt: skip
    pl.add_argument("--columns", type=int, default=4, help="panels per row")
    pl.set_defaults(func=_cmd_plot)

    ix = sub.add_parser("index", help="embed a folder of images into a search index (resumable)")
    ix.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    ix.add_argument(
        "--images", required=True, help="folder of images (jpg, jpeg, png, webp; recursive)"
    )
    ix.add_argument("--out", required=True, help="index folder")
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ix.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ix.add_argument("--workers", type=int, default=2, help="image decoding threads")
    ix.add_argument("--overwrite", action="store_true", help="replace an index built otherwise")
    ix.add_argument(
        "--keep-shards", action="store_true", help="under torchrun: keep the per-rank shards"
    )
    _store_arguments(ix)
    ix.add_argument(
        "--qdrant-points", choices=["auto", "image", "token"], default="auto",
        help="one Qdrant point per image or per gallery token (auto: per image when Nt = 1)",
    )  # fmt: skip
    ix.add_argument("--qdrant-shards", type=int, help="shards of a new collection (cluster)")
    ix.add_argument("--qdrant-replicas", type=int, help="replication factor of a new collection")
    ix.set_defaults(func=_cmd_index)

    se = sub.add_parser("search", help="search an index with a reference image and a text")
    se.add_argument("--index", required=True, help="index folder")
    se.add_argument("--image", required=True, help="reference image file, or an id of the index")
    se.add_argument("--text", required=True, help='the change, e.g. "make it red"')
    se.add_argument("-k", type=int, default=10)
    se.add_argument("--engine", choices=ENGINES, metavar="ENGINE", default="exact",
                    help="%(choices)s (default %(default)s)")  # fmt: skip
    _store_arguments(se)
    se.add_argument("--checkpoint", help="default: the one the index manifest names")
    se.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    se.add_argument(
        "--keep-reference",
        action="store_true",
        help="keep the reference in the results when it is an index image",
    )
    se.add_argument("--json", action="store_true", help="print JSON")
    se.add_argument(
        "--no-word-effects", action="store_true",
        help="skip the leave-one-word-out effects (they cost one text encoding per word)",
    )  # fmt: skip
    se.set_defaults(func=_cmd_search)

    sv = sub.add_parser("serve", help="HTTP API and web page over an index")
    sv.add_argument("--index", required=True, help="index folder")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--engine", choices=ENGINES, metavar="ENGINE", default="exact",
                    help="%(choices)s (default %(default)s)")  # fmt: skip
    _store_arguments(sv)
    sv.add_argument("--checkpoint", help="default: the one the index manifest names")
    sv.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    sv.set_defaults(func=_cmd_serve)
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
