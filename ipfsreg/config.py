"""The one typed configuration object: defaults < TOML file < environment (IPFSREG_*) < command-line flags.

Each layer declares its own settings as a frozen dataclass (``ipfsreg/node/settings.py``,
``ipfsreg/registry/settings.py``, ...); :class:`Config` composes them as TOML sections. Field
metadata ``help`` documents every option, and ``ipfsreg config show`` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import platformdirs

if TYPE_CHECKING:
    from ipfsreg.unixfs.importer import ImportOptions

ENV_PREFIX: Final = "IPFSREG_"
CONFIG_FILENAME: Final = "config.toml"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names its source."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("ipfsreg", appauthor=False))


@dataclass(frozen=True)
class StorageSettings:
    verify_reads: bool = field(
        default=False,
        metadata={"help": "re-hash every block read against its CID (LevelDB checksums are always verified)"},
    )


@dataclass(frozen=True)
class ImportSettings:
    profile: str = field(
        default="unixfs-v0-2015",
        metadata={
            "help": "UnixFS import profile (IPIP-499): unixfs-v0-2015 (Kubo's `ipfs add` default) or "
            "unixfs-v1-2025 (CIDv1, raw leaves, 1 MiB chunks, 1024 links); the options below override it"
        },
    )
    chunk_size: int | None = field(
        default=None, metadata={"help": "UnixFS chunk size in bytes (1 .. 1048576); unset: the profile's"}
    )
    cid_version: int | None = field(
        default=None,
        metadata={"help": "0: CIDv0 with dag-pb leaves; 1: CIDv1 with raw leaves; unset: the profile's"},
    )
    max_links: int | None = field(
        default=None, metadata={"help": "most links in a UnixFS file node (2 .. 16384); unset: the profile's"}
    )

    def __post_init__(self) -> None:
        if self.chunk_size is not None and not 1 <= self.chunk_size <= 1024 * 1024:
            raise ConfigError(f"import.chunk_size must be within 1..1048576, got {self.chunk_size}")
        if self.cid_version is not None and self.cid_version not in (0, 1):
            raise ConfigError(f"import.cid_version must be 0 or 1, got {self.cid_version}")
        try:
            self.options()
        except ValueError as exc:
            raise ConfigError(f"import: {exc}") from None

    def options(self) -> ImportOptions:
        """The UnixFS import options these settings describe."""
        from ipfsreg.unixfs.profiles import profile_options

        return profile_options(
            self.profile, chunk_size=self.chunk_size, cid_version=self.cid_version, max_links=self.max_links
        )


_LAYER_SECTIONS: Final = (
    ("api", "ipfsreg.apifile", "ApiSettings"),
    ("node", "ipfsreg.node.settings", "NodeSettings"),
    ("routing", "ipfsreg.node.routing.settings", "RoutingSettings"),
    ("registry", "ipfsreg.registry.settings", "RegistrySettings"),
    ("gateway", "ipfsreg.gateway.settings", "GatewaySettings"),
    ("gc", "ipfsreg.gc", "GcSettings"),
    ("mirror", "ipfsreg.mirror.settings", "MirrorSettings"),
    ("ipns", "ipfsreg.ipns.settings", "IpnsSettings"),
)


def _section_types() -> dict[str, type[Any]]:
    """TOML section name -> settings dataclass, for every layer present in this build."""
    sections: dict[str, type[Any]] = {"storage": StorageSettings, "import": ImportSettings}
    for name, module, attr in _LAYER_SECTIONS:
        try:
            sections[name] = getattr(importlib.import_module(module), attr)
        except ImportError:  # a layer still being built is simply absent
            continue
    return sections


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir, metadata={"help": "data directory"})
    log_level: str = field(default="info", metadata={"help": "one of " + ", ".join(LOG_LEVELS)})
    sections: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=(), compare=False, metadata={"help": ""})

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    def section(self, name: str) -> Any:
        return self.sections[name]

    @property
    def storage(self) -> StorageSettings:
        result: StorageSettings = self.sections["storage"]
        return result

    @property
    def importer(self) -> ImportSettings:
        result: ImportSettings = self.sections["import"]
        return result


T = TypeVar("T")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check or convert ``value`` (from TOML or an environment string) to ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value == "" and len(args) < 2):
            return None
        return _convert(value, args[0], where)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):
            return _convert_tables(value, item_type, where)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, item_type, where) for item in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value).expanduser()
    raise ConfigError(f"{where}: unsupported option type {annotation!r}")


def _convert_tables(value: Any, item_type: type[Any], where: str) -> list[Any]:
    """A list of tables (TOML ``[[section.option]]``; in the environment, a JSON array of objects)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: expected a JSON array of objects: {exc}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of tables, got {value!r}")
    items: list[Any] = []
    for index, item in enumerate(value):
        if dataclasses.is_dataclass(item) and isinstance(item, item_type):
            items.append(item)
            continue
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{index}]: expected a table, got {item!r}")
        items.append(_build(item_type, item, f"{where}[{index}]"))
    return items


