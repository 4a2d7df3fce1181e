"""Settings: precedence, file discovery and the errors a bad configuration gets."""

from __future__ import annotations

import pathlib

import pytest

from wattwise import config, pricing
from wattwise.errors import BadInput, ConfigError


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_env(tmp_path):
    settings = config.load(cwd=tmp_path, env={})
    assert settings.path is None
    for key, spec in config.KEYS.items():
        assert settings.get(key) == spec.default
        assert settings.source(key) == "default"


def test_every_key_is_documented():
    for key, spec in config.KEYS.items():
        assert spec.type and spec.meaning, key


def test_precedence_argument_env_file_default(tmp_path):
    toml = write(tmp_path / "wattwise.toml", 'region = "FRA"\nsample_hz = 5\n')
    env = {"WATTWISE_REGION": "DEU"}

    from_file = config.load(cwd=tmp_path, env={})
    assert from_file.get("region") == "FRA"
    assert from_file.source("region") == f"file:{toml.resolve()}"

    from_env = config.load(cwd=tmp_path, env=env)
    assert from_env.get("region") == "DEU"
    assert from_env.source("region") == "env:WATTWISE_REGION"
    assert from_env.get("sample_hz") == 5.0  # the file still fills what env does not set
    assert from_env.source("ledger") == "default"

    explicit = from_env.with_overrides(region="SWE", pricing=None)
    assert explicit.get("region") == "SWE"
    assert explicit.source("region") == "argument"
    assert explicit.get("pricing") == "onprem"  # None means "not given"
    assert explicit.source("pricing") == "default"


def test_pyproject_table_and_wattwise_toml_wins(tmp_path):
    project = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n[tool.wattwise]\nregion = "gcp:europe-west1"\n',
    )
    settings = config.load(cwd=tmp_path, env={})
    assert settings.get("region") == "gcp:europe-west1"
    assert settings.path == project.resolve()

    write(tmp_path / "wattwise.toml", 'region = "NOR"\n')
    assert config.load(cwd=tmp_path, env={}).get("region") == "NOR"


def test_pyproject_without_table_gives_defaults(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    settings = config.load(cwd=tmp_path, env={})
    assert settings.path is None
    assert settings.source("region") == "default"


def test_explicit_path(tmp_path):
    other = write(tmp_path / "elsewhere.toml", "tariff_per_kwh = 0.3\n")
    settings = config.load(other, env={}, cwd=tmp_path / "missing")
    assert settings.get("tariff_per_kwh") == 0.3
    assert settings.source("tariff_per_kwh") == f"file:{other.resolve()}"


def test_env_pricing_list_and_ledger(tmp_path):
    settings = config.load(
        cwd=tmp_path,
        env={"WATTWISE_PRICING": "onprem, aws:p5.48xlarge", "WATTWISE_LEDGER": "/x/y.db"},
    )
    assert settings.get("pricing") == ["onprem", "aws:p5.48xlarge"]
    assert settings.get("ledger") == "/x/y.db"
    assert settings.source("ledger") == "env:WATTWISE_LEDGER"


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "proj"
    sub.mkdir()
    write(sub / "wattwise.toml", 'intensity_series = "grid.csv"\nledger = "runs.db"\n')
    settings = config.load(cwd=sub, env={})
    assert settings.get("intensity_series") == str(sub.resolve() / "grid.csv")
    assert settings.get("ledger") == str(sub.resolve() / "runs.db")


def test_unknown_key_names_file_key_closest_and_accepted(tmp_path):
    toml = write(tmp_path / "wattwise.toml", 'regoin = "FRA"\n')
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, env={})
    message = str(err.value)
    assert str(toml.resolve()) in message
    assert "'regoin'" in message
    assert "did you mean 'region'" in message
    assert "tariff_per_kwh" in message  # lists what is accepted


@pytest.mark.parametrize(
    ("text", "key", "accepted"),
    [
        ('tariff_per_kwh = "cheap"', "tariff_per_kwh", "a number >= 0"),
        ("tariff_per_kwh = -0.1", "tariff_per_kwh", "a number >= 0"),
        ("hardware_price_usd = -5", "hardware_price_usd", "a number >= 0"),
        ("sample_hz = 0", "sample_hz", "a number > 0"),
        ("service_hours = true", "service_hours", "a number > 0"),
        ("pue = 0.9", "pue", "number >= 1"),
        ("pue = { aws = 0.5 }", "pue.aws", "a number >= 1"),
        ('currency = "euro"', "currency", "ISO-4217"),
        ('pricing = "aws"', "pricing", "provider:instance"),
        ("region = 3", "region", "a non-empty string"),
        (
            '[instances."lab:box"]\ngpus = 8\ngpu = "H100"\nprice_per_hour_usd = -1\n'
            'source = "x"\ndate = "2025-01"',
            "instances.lab:box.price_per_hour_usd",
            "a number >= 0",
        ),
        (
            '[intensities.LAB]\ngco2e_per_kwh = 10\nsource = "meter"\nyear = "recent"',
            "intensities.LAB.year",
            "an integer >= 1900",
        ),
    ],
)
def test_bad_values_name_file_key_and_accepted(tmp_path, text, key, accepted):
    toml = write(tmp_path / "wattwise.toml", text + "\n")
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, env={})
    message = str(err.value)
    assert str(toml.resolve()) in message
    assert repr(key) in message
    assert accepted in message


