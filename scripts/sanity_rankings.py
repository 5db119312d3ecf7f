"""Write oracle and random predictions files for an embedded benchmark and score them.

    python scripts/sanity_rankings.py data/fmnist-default

For each layout (CIRR recall file on test1, CIRCO file on test) it writes
``<root>/sanity/{oracle,random}_{cirr,circo}.json`` and prints the metrics of ``dqecir score``
on each: an oracle ranking (every valid target first) must give 100 on every recall; a random
ranking must come close to the chance levels in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from dqecir.data.formats import load_benchmark


def rankings(split, oracle: bool, rng: random.Random, n: int | None) -> dict[str, list[str]]:
    out = {}
    for q in split.queries:
        rest = [g for g in split.gallery if g != q.reference]
        rng.shuffle(rest)
        if oracle:
            gts = [q.target] + [g for g in q.gt if g != q.target]
            rest = gts + [g for g in rest if g not in set(gts)]
        out[q.qid] = rest[:n]
    return out


def main(root: Path) -> None:
    outdir = root / "sanity"
    outdir.mkdir(exist_ok=True)
    for layout, split_name in (("cirr", "test1"), ("circo", "test")):
        split = load_benchmark(layout, root / layout, split_name, resolve_images=False)[0]
        for kind in ("oracle", "random"):
            # CIRR files rank the whole gallery (Recall_subset is derived from the whole
            # submitted list); CIRCO files hold the official 50.
            n = None if layout == "cirr" else 50
            r = rankings(split, kind == "oracle", random.Random(0), n)
            if layout == "cirr":
                payload = {"version": "rc2", "metric": "recall", **r}
            else:
                payload = {k: [int(i) for i in v] for k, v in r.items()}
            path = outdir / f"{kind}_{layout}.json"
            path.write_text(json.dumps(payload))
            res = subprocess.run(
                [sys.executable, "-m", "dqecir.cli", "score", "--benchmark", layout, "--root", str(root / layout),
                 "--split", split_name, "--predictions", str(path)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            m = json.loads(res.stdout)
            keys = [k for k in m if "/" not in k and k != "num_queries"]
            print(f"{root.name} {layout:5s} {kind:6s} " + " ".join(f"{k}={m[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
