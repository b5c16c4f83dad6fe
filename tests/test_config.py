import dataclasses
from pathlib import Path

import pytest

from train.config import doc, parse_config, section
from train.grpo import GRPOConfig


def test_yaml_then_cli_overrides_reach_every_section(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 1.0e-4\nkl_coef: 0.05\nmax_turns: 4\n"
                    "rewards:\n  - {name: f1, weight: 1.0}\n  - {name: judge, weight: 0.2}\n")
    cfg = parse_config(GRPOConfig, ["--config", str(path), "--max_steps", "9", "--estimator", "rloo"])
    assert cfg.max_steps == 9 and cfg.optim.learning_rate == 1e-4 and cfg.loss.kl_coef == 0.05
    assert cfg.rollout.max_turns == 4 and cfg.advantage.estimator == "rloo"
    assert cfg.rewards == '[{"name": "f1", "weight": 1.0}, {"name": "judge", "weight": 0.2}]'
    assert cfg.group_size == GRPOConfig.group_size


def test_a_section_takes_the_entry_points_defaults_and_derived_ones_are_set_once():
    cfg = parse_config(GRPOConfig, [])
    assert cfg.rollout.temperature == 0.3  # GRPO's, where RolloutConfig's own default is 1.0
    assert cfg.rollout.passages_per_search == 2 and cfg.loss.tis_cap == 0.0  # the tiny default's, hf rollouts
    real = parse_config(GRPOConfig, ["--model", "some/model", "--rollout_engine", "vllm"])
    assert real.rollout.passages_per_search == 3 and real.loss.tis_cap == 2.0
    assert parse_config(GRPOConfig, ["--passages_per_search", "5"]).rollout.passages_per_search == 5
    assert GRPOConfig() == cfg


def test_bad_values_are_refused_with_the_field_and_value():
    with pytest.raises(ValueError, match="questions_per_step must be an integer >= 1, got 0"):
        parse_config(GRPOConfig, ["--questions_per_step", "0"])
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16-mixed, bf16, got 'fp16'"):
        parse_config(GRPOConfig, ["--precision", "fp16"])
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        parse_config(GRPOConfig, ["--lr_schedule", "cosin"])


def test_unknown_yaml_field_names_the_file_and_the_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 7\n")
    with pytest.raises(SystemExit, match=r"bad.yaml: unknown field\(s\) \['max_step'\]"):
        parse_config(GRPOConfig, ["--config", str(path)])


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("max_steps: 7\nrewards: [{name: f1\nseed: 1\n")
    with pytest.raises(SystemExit, match=r"broken.yaml:\d+: not valid YAML"):
        parse_config(GRPOConfig, ["--config", str(path)])


def test_missing_config_file(tmp_path):
    with pytest.raises(SystemExit, match="config file not found"):
        parse_config(GRPOConfig, ["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize("entry", ["grpo", "sft"])
def test_help_lists_every_field_of_every_section(entry, capsys):
    from train.config import _flat_fields
    from train.sft import SFTConfig

    cls = {"grpo": GRPOConfig, "sft": SFTConfig}[entry]
    with pytest.raises(SystemExit) as exit_:
        parse_config(cls, ["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for field, _ in _flat_fields(cls):
        assert f"--{field.name}" in out
        assert " ".join(field.metadata["help"].split())[:40] in out


def test_a_percent_sign_in_a_help_text_comes_out_as_written(capsys):
    @dataclasses.dataclass
    class Part:
        share: float = doc("trains on 40% of the tokens", 0.4)

    @dataclasses.dataclass
    class Entry:
        steps: int = doc("steps", 1)
        part: Part = section(Part)

    with pytest.raises(SystemExit):
        parse_config(Entry, ["--help"])
    assert "40% of the tokens" in capsys.readouterr().out
    assert parse_config(Entry, ["--share", "0.2"]).part.share == 0.2


def test_the_config_reference_is_up_to_date():
    """docs/config.md is generated: `python -m train.reference docs/config.md` rewrites it."""
    from train.reference import ENTRY_POINTS, reference_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert page.read_text(encoding="utf-8") == reference_markdown(ENTRY_POINTS), \
        "docs/config.md is stale: run `python -m train.reference docs/config.md`"


def test_an_abbreviated_flag_is_refused_not_taken_for_the_field_it_begins():
    from train.grpo import GRPOConfig

    with pytest.raises(SystemExit, match=r"unknown argument\(s\) --max_step 3"):
        parse_config(GRPOConfig, ["--max_step", "3"])
