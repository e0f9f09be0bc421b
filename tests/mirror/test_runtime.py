"""``ipfsreg mirror config`` and ``mirror stat``: each runtime's files point at this node and parse as the
runtime reads them; the stat command reports a running server's counters."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio

from ipfsreg.cli import main
from ipfsreg.mirror.runtime import RuntimeConfigError, mirror_address, runtime_config

MIRROR = "http://127.0.0.1:5000"


def files(runtime: str, registries: list[str], upstreams: dict[str, str] | None = None) -> dict[str, str]:
    return {f.path: f.content for f in runtime_config(runtime, MIRROR, registries, upstreams).files}


def test_containerd_gets_a_hosts_toml_per_registry_and_a_default() -> None:
    out = files("containerd", ["docker.io", "quay.io"], {"quay.io": "http://127.0.0.1:5001"})
    assert set(out) == {"docker.io/hosts.toml", "quay.io/hosts.toml", "_default/hosts.toml"}
    hub = tomllib.loads(out["docker.io/hosts.toml"])
    assert hub["server"] == "https://registry-1.docker.io"
    assert hub["host"][MIRROR] == {"capabilities": ["pull", "resolve"], "dial_timeout": "1s"}
    assert tomllib.loads(out["quay.io/hosts.toml"])["server"] == "http://127.0.0.1:5001"
    default = tomllib.loads(out["_default/hosts.toml"])
    assert "server" not in default and default["host"][MIRROR]["capabilities"] == ["pull", "resolve"]


@pytest.mark.parametrize("runtime", ["cri-o", "podman"])
def test_crio_and_podman_get_mirror_entries_with_the_registry_in_the_path(runtime: str) -> None:
    (content,) = files(runtime, ["docker.io", "ghcr.io"]).values()
    doc = tomllib.loads(content)
    hub, ghcr = doc["registry"]
    assert (hub["prefix"], hub["location"]) == ("docker.io", "docker.io")
    assert hub["mirror"] == [{"location": "127.0.0.1:5000/docker.io", "insecure": True}]
    assert ghcr["mirror"][0]["location"] == "127.0.0.1:5000/ghcr.io"


def test_docker_gets_registry_mirrors_merged_into_its_daemon_json_and_a_note_on_docker_io() -> None:
    existing = json.dumps({"registry-mirrors": ["https://other"], "log-driver": "local"})
    result = runtime_config("docker", MIRROR, ["docker.io", "quay.io"], existing_daemon_json=existing)
    (daemon,) = result.files
    assert json.loads(daemon.content) == {
        "registry-mirrors": [MIRROR, "https://other"],
        "log-driver": "local",
    }
    assert any("docker.io only" in note for note in result.notes)
    assert any("quay.io" in note for note in result.notes)


@pytest.mark.parametrize("address", ["127.0.0.1:5000", "ftp://x", "http://host/path"])
def test_an_unusable_mirror_address_is_refused(address: str) -> None:
    with pytest.raises(RuntimeConfigError):
        runtime_config("containerd", address, ["docker.io"])
    with pytest.raises(RuntimeConfigError):
        runtime_config("rkt", MIRROR, ["docker.io"])


def test_the_mirror_address_follows_the_registry_listener() -> None:
    assert mirror_address("0.0.0.0:5000", tls=False) == "http://127.0.0.1:5000"
    assert mirror_address("10.1.2.3:443", tls=True) == "https://10.1.2.3:443"


def test_mirror_config_writes_the_files_for_the_configured_upstreams(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.toml").write_text(
        '[registry]\nlisten = "0.0.0.0:5555"\n\n'
        '[[mirror.upstream]]\nregistry = "docker.io"\nurl = "http://127.0.0.1:6000"\n\n'
        '[[mirror.upstream]]\nregistry = "quay.io"\n'
    )
    out = tmp_path / "certs.d"
    argv = [
        "--data",
        str(tmp_path / "data"),
        "mirror",
        "config",
        "--runtime",
        "containerd",
        "--write",
        str(out),
    ]
    assert main(argv) == 0
    hub = tomllib.loads((out / "docker.io" / "hosts.toml").read_text())
    assert hub["server"] == "http://127.0.0.1:6000"
    assert "http://127.0.0.1:5555" in hub["host"]
    assert (out / "quay.io" / "hosts.toml").is_file() and (out / "_default" / "hosts.toml").is_file()


def test_mirror_config_refuses_a_registry_that_is_not_a_host(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            ["--data", str(tmp_path), "mirror", "config", "--runtime", "containerd", "--registry", "library"]
        )
    assert exited.value.code == 1
    assert "not a registry host" in capsys.readouterr().err


async def test_mirror_stat_reports_a_running_servers_counters(serve_node: Any, tmp_path: Path) -> None:
    async with serve_node("stat") as info:
        blob = await trio.run_process(
            [sys.executable, "-m", "ipfsreg", "mirror", "stat", "--json", "--data", str(tmp_path / "stat")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert blob.returncode == 0, blob.stderr
        stat = json.loads(blob.stdout)
        assert stat["bytes"] == {"local": 0, "peer": 0, "upstream": 0}
        table = await trio.run_process(
            [sys.executable, "-m", "ipfsreg", "mirror", "stat", "--data", str(tmp_path / "stat")],
            capture_stdout=True,
            check=False,
        )
        assert b"upstream" in table.stdout and info.api_url
    stopped = await trio.run_process(
        [sys.executable, "-m", "ipfsreg", "mirror", "stat", "--data", str(tmp_path / "stat")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert stopped.returncode == 1 and b"no server is running" in stopped.stderr
