"""Config layering: defaults < TOML file < IPFSREG_* environment < flags, with clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ipfsreg.config import ConfigError, load_config, render_toml


def test_defaults_without_file_or_environment(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path, environ={})
    assert config.data_dir == tmp_path
    assert config.log_level == "info"
    assert config.importer.options().chunk_size == 262144
    assert config.importer.options().cid_version == 0
    assert config.storage.verify_reads is False


def test_file_then_environment_then_flags_override_in_order(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'log_level = "debug"\n[import]\nchunk_size = 1024\ncid_version = 1\n'
    )
    config = load_config(data_dir=tmp_path, environ={})
    assert (config.log_level, config.importer.chunk_size, config.importer.cid_version) == ("debug", 1024, 1)
    env = {"IPFSREG_IMPORT_CHUNK_SIZE": "2048", "IPFSREG_LOG_LEVEL": "warning"}
    config = load_config(data_dir=tmp_path, environ=env)
    assert (config.log_level, config.importer.chunk_size, config.importer.cid_version) == ("warning", 2048, 1)
    config = load_config(
        data_dir=tmp_path, environ=env, overrides={"import.chunk_size": 4096, "log_level": None}
    )
    assert (config.log_level, config.importer.chunk_size) == ("warning", 4096)


def test_import_profile_with_overrides_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[import]\nprofile = "unixfs-v1-2025"\n')
    options = load_config(data_dir=tmp_path, environ={}).importer.options()
    assert (options.cid_version, options.chunk_size, options.max_links) == (1, 1048576, 1024)
    assert options.hamt_estimation == "block" and options.use_raw_leaves
    env = {"IPFSREG_IMPORT_MAX_LINKS": "256", "IPFSREG_IMPORT_CHUNK_SIZE": ""}
    options = load_config(data_dir=tmp_path, environ=env).importer.options()
    assert (options.cid_version, options.chunk_size, options.max_links) == (1, 1048576, 256)


def test_unknown_import_profile_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown import profile 'fast'"):
        load_config(data_dir=tmp_path, environ={"IPFSREG_IMPORT_PROFILE": "fast"})
    with pytest.raises(ConfigError, match="max_links must be"):
        load_config(data_dir=tmp_path, environ={"IPFSREG_IMPORT_MAX_LINKS": "1"})


def test_data_dir_from_environment_locates_its_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[storage]\nverify_reads = true\n")
    config = load_config(environ={"IPFSREG_DATA_DIR": str(tmp_path)})
    assert config.data_dir == tmp_path
    assert config.storage.verify_reads is True


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(data_dir=tmp_path, config_file=tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nosuch]\nx = 1\n", "unknown section"),
        ("[import]\nchunksize = 1\n", "unknown option 'chunksize'"),
        ('[import]\nchunk_size = "big"\n', "expected an integer"),
        ("[import]\nchunk_size = 2000000\n", "chunk_size must be within"),
        ("[import]\ncid_version = 2\n", "cid_version must be 0 or 1"),
        ("[storage]\nverify_reads = 3\n", "expected true or false"),
        ('log_level = "loud"\n', "log_level must be one of"),
        ("bogus = 1\n", "unknown top-level"),
        ("[import\n", "config file"),
    ],
)
def test_bad_config_files_give_specific_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(data_dir=tmp_path, environ={})


def test_bad_environment_value_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[import\]\.chunk_size"):
        load_config(data_dir=tmp_path, environ={"IPFSREG_IMPORT_CHUNK_SIZE": "lots"})


def test_rendered_config_loads_back_to_the_same_values(tmp_path: Path) -> None:
    config = load_config(data_dir=tmp_path, environ={}, overrides={"import.cid_version": 1})
    rendered = render_toml(config)
    assert "[import]" in rendered
    assert "# UnixFS chunk size" in rendered
    (tmp_path / "copy.toml").write_text(rendered)
    again = load_config(config_file=tmp_path / "copy.toml", environ={})
    assert again == config


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: false
http:
  addr: :5001
  headers:
    X-Content-Type-Options: [nosniff]
"""


