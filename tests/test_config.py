from pathlib import Path

import pytest

from sslseg.config import FinetuneConfig, load_config, parse_overrides, to_yaml
from sslseg.errors import ConfigError


def test_overrides_are_typed_and_nested():
    cfg = load_config(FinetuneConfig, overrides=parse_overrides(["train.epochs=3", "model.frozen=true"]))
    assert cfg.train.epochs == 3 and cfg.model.frozen is True


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key .train.epoch. \(did you mean 'train.epochs'"):
        load_config(FinetuneConfig, overrides=parse_overrides(["train.epoch=3"]))


def test_unknown_key_without_close_match_has_no_guess():
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, overrides={"zzz": 1})
    assert "unknown key 'zzz'" in str(e.value) and "did you mean" not in str(e.value)


def test_bad_value_names_key_and_file(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  label_fraction: 0\n")
    with pytest.raises(ConfigError, match=r"(?s)c.yaml.*data.label_fraction"):
        load_config(FinetuneConfig, f)


def test_missing_and_invalid_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(FinetuneConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(FinetuneConfig, bad)


def test_yaml_round_trip(tmp_path: Path):
    cfg = load_config(FinetuneConfig, overrides=parse_overrides(["data.train=/x", "train.lr=0.01"]))
    f = tmp_path / "saved.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config(FinetuneConfig, f) == cfg


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.epochs"])
