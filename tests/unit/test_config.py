from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from sidecar.commands.settings_args import add_settings_flags, settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    return parser.parse_args(argv)


def test_flag_beats_env_beats_yaml_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("listen: 127.0.0.1:1111\npool_size: 7\nmax_window: 300\nrules:\n  - index: 'docs*'\n")
    monkeypatch.setenv("SIDECAR_POOL_SIZE", "8")
    monkeypatch.setenv("SIDECAR_MAX_WINDOW", "400")
    s = settings_from_args(_parse("--config", str(cfg), "--max-window", "500"))
    assert s.listen == "127.0.0.1:1111"  # yaml only
    assert s.pool_size == 8  # env over yaml
    assert s.max_window == 500  # flag over env
    assert s.connect_timeout_s == 5.0  # default
    assert s.rules[0].index == "docs*" and s.rules[0].window_size == 100


def test_config_file_from_env_and_bool_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("compat_media_types: true\n")
    monkeypatch.setenv("SIDECAR_CONFIG", str(cfg))
    assert settings_from_args(_parse()).compat_media_types is True
    assert settings_from_args(_parse("--no-compat-media-types")).compat_media_types is False


def test_unknown_yaml_key_is_a_validation_error_naming_it(tmp_path: Path) -> None:
    """The CLI's table turns it into one line and exit 2 (tests/integration/test_cli.py)."""
    cfg = tmp_path / "s.yaml"
    cfg.write_text("rules:\n  - index: x\n    feilds: [a]\n")
    with pytest.raises(ValidationError, match=r"rules\.0\.feilds"):
        settings_from_args(_parse("--config", str(cfg)))


def test_readme_settings_reference_is_generated_from_the_model() -> None:
    from pathlib import Path

    from sidecar.commands.settings_args import reference_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert block == reference_table(), "regenerate the block with sidecar.commands.settings_args.reference_table()"
