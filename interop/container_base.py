"""Builds and runs the Dockerfile with buildah, without a Docker engine or a registry to pull a base from.

The base image is made locally: ``debootstrap --variant=minbase`` of Debian with python3 and its
venv module, cached as a tarball under the repository's ignored ``.cache/`` and keyed by a hash of
the recipe, then imported into a private buildah store (vfs driver, chroot isolation, its own
``--root``/``--runroot`` and storage.conf, so nothing depends on the machine's container state).

Run ``python -m interop.container_base [--keep DIR]`` to build the image by hand the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BUILDAH: Final = "buildah"
# Where debootstrap lives on Debian; root's PATH has it, a test runner's PATH may not.
_SBIN_DIRS: Final = ("/usr/sbin", "/sbin")
# Debian's bundle of trusted CAs on the host (used by pip inside the build; see import_base_image).
_HOST_CA_CANDIDATES: Final = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
IMAGE_CA_BUNDLE: Final = "/etc/ssl/certs/host-ca-bundle.crt"


class ContainerBuildError(RuntimeError):
    """A step of making the base image, building the Dockerfile or running the image failed."""


@dataclass(frozen=True)
class BaseRecipe:
    """What the local stand-in for ``python:3.12-slim`` is made of: Debian's own python3 + venv."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    # debootstrap checks the suite's Release signature with it (Debian package debian-archive-keyring).
    keyring: str = "/usr/share/keyrings/debian-archive-keyring.gpg"
    # Bump when the way the tarball is made changes (cleaning, tar flags).
    revision: int = 1

    def key(self) -> str:
        text = json.dumps(
            [self.suite, self.mirror, self.variant, sorted(self.packages), self.revision], sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def image_ref(self) -> str:
        return f"localhost/ipfsreg-test-base:{self.key()}"


def default_cache_dir() -> Path:
    """``$IPFSREG_TEST_CACHE`` if set, else ``<repo>/.cache`` (ignored by git)."""
    configured = os.environ.get("IPFSREG_TEST_CACHE")
    return Path(configured) if configured else REPO_ROOT / ".cache"


def find_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if path is None:
        raise ContainerBuildError(
            f"{name} is not installed (Debian package {name!r}; see `make system-deps`)"
        )
    return path


def _run(
    command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, what: str
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerBuildError(f"{what}: no result after {timeout:.0f} s: {' '.join(command)}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout)[-4000:]
        raise ContainerBuildError(f"{what} exited {result.returncode}: {' '.join(command)}\n{tail}")
    return result


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so parallel test runs share one debootstrap instead of racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_rootfs_tarball(recipe: BaseRecipe, cache_dir: Path, *, timeout: float = 900) -> Path:
    """The debootstrapped root filesystem of ``recipe`` as a tarball, made once per recipe and cached."""
    if os.geteuid() != 0:
        raise ContainerBuildError("debootstrap and buildah's chroot isolation need root")
    target = cache_dir / "container" / f"base-{recipe.key()}.tar"
    with _locked(target.with_suffix(".lock")):
        if target.exists():
            return target
        debootstrap = find_tool("debootstrap")
        if not Path(recipe.keyring).is_file():
            raise ContainerBuildError(f"{recipe.keyring} is missing (Debian package debian-archive-keyring)")
        tar = find_tool("tar")
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=target.parent))
        try:
            rootfs = work / "rootfs"
            _run(
                [
                    debootstrap,
                    f"--variant={recipe.variant}",
                    f"--keyring={recipe.keyring}",
                    f"--include={','.join(recipe.packages)}",
                    recipe.suite,
                    str(rootfs),
                    recipe.mirror,
                ],
                timeout=timeout,
                what="debootstrap",
            )
            _clean_rootfs(rootfs)
            partial = work / "rootfs.tar"
            _run(
                [tar, "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
                timeout=300,
                what="tar of the base rootfs",
            )
            os.replace(partial, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _clean_rootfs(rootfs: Path) -> None:
    """Leave out what official Debian images leave out: package lists, .deb caches, the host's resolver."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    resolv = rootfs / "etc" / "resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.write_text("")


def host_ca_bundle() -> Path | None:
    """The host's trusted CA bundle: egress here may go through a TLS proxy whose CA only the host trusts."""
    for candidate in (*_HOST_CA_CANDIDATES, ssl.get_default_verify_paths().openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass
class BuildahStore:
    """A private containers/storage (vfs driver) used only through these helpers."""

    root: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "storage.conf"
        conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.root / "graph"}"\n'
            f'runroot = "{self.root / "run"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(conf),
            "BUILDAH_ISOLATION": "chroot",
            "TMPDIR": str(self._tmp()),
        }

    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(exist_ok=True)
        return tmp

    def command(self, *args: str) -> list[str]:
        return [
            find_tool(BUILDAH),
            "--root",
            str(self.root / "graph"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def run(self, *args: str, timeout: float = 300, what: str | None = None) -> str:
        result = _run(self.command(*args), timeout=timeout, env=self.env, what=what or f"buildah {args[0]}")
        return result.stdout.strip()

    def inspect_image(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("inspect", "--type", "image", ref))
        return data

    def destroy(self) -> None:
        """Remove every container and image, then the store itself."""
        with contextlib.suppress(ContainerBuildError):
            self.run("rm", "--all", timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def import_base_image(store: BuildahStore, tarball: Path, ref: str) -> str:
    """Commit the rootfs tarball as image ``ref`` (config like Debian's images: PATH, LANG, CMD bash).

    The host's CA bundle is added and named by PIP_CERT, so pip inside the build trusts what the
    host trusts; the Dockerfile itself stays unaware of it.
    """
    container = store.run("from", "scratch")
    try:
        mountpoint = store.run("mount", container)
        _run(
            [find_tool("tar"), "--numeric-owner", "--xattrs", "-xpf", str(tarball), "-C", mountpoint],
            timeout=300,
            what="unpacking the base rootfs",
        )
        config = [
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "/bin/bash",
        ]
        bundle = host_ca_bundle()
        if bundle is not None:
            shutil.copyfile(bundle, Path(mountpoint) / IMAGE_CA_BUNDLE.lstrip("/"))
            config += ["--env", f"PIP_CERT={IMAGE_CA_BUNDLE}"]
        store.run("umount", container)
        store.run("config", *config, container)
        store.run("commit", "--rm", container, ref, timeout=600)
    except BaseException:
        with contextlib.suppress(ContainerBuildError):
            store.run("rm", container)
        raise
    return ref


def build_image(
    store: BuildahStore, *, base: str, tag: str, context: Path = REPO_ROOT, timeout: float = 1200
) -> str:
    """``buildah bud`` the Dockerfile in ``context`` from ``base``; returns ``tag``.

    ``--format docker`` keeps HEALTHCHECK (the OCI image config has no field for it).
    """
    store.run(
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
        "--file",
        str(context / "Dockerfile"),
        str(context),
        timeout=timeout,
        what="buildah bud",
    )
    return tag


def run_command(
    store: BuildahStore, container: str, argv: Sequence[str], *, env: dict[str, str] | None = None
) -> list[str]:
    """The ``buildah run`` command line that runs ``argv`` in ``container`` on the host's network.

    ``buildah run`` does not apply the image's ENTRYPOINT: callers pass it (see :func:`entrypoint_argv`).
    """
    options = ["--isolation", "chroot", "--network", "host"]
    for name, value in (env or {}).items():
        options += ["--env", f"{name}={value}"]
    return store.command("run", *options, container, "--", *argv)


def entrypoint_argv(image_config: dict[str, Any], args: Sequence[str] = ()) -> list[str]:
    """What ``docker run IMAGE ARGS...`` executes: ENTRYPOINT followed by ARGS, or by CMD if none."""
    config = image_config["Docker"]["config"]
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(args) if args else list(config.get("Cmd") or [])
    return entrypoint + cmd


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before children (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    order: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop(0)
        for child in sorted(children.get(current, [])):
            order.append(child)
            queue.append(child)
    return order


def signal_innermost(pid: int, signum: int = signal.SIGTERM) -> int | None:
    """Send ``signum`` to the deepest process under ``pid`` (the containerised command, as
    ``docker stop`` signals PID 1); returns its pid, or None if there is none."""
    chain = descendants(pid)
    if not chain:
        return None
    target = chain[-1]
    with contextlib.suppress(ProcessLookupError):
        os.kill(target, signum)
    return target


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def make_image(cache_dir: Path, store: BuildahStore, tag: str = "localhost/ipfsreg:test") -> str:
    """Base tarball (cached) -> base image -> the Dockerfile's image; returns the image tag."""
    recipe = BaseRecipe()
    tarball = base_rootfs_tarball(recipe, cache_dir)
    base = import_base_image(store, tarball, recipe.image_ref())
    return build_image(store, base=base, tag=tag)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build the Dockerfile with buildah from a local Debian base."
    )
    parser.add_argument("--store", type=Path, default=None, help="buildah store dir (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (and the image) afterwards")
    parser.add_argument("--tag", default="localhost/ipfsreg:dev")
    args = parser.parse_args(argv)
    root = args.store or Path(tempfile.mkdtemp(prefix="ipfsreg-buildah-"))
    store = BuildahStore(root)
    started = time.monotonic()
    try:
        tag = make_image(default_cache_dir(), store, args.tag)
        print(f"built {tag} in {time.monotonic() - started:.0f} s")
        if args.keep:
            conf = store.env["CONTAINERS_STORAGE_CONF"]
            print(f"list it: CONTAINERS_STORAGE_CONF={conf} {' '.join(store.command('images'))}")
    finally:
        if not args.keep:
            store.destroy()


if __name__ == "__main__":
    main()
