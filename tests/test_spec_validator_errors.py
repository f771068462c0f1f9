"""A plugin validator's error names the option, drops pydantic's prefix and the section dump,
and points at the override that triggered it."""

from __future__ import annotations

import pytest

from ponderlab.core.cli import main as cli_main
from ponderlab.core.errors import SpecError
from ponderlab.core.spec import load_spec

SPEC = """\
task: {name: binary_copy, length: 4}
backbone: {name: lstm, n_layers: 2}
halting:
  name: graves
  max_hops: 3
"""


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(SPEC)
    return path


def test_an_override_that_triggers_a_validator_is_named(spec_file):
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, ["halting.scope=depth"])
    error = info.value
    assert error.path == "halting.max_hops"
    assert error.where == f"override 'halting.scope=depth' (with {spec_file}:5)"
    message = str(error)
    assert message.startswith("override 'halting.scope=depth'")
    assert "max_hops does not apply in depth scope" in message
    assert "Value error" not in message and "{" not in message


def test_a_validator_error_from_the_file_points_at_the_option_line(spec_file):
    spec_file.write_text(SPEC + "  scope: depth\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    assert info.value.path == "halting.max_hops"
    assert info.value.where == f"{spec_file}:5"
    assert "Value error" not in str(info.value) and "{" not in str(info.value)


def test_the_cli_prints_one_clean_line(spec_file, capsys):
    assert cli_main(["validate", str(spec_file), "halting.scope=depth"]) == 2
    err = capsys.readouterr().err.strip()
    assert "halting.max_hops: max_hops does not apply in depth scope" in err
    assert "override 'halting.scope=depth'" in err
    assert "Value error" not in err and "'epsilon'" not in err