def _fields(cls: type[Any]) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    known = _fields(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"{where}: unknown option {name!r} (known: {', '.join(sorted(known))})")
        kwargs[name] = _convert(value, known[name][1], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective config.

    ``overrides`` are command-line values keyed ``"section.option"`` (or ``"log_level"``); ``None``
    values mean "not given". The config file is ``config_file`` if given, else
    ``<data_dir>/config.toml`` when it exists.
    """
    env = os.environ if environ is None else environ
    sections = _section_types()
    layered: dict[str, dict[str, Any]] = {name: {} for name in [*sections, ""]}

    # data_dir decides where the default config file lives, so resolve it first.
    resolved_dir = data_dir if data_dir is not None else env.get(ENV_PREFIX + "DATA_DIR")
    file_data: dict[str, Any] = {}
    path = Path(config_file) if config_file is not None else None
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    if path is None:
        candidate = Path(resolved_dir).expanduser() if resolved_dir else default_data_dir()
        candidate = candidate / CONFIG_FILENAME
        path = candidate if candidate.exists() else None
    if path is None and env.get(ENV_PREFIX + "DEFAULT_CONFIG"):
        # A file read only when it exists and no other config is named: the container image points
        # it at /etc/docker/registry/config.yml, where the reference registry's users mount theirs.
        fallback = Path(env[ENV_PREFIX + "DEFAULT_CONFIG"])
        path = fallback if fallback.is_file() else None
    warnings: list[str] = []
    if path is not None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        if path.suffix in (".yml", ".yaml"):
            file_data, warnings = _from_distribution_yaml(text, path)
        else:
            try:
                file_data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
    for key, value in file_data.items():
        if isinstance(value, dict):
            if key not in sections:
                raise ConfigError(f"{path}: unknown section [{key}] (known: {', '.join(sorted(sections))})")
            layered[key].update(value)
        else:
            layered[""][key] = value

    # Environment: IPFSREG_<SECTION>_<OPTION> and IPFSREG_DATA_DIR / IPFSREG_LOG_LEVEL.
    for section, cls in sections.items():
        for name in _fields(cls):
            var = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
            if var in env:
                layered[section][name] = env[var]
    for name in ("data_dir", "log_level"):
        if ENV_PREFIX + name.upper() in env:
            layered[""][name] = env[ENV_PREFIX + name.upper()]

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section and section not in sections:
            raise ConfigError(f"unknown option {key!r}")
        layered[section][name] = value
    if data_dir is not None:
        layered[""]["data_dir"] = data_dir

    where = str(path) if path else "config"
    built = {name: _build(cls, layered[name], f"{where} [{name}]") for name, cls in sections.items()}
    top = dict(layered[""])
    unknown = set(top) - {"data_dir", "log_level"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level option(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {"sections": built, "warnings": tuple(warnings)}
    if "data_dir" in top:
        kwargs["data_dir"] = _convert(top["data_dir"], Path, "data_dir")
    if "log_level" in top:
        kwargs["log_level"] = _convert(top["log_level"], str, "log_level").lower()
    return Config(**kwargs)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # An inline table: the options that are set (TOML has no null).
        pairs = [
            f"{f.name} = {_toml_value(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if f.init and getattr(value, f.name) is not None
        ]
        return "{" + ", ".join(pairs) + "}"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(config: Config, *, with_help: bool = True) -> str:
    """The effective config as TOML (loadable by :func:`load_config`); ``None`` values are commented out."""
    lines: list[str] = []

    def emit(obj: Any, fields: dict[str, tuple[dataclasses.Field[Any], Any]]) -> None:
        for name, (f, _) in fields.items():
            if with_help and f.metadata.get("help"):
                lines.append(f"# {f.metadata['help']}")
            value = getattr(obj, name)
            if value is None:
                lines.append(f"# {name} =")
            else:
                lines.append(f"{name} = {_toml_value(value)}")

    top = {k: v for k, v in _fields(Config).items() if k not in ("sections", "warnings")}
    emit(config, top)
    for name, settings in config.sections.items():
        lines.append("")
        lines.append(f"[{name}]")
        emit(settings, _fields(type(settings)))
    return "\n".join(lines) + "\n"


# --- distribution (docker registry) config.yml ------------------------------------------------

# distribution key -> ipfsreg option ("section.option", or a top-level option).
DISTRIBUTION_KEYS: Final = {
    "http.addr": "registry.listen",
    "http.tls.certificate": "registry.tls_cert",
    "http.tls.key": "registry.tls_key",
    "auth.htpasswd.path": "registry.htpasswd",
    "auth.htpasswd.realm": "registry.auth_realm",
    "auth.token.realm": "registry.token_realm",
    "auth.token.service": "registry.token_service",
    "auth.token.issuer": "registry.token_issuer",
    "auth.token.rootcertbundle": "registry.token_rootcertbundle",
    "log.level": "log_level",
    "storage.delete.enabled": "registry.delete_enabled",
    "proxy.remoteurl": "registry.upstream",
    "proxy.username": "registry.upstream_username",
    "proxy.password": "registry.upstream_password",
}
# Keys that describe distribution's own storage or process and have no meaning here.
_DISTRIBUTION_NOT_APPLICABLE: Final = ("version",)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _from_distribution_yaml(text: str, path: Path) -> tuple[dict[str, Any], list[str]]:
    """Read the keys of distribution's config.yml that apply; report every other key."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    sections = _section_types()
    data: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in sorted(_flatten(raw).items()):
        target = DISTRIBUTION_KEYS.get(key)
        if target is None:
            if key not in _DISTRIBUTION_NOT_APPLICABLE:
                ignored.append(key)
            continue
        section, _, option = target.rpartition(".")
        if section and (section not in sections or option not in _fields(sections[section])):
            ignored.append(f"{key} (not supported by this build)")
            continue
        if target == "registry.listen" and isinstance(value, str) and value.startswith(":"):
            value = "0.0.0.0" + value  # distribution's ":5000" means every interface
        if target == "log_level" and isinstance(value, str):
            value = {"warn": "warning", "panic": "critical", "fatal": "critical"}.get(value, value)
        if section:
            data.setdefault(section, {})[option] = value
        else:
            data[option] = value
    warnings = [f"{path}: distribution config key {key} is not used by ipfsreg" for key in ignored]
    return data, warnings


EXAMPLE_DATA_DIR: Final = Path("/var/lib/ipfsreg")


def example_toml() -> str:
    """Every option at its default, with its help text: the content of docs/config.example.toml."""
    sections = {name: cls() for name, cls in _section_types().items()}
    header = (
        "# ipfsreg configuration: every option at its default (regenerate with `make docs`).\n"
        "# Put the options you change in <data dir>/config.toml or pass --config FILE.\n"
        "# Each option can also be set as IPFSREG_<SECTION>_<OPTION> in the environment.\n\n"
    )
    return header + render_toml(Config(data_dir=EXAMPLE_DATA_DIR, sections=sections))
