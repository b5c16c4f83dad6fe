import pytest

from train.grpo import GRPOConfig
from train.config import parse_config


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 1.0e-4\nrewards:\n  - {name: f1, weight: 1.0}\n  - {name: judge, weight: 0.2}\n")
    cfg = parse_config(GRPOConfig, ["--config", str(path), "--max_steps", "9"])
    assert cfg.max_steps == 9 and cfg.learning_rate == 1e-4
    assert cfg.rewards == '[{"name": "f1", "weight": 1.0}, {"name": "judge", "weight": 0.2}]'
    assert cfg.group_size == GRPOConfig.group_size


def test_unknown_yaml_field_names_the_file_and_the_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 7\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: unknown field\(s\) \['max_step'\]"):
        parse_config(GRPOConfig, ["--config", str(path)])


def test_missing_config_file(tmp_path):
    with pytest.raises(SystemExit, match="config file not found"):
        parse_config(GRPOConfig, ["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("entry", ["grpo", "sft"])
def test_help_lists_every_field_with_its_text(entry, capsys):
    import dataclasses

    from train.sft import SFTConfig

    cls = {"grpo": GRPOConfig, "sft": SFTConfig}[entry]
    with pytest.raises(SystemExit) as exit_:
        parse_config(cls, ["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(cls):
        assert f"--{field.name}" in out
    if entry == "grpo":  # a help text with a percent sign comes out as written
        assert "~40% of the tiny default's groups" in out