def test_distribution_config_yml_applies_known_keys_and_reports_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(DISTRIBUTION_CONFIG)
    config = load_config(data_dir=tmp_path, config_file=path, environ={})
    registry = config.section("registry")
    assert registry.listen == "0.0.0.0:5001"
    assert registry.delete_enabled is False
    assert config.log_level == "warning"
    reported = "\n".join(config.warnings)
    for key in (
        "storage.filesystem.rootdirectory",
        "http.headers.X-Content-Type-Options",
        "log.fields.service",
    ):
        assert key in reported
    assert "version" not in reported


def test_distribution_config_with_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("http: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.yml"):
        load_config(data_dir=tmp_path, config_file=path, environ={})


def test_default_config_is_read_only_when_it_exists_and_no_other_is_named(
    tmp_path: Path,
) -> None:
    yml = tmp_path / "etc" / "config.yml"
    env = {"IPFSREG_DEFAULT_CONFIG": str(yml)}
    assert load_config(data_dir=tmp_path / "data", environ=env).section("registry").listen == "0.0.0.0:5000"
    yml.parent.mkdir()
    yml.write_text("http:\n  addr: :5005\n")
    assert load_config(data_dir=tmp_path / "data", environ=env).section("registry").listen == "0.0.0.0:5005"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.toml").write_text('[registry]\nlisten = "127.0.0.1:6000"\n')
    assert load_config(data_dir=tmp_path / "data", environ=env).section("registry").listen == "127.0.0.1:6000"


def test_documented_example_config_lists_every_option_and_loads() -> None:
    from ipfsreg.config import example_toml

    example = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"
    assert example.read_text() == example_toml(), "docs/config.example.toml is stale: run `make docs`"
    config = load_config(config_file=example, environ={})
    assert config.data_dir == Path("/var/lib/ipfsreg")


@dataclass(frozen=True)
class _Rule:
    registry: str
    url: str = ""
    weight: int = 1


@dataclass(frozen=True)
class _Rules:
    rule: list[_Rule] = field(default_factory=list, metadata={"help": "rules"})


@pytest.fixture
def rules_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """A section whose option is a list of tables, as ``[[mirror.upstream]]`` is."""
    import ipfsreg.config as config_module

    real = config_module._section_types
    monkeypatch.setattr(config_module, "_section_types", lambda: {**real(), "rules": _Rules})


@pytest.mark.usefixtures("rules_section")
def test_array_of_tables_builds_one_dataclass_per_table(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[[rules.rule]]\nregistry = "docker.io"\nurl = "https://a"\n\n[[rules.rule]]\nregistry = "quay.io"\n'
    )
    config = load_config(data_dir=tmp_path, environ={})
    assert config.section("rules").rule == [_Rule("docker.io", "https://a"), _Rule("quay.io")]


@pytest.mark.usefixtures("rules_section")
def test_array_of_tables_from_the_environment_is_json(tmp_path: Path) -> None:
    config = load_config(
        data_dir=tmp_path, environ={"IPFSREG_RULES_RULE": '[{"registry": "ghcr.io", "weight": 3}]'}
    )
    assert config.section("rules").rule == [_Rule("ghcr.io", weight=3)]


@pytest.mark.usefixtures("rules_section")
@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"IPFSREG_RULES_RULE": "[{"}, r"rule: expected a JSON array of objects"),
        ({"IPFSREG_RULES_RULE": '["x"]'}, r"rule\[0\]: expected a table"),
        ({"IPFSREG_RULES_RULE": '[{"registry": "a", "bogus": 1}]'}, r"rule\[0\]: unknown option 'bogus'"),
        ({"IPFSREG_RULES_RULE": '[{"url": "a"}]'}, r"rule\[0\]: .*registry"),
        (
            {"IPFSREG_RULES_RULE": '[{"registry": "a", "weight": "w"}]'},
            r"rule\[0\]\.weight: expected an integer",
        ),
    ],
)
def test_bad_tables_name_the_table_and_option(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(data_dir=tmp_path, environ=environ)


@pytest.mark.usefixtures("rules_section")
def test_rendered_tables_load_back_to_the_same_values(tmp_path: Path) -> None:
    tables = '[{"registry": "a", "url": "u"}, {"registry": "b"}]'
    config = load_config(data_dir=tmp_path, environ={"IPFSREG_RULES_RULE": tables})
    (tmp_path / "copy.toml").write_text(render_toml(config))
    assert load_config(config_file=tmp_path / "copy.toml", environ={}) == config
