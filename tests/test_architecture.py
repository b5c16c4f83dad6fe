"""The import contracts in pyproject.toml hold: layers point one way
(retrieval <- agent <- rewards <- train <- eval), no package has an import cycle, and
the data layer imports nothing above `agent.types`."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(capsys):
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)  # the packages are found from the repository root, as CI runs them
    try:
        code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        os.chdir(cwd)
    assert code == 0, capsys.readouterr().out
