"""Bad input to a command ends in one line `error: ...` on stderr and exit status 2, before any
work starts, naming the field, the value and what is allowed; `--debug` shows the traceback."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.fields import ConfigError, allowed, check_fields, doc
from retrieval import cli

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize("argv, message", [
    (["--keep_last", "-1"], "keep_last must be an integer >= 1, got -1"),
    (["--save_every", "0"], "save_every must be an integer >= 1, got 0"),
    (["--group_size", "0"], "group_size must be an integer >= 1, got 0"),
    (["--group_size", "2.5"], "argument --group_size/--group-size: invalid int value: '2.5'"),
    (["--questions_per_step", "0"], "questions_per_step must be an integer >= 1, got 0"),
    (["--top_p", "1.5"], "top_p must be a number in (0, 1], got 1.5"),
    (["--max_stepz", "3"], "unknown argument(s) --max_stepz 3"),
])
def test_grpo_refuses_bad_values_in_one_line(capsys, tmp_path, argv, message):
    from train.grpo import main

    err = one_line_error(capsys, main, argv + ["--output_dir", str(tmp_path / "never")])
    assert message in err
    assert not (tmp_path / "never").exists()  # refused before any work


def test_a_yaml_value_of_the_wrong_type_names_field_and_value(capsys, tmp_path):
    from train.grpo import main

    path = tmp_path / "grpo.yaml"
    path.write_text("group_size: 2.5\n")
    assert one_line_error(capsys, main, ["--config", str(path)]) == "error: group_size must be an integer >= 1, got 2.5"
    path.write_text("max_steps: 3\nrewards: [{name: f1\n")
    assert one_line_error(capsys, main, ["--config", str(path)]).startswith(f"error: {path}:3: not valid YAML")


def test_sft_and_eval_refuse_a_zero_batch_size_in_one_line(capsys, tmp_path):
    from eval.run import main as eval_main
    from train.sft import main as sft_main

    assert "batch_size must be an integer >= 1, got 0" in one_line_error(capsys, sft_main, ["--batch-size", "0"])
    err = one_line_error(capsys, eval_main, ["--policy", "oracle", "--data", "data/world-0", "--out", str(tmp_path),
                                            "--batch-size", "0"])
    assert "argument --batch-size: must be an integer >= 1, got 0" in err


def test_debug_shows_the_traceback(capsys):
    from train.grpo import main

    with pytest.raises(ConfigError, match="keep_last must be an integer >= 1, got -1"):
        cli.run(main, ["--keep_last", "-1", "--debug"])


def test_the_real_command_exits_2_with_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's packages, whichever is installed
    run = subprocess.run([sys.executable, "train/grpo.py", "--save_every", "0"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 2 and run.stderr == "error: save_every must be an integer >= 1, got 0\n", run.stderr


def test_constraints_are_declared_with_the_field_and_checked_generically():
    @dataclasses.dataclass
    class Part:
        share: float = doc("share of tokens", 0.5, gt=0, le=1)
        mode: str = doc("a or b", "a", choices=("a", "b"))
        cap: int | None = doc("at most this many (none = no cap)", None, ge=0)
        on: bool = doc("switch", True)

        def __post_init__(self):
            check_fields(self)

    Part(share=1, cap=0)  # an int where a float is declared is a number
    for bad, message in [({"share": 0.0}, "share must be a number in (0, 1], got 0.0"),
                         ({"share": float("nan")}, "share must be a number in (0, 1], got nan"),
                         ({"mode": "c"}, "mode must be one of a, b, got 'c'"),
                         ({"cap": -1}, "cap must be an integer >= 0 or none, got -1"),
                         ({"cap": True}, "cap must be an integer >= 0 or none, got True"),
                         ({"on": "yes"}, "on must be true or false, got 'yes'")]:
        with pytest.raises(ConfigError) as error:
            Part(**bad)
        assert str(error.value) == message
    assert allowed(int, {"ge": 0, "lt": 5}) == "an integer in [0, 5)"
