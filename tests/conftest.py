"""Fixtures shared by several test files."""

import importlib.util
from pathlib import Path

import pytest

from dqecir.config import load_config
from dqecir.data.synthetic import make_benchmark
from dqecir.train import train

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def script_module():
    """Import ``scripts/<name>.py`` (scripts are not a package) and return the module."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
LITE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lite_shapes.yaml"


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(checkpoint, CIRR-layout root)``: the tiny backbone with attribute weights, trained one
    epoch on the tiny shapes benchmark. Shared read-only by the index / search / serve tests."""
    root = tmp_path_factory.mktemp("tiny-trained")
    make_benchmark("shapes", root / "bench", seed=0, size="tiny")
    cfg = load_config(
        TINY_CONFIG,
        [
            f"data.root={root / 'bench' / 'cirr'}",
            f"data.cache_dir={root / 'cache'}",
            "train.epochs=1",
            "model.attribute_weights=gate",
        ],
    )
    return train(cfg, root / "run"), root / "bench" / "cirr"


@pytest.fixture(scope="session")
def lite_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(checkpoint, CIRR-layout root)``: a lite combiner that reads shapes hints (rule 2) and
    corrects its queries' typos (``text_spelling``), trained one epoch on the tiny shapes
    benchmark. Shared read-only by the hint-rule and spelling tests."""
    root = tmp_path_factory.mktemp("lite-trained")
    make_benchmark("shapes", root / "bench", seed=0, size="tiny")
    cfg = load_config(
        LITE_CONFIG,
        [
            f"data.root={root / 'bench' / 'cirr'}",
            f"data.cache_dir={root / 'cache'}",
            "data.make.size=tiny",
            "train.epochs=1",
            "trns.enabled=false",
            "model.backbone_kwargs.text_hints=shapes",
            "model.backbone_kwargs.hint_rule=2",
            "model.backbone_kwargs.text_spelling=true",
        ],
    )
    return train(cfg, root / "run"), root / "bench" / "cirr"
