"""The embedded benchmarks ``shapes`` and ``fmnist``, written in the CIRR and CIRCO layouts.

Importing this package registers the benchmark kinds (``registry.EMBEDDED``). How they are
built: docs/benchmarks.md; how to add a kind: docs/extending.md, "Benchmark".

- :mod:`.plan`: splits, size presets, planned images, the definition protocol;
- :mod:`.phrasing` (with :mod:`.vocabulary`): the captions, the phrasebook of both sides;
- :mod:`.queries`: query generation; :mod:`.writers`: the files; :mod:`.build`: the build;
- :mod:`.chance`: chance levels of every metric;
- :mod:`.shapes`, :mod:`.fmnist`: the two kinds.
"""

from __future__ import annotations

from dqecir.data.synthetic import fmnist, shapes  # noqa: F401  (registration)
from dqecir.data.synthetic.build import make_benchmark
from dqecir.data.synthetic.chance import chance_levels
from dqecir.data.synthetic.plan import SIZES

__all__ = ["SIZES", "chance_levels", "make_benchmark"]