def test_instance_row_missing_field(tmp_path):
    write(tmp_path / "wattwise.toml", '[instances.box]\ngpus = 1\ngpu = "L4"\n')
    with pytest.raises(ConfigError, match=r"instances\.box lacks 'price_per_hour_usd'"):
        config.load(cwd=tmp_path, env={})


def test_gpu_row_needs_every_number_of_the_spec_table_but_fp16(tmp_path):
    from wattwise import hardware

    numbers = {name: 10.0 for name in hardware.NUMERIC_FIELDS}
    numbers["tdp_w"] = 100.0  # above idle_w
    for missing in hardware.NUMERIC_FIELDS:
        row = "".join(f"{k} = {v}\n" for k, v in numbers.items() if k != missing)
        write(tmp_path / "wattwise.toml", f'[gpus.card]\n{row}source = "s"\ndate = "2025-01"\n')
        if missing == "fp16_tflops":  # optional: the spec takes the bf16 rate
            card = hardware.lookup("card", config.load(cwd=tmp_path, env={}))
            assert card.fp16_tflops == card.bf16_tflops
            continue
        with pytest.raises(ConfigError, match=rf"gpus\.card lacks '{missing}'"):
            config.load(cwd=tmp_path, env={})


def test_unknown_field_inside_a_row(tmp_path):
    write(
        tmp_path / "wattwise.toml",
        '[intensities.LAB]\ngco2e_per_kwh = 10\nsource = "m"\nyear = 2024\nyaer = 2024\n',
    )
    with pytest.raises(ConfigError, match=r"'intensities\.LAB\.yaer'.*did you mean 'year'"):
        config.load(cwd=tmp_path, env={})


def test_non_usd_tariff_needs_its_rate(tmp_path):
    toml = write(tmp_path / "wattwise.toml", 'tariff_per_kwh = 0.25\ncurrency = "eur"\n')
    with pytest.raises(ConfigError) as err:
        config.load(cwd=tmp_path, env={})
    assert str(toml.resolve()) in str(err.value)
    assert "'usd_per_currency'" in str(err.value)

    write(toml, 'tariff_per_kwh = 0.25\ncurrency = "eur"\nusd_per_currency = 1.2\n')
    settings = config.load(cwd=tmp_path, env={})
    assert settings.get("currency") == "EUR"
    assert pricing.tariff_usd_per_kwh(settings) == pytest.approx(0.30)  # 0.25 EUR x 1.2


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"WATTWISE_PRICING.*provider:instance"):
        config.load(cwd=tmp_path, env={"WATTWISE_PRICING": "cheapest"})


def test_invalid_toml(tmp_path):
    toml = write(tmp_path / "wattwise.toml", "region = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        config.load(cwd=tmp_path, env={})
    assert str(toml.resolve()) in str(err.value)


def test_config_file_that_is_not_utf8(tmp_path):
    """Regression: a wattwise.toml saved in another encoding raised UnicodeDecodeError (exit 1,
    traceback) instead of a ConfigError naming the file."""
    toml = tmp_path / "wattwise.toml"
    toml.write_bytes(b'region = "FRA" # \xe9t\xe9\n')  # Latin-1
    with pytest.raises(ConfigError, match="UTF-8") as err:
        config.load(cwd=tmp_path, env={})
    assert str(toml.resolve()) in str(err.value)


def test_overrides_are_checked_too(tmp_path):
    settings = config.load(cwd=tmp_path, env={})
    with pytest.raises(ConfigError, match="'tariff_per_kwh'"):
        settings.with_overrides(tariff_per_kwh=-1)
    with pytest.raises(ConfigError, match=r"'regio'.*did you mean 'region'"):
        settings.with_overrides(regio="FRA")
    with pytest.raises(BadInput):
        settings.get("nonsense")


def test_settings_json_lists_every_key_with_source(tmp_path):
    write(tmp_path / "wattwise.toml", "pue = 1.2\n")
    data = config.load(cwd=tmp_path, env={}).to_json()
    assert set(data["settings"]) == set(config.KEYS)
    assert data["settings"]["pue"] == {"value": 1.2, "source": f"file:{data['file']}"}


def test_defaults_are_not_shared_between_loads(tmp_path):
    first = config.load(cwd=tmp_path, env={})
    first.get("instances")["x:y"] = {}
    assert config.load(cwd=tmp_path, env={}).get("instances") == {}


def test_tool_wattwise_must_be_a_table(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool]\nwattwise = 3\n")
    with pytest.raises(ConfigError, match=r"'tool\.wattwise'"):
        config.load(cwd=tmp_path, env={})


def test_explicit_pyproject_path(tmp_path):
    project = write(tmp_path / "pyproject.toml", '[tool.wattwise]\nregion = "ITA"\n')
    assert config.load(project, env={}).get("region") == "ITA"
