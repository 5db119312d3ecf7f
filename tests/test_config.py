"""Config: YAML in, overrides, typed errors, resolved YAML round trip."""

from pathlib import Path

import pytest

from dqecir.config import Config, ConfigError, config_from_dict, load_config


def test_yaml_overrides_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nmodel:\n  backbone: tiny\ntrain:\n  epochs: 3\n  betas: [0.9, 0.99]\n")
    cfg = load_config(p, ["train.lr=0.01", "trns.enabled=true", "model.backbone_kwargs.dim=8"])
    assert cfg.model.backbone == "tiny" and cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.trns.enabled is True and cfg.model.backbone_kwargs == {"dim": 8}
    assert cfg.train.betas == (0.9, 0.99)
    again = config_from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg


def test_exponent_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    """YAML 1.1 reads "1e-4" (no dot) as a string; config files and overrides read it as the
    number, in typed and free-form fields alike."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n")
    cfg = load_config(p, ["train.lr_pretrained=1e-4", "loss.temperature=7E-2"])
    assert cfg.train.lr == 3e-4 and cfg.train.lr_pretrained == 1e-4
    assert cfg.loss.temperature == 0.07
    free = load_config(None, ["model.backbone_kwargs.token_dropout=1e-1"])  # a free-form field
    assert free.model.backbone_kwargs == {"token_dropout": 0.1}
    with pytest.raises(ConfigError, match="train.epochs"):  # an integer field is not a float
        load_config(None, ["train.epochs=1e1"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=1e-4x"])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  epoch: 3\n", "unknown key"),
        ("train:\n  epochs: three\n", "train.epochs"),
        ("trns:\n  enabled: 1\n", "trns.enabled"),
        ("model: [1, 2]\n", "model"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=str
)
def test_every_shipped_config_loads(path):
    from dqecir.registry import list_backbones

    cfg = load_config(path)
    assert cfg.model.backbone in list_backbones()
    assert cfg.data.benchmark in ("cirr", "circo", "fashioniq")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  epochs: " + "9" * 5000 + "\n", "invalid YAML: a number has too many digits"),
        ("train:\n  lr: " + "9" * 4000 + "\n", "train.lr: the number is too large for a float"),
    ],
)
def test_numbers_python_cannot_hold_in_a_config_file_name_the_file(tmp_path, text, needle):
    """A 5000-digit integer made PyYAML raise ValueError, a 4000-digit one OverflowError in
    float(): tracebacks of `dqecir train`; now ConfigErrors naming the file and the problem."""
    p = tmp_path / "big.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("9" * 5000, "override train.epochs=...: invalid YAML value: a number has too many"),
        ("[" * 100_000, "override train.epochs=...: invalid YAML value: nested too deeply"),
        ("[1, 2", "override train.epochs=...: invalid YAML value"),
    ],
)
def test_set_values_yaml_cannot_read_are_config_errors(value, needle, tmp_path, capsys):
    """`dqecir train --set KEY=VALUE` with a value PyYAML refuses (or Python cannot hold):
    exit 2 naming the key, not a traceback (RecursionError / ValueError / ParserError)."""
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(None, [f"train.epochs={value}"])
    from dqecir.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    argv = ["train", "--config", str(config), "--out", str(tmp_path / "run")]
    assert main([*argv, "--set", f"train.epochs={value}"]) == 2
    err = capsys.readouterr().err
    assert "override train.epochs=..." in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_training_differences_name_the_keys_that_change_what_a_run_trains():
    from dqecir.config import training_differences

    a = load_config(None, ["trns.enabled=true", "model.backbone_kwargs.width=128"])
    assert training_differences(a, a) == []
    b = load_config(None, ["trns.enabled=true", "model.backbone_kwargs.width=64", "trns.k=4",
                           "train.num_threads=1", "name=other"])  # fmt: skip
    assert training_differences(a, b) == ["model.backbone_kwargs.width", "trns.k"]
    # TRNS off in both: its band does not change what trains
    off = load_config(None, ["trns.qlow=0.9"])
    assert training_differences(off, load_config(None, ["trns.qlow=0.99"])) == []
    assert training_differences(off, load_config(None, ["trns.qlow=0.99", "trns.enabled=true"]))
