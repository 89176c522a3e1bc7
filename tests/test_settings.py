"""Settings: declared once, defaults < environment < flags, errors name the source."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from semcache import ConfigError, Settings
from semcache.settings import add_arguments, specs


def test_precedence_defaults_env_flags() -> None:
    assert Settings.load({}, {}).threshold == 0.85
    env = {"SEMCACHE_THRESHOLD": "0.8", "SEMCACHE_DATA_DIR": "/tmp/x", "SEMCACHE_TTL": "none",
           "SEMCACHE_MAX_BYTES": "64m", "SEMCACHE_SYNC": "off"}
    s = Settings.load({}, env)
    assert (s.threshold, s.data_dir, s.ttl, s.max_bytes, s.sync) == (0.8, Path("/tmp/x"), None,
                                                                     64 << 20, False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--threshold", "0.95"])
    assert Settings.load(args, env).threshold == 0.95


@pytest.mark.parametrize("env, name", [
    ({"SEMCACHE_THRESHOLD": "high"}, "SEMCACHE_THRESHOLD"),
    ({"SEMCACHE_THRESHOLD": "1.5"}, "threshold"),
    ({"SEMCACHE_EVICTION": "fifo"}, "eviction"),
    ({"SEMCACHE_UPSTREAM": "ftp://x"}, "upstream"),
    ({"SEMCACHE_MAX_ENTRIES": "0"}, "max_entries"),
    ({"SEMCACHE_EMBEDDING_BACKEND": "tensorrt"}, "embedding_backend"),
    ({"SEMCACHE_EMBEDDING_BATCH_MAX": "0"}, "embedding_batch_max"),
    ({"SEMCACHE_EMBEDDING_BATCH_WAIT_MS": "-1"}, "embedding_batch_wait_ms"),
])
def test_bad_values_name_the_setting_and_value(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load({}, env)
    assert name in str(info.value) and list(env.values())[0] in str(info.value)


def test_every_field_has_help_and_secrets_are_masked() -> None:
    assert all(s.help for s in specs())
    s = Settings(admin_token="hunter2")
    assert s.public()["admin_token"] == "***" and "hunter2" not in repr(s)


def test_env_file_sits_between_defaults_and_the_environment(tmp_path: Path) -> None:
    from semcache.settings import read_env_file, write_env_file

    env_file = tmp_path / "semcache.env"
    env_file.write_text("# calibrated\nexport SEMCACHE_THRESHOLD=0.93\nSEMCACHE_TTL='none'\n\n")
    s = Settings.load({}, {"SEMCACHE_ENV_FILE": str(env_file)})
    assert (s.threshold, s.ttl, s.env_file) == (0.93, None, env_file)
    assert Settings.load({"env_file": str(env_file)}, {}).threshold == 0.93
    assert Settings.load({}, {"SEMCACHE_ENV_FILE": str(env_file),
                              "SEMCACHE_THRESHOLD": "0.8"}).threshold == 0.8
    assert Settings.load({"env_file": str(env_file), "threshold": "0.97"}, {}).threshold == 0.97
    write_env_file(env_file, {"SEMCACHE_THRESHOLD": "0.955", "SEMCACHE_MAX_ENTRIES": "10"})
    assert env_file.read_text().startswith("# calibrated\nSEMCACHE_THRESHOLD=0.955\n")
    assert read_env_file(env_file) == {"SEMCACHE_THRESHOLD": "0.955", "SEMCACHE_TTL": "none",
                                       "SEMCACHE_MAX_ENTRIES": "10"}
    with pytest.raises(ConfigError, match="SEMCACHE_THRESHOLD"):
        write_env_file(env_file, {"SEMCACHE_THRESHOLD": "high"})


@pytest.mark.parametrize("line, reason", [
    ("SEMCACHE_THRESHOLD", "expected NAME=value"),
    ("SEMCACHE_THRESHOLDS=0.9", "not a semcache setting"),
    ("SEMCACHE_THRESHOLD=high", "cannot parse"),
])
def test_env_file_errors_name_the_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text(f"SEMCACHE_TTL=60\n{line}\n")
    with pytest.raises(ConfigError) as info:
        Settings.load({"env_file": str(env_file)}, {})
    assert f"{env_file}:2" in str(info.value) and reason in str(info.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.load({"env_file": str(tmp_path / "missing.env")}, {})


def test_embedding_defaults_and_the_export_directory() -> None:
    s = Settings.load({}, {"SEMCACHE_DATA_DIR": "/srv/cache"})
    assert (s.embedding_backend, s.embedding_batch_max, s.embedding_batch_wait_ms) == ("auto", 32, 2.0)
    assert s.model_dir == Path("/srv/cache/models")
    moved = Settings.load({}, {"SEMCACHE_EMBEDDING_CACHE_DIR": "/opt/models"})
    assert moved.model_dir == Path("/opt/models")
