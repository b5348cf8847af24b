"""The Dockerfile: slim base, non-root, health-checked, ports agreeing with compose and
Helm; and its build stage replayed without Docker (the files it copies, after
.dockerignore, build a wheel that holds what `serve` and `migrate` need)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_support import CHART, COMPOSE_FILE, REPO

DOCKERFILE = REPO / "Dockerfile"
Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside continuations, as Docker does
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def stages() -> dict[str, list[Instruction]]:
    """Instructions per build stage, by stage name; the last one is the image."""
    named: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for keyword, arguments in instructions():
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(named))
            current = named.setdefault(name, [])
        if current is not None:
            current.append((keyword, arguments))
    return named


def final_stage() -> list[Instruction]:
    return list(stages().values())[-1]


def values(stage: list[Instruction], keyword: str) -> list[str]:
    return [arguments for k, arguments in stage if k == keyword]


def test_slim_base_images() -> None:
    args = dict(a.split("=", 1) for k, a in instructions() if k == "ARG" and "=" in a)
    for stage in stages().values():
        image = stage[0][1].split()[0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
        assert image.startswith("python:") and image.endswith("-slim"), image
    assert tuple(int(p) for p in args["PYTHON_VERSION"].split(".")) >= (3, 11)


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = values(final_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "Kubernetes' runAsNonRoot needs a numeric uid"
    assert gid.isdigit() and int(gid) != 0
    # The chart runs the pod as the same user (it owns /data in the image).
    yaml = pytest.importorskip("yaml")
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert chart_values["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart_values["podSecurityContext"]["runAsGroup"] == int(gid)


def test_healthcheck_probes_the_service() -> None:
    (check,) = values(final_stage(), "HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[0] == "python" and "/healthz" in argv[-1]
    environment = " ".join(values(final_stage(), "ENV"))
    assert "PACELINE_PORT=8000" in environment
    assert "PACELINE_HOST=0.0.0.0" in environment  # reachable from outside the container


def test_entrypoint_and_ports_agree_with_compose_and_helm() -> None:
    yaml = pytest.importorskip("yaml")
    stage = final_stage()
    assert json.loads(values(stage, "ENTRYPOINT")[0]) == ["paceline-server"]
    assert json.loads(values(stage, "CMD")[0]) == ["serve"]
    exposed = {int(p) for line in values(stage, "EXPOSE") for p in line.split()}
    chart_ports = yaml.safe_load((CHART / "values.yaml").read_text())["containerPorts"]
    assert exposed == {chart_ports["http"], chart_ports["grpc"]}
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["paceline"]
    assert {int(p["target"]) for p in compose["ports"]} == exposed


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over context-relative paths (Go's
    filepath.Match: `*` and `?` stay within a path segment; `**` spans segments)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i:close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: excluded when the path or a parent directory matches a pattern; a
    later `!pattern` re-includes."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def build_context(destination: Path) -> list[str]:
    """Copy what the build stage's COPY lines take from the context, minus ignored files,
    to destination; returns the COPY sources."""
    patterns = dockerignore_patterns()
    sources: list[str] = []
    build = next(iter(stages().values()))
    for arguments in values(build, "COPY"):
        *items, _target = shlex.split(arguments)
        assert not any(i.startswith("--from") for i in items), "build stage copies context only"
        for item in items:
            assert not ignored(item.rstrip("/"), patterns), f".dockerignore excludes {item}"
            sources.append(item.rstrip("/"))
            source = REPO / item
            if source.is_dir():
                for file in source.rglob("*"):
                    relative = file.relative_to(REPO).as_posix()
                    if file.is_file() and not ignored(relative, patterns):
                        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, destination / relative)
            else:
                assert source.is_file(), f"COPY {item}: no such file"
                shutil.copy2(source, destination / item)
    return sources


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/config", ".venv/bin/python", "paceline.db", "service/x/__pycache__/a.pyc",
                 "paceline.egg-info/PKG-INFO", "tests/test_engine.py", "helm/paceline/Chart.yaml"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "service/paceline_server/cli.py",
                 "service/paceline_server/migrations/versions/0001_initial.py",
                 "client/paceline/client.py"):
        assert not ignored(path, patterns), path


@pytest.mark.slow
def test_build_stage_produces_a_complete_wheel(tmp_path: Path) -> None:
    """What `pip install .` sees inside the image builds a wheel with the CLI entry point,
    the Alembic migrations and the gRPC stubs (the image's `migrate` and `serve`)."""
    context = tmp_path / "context"
    context.mkdir()
    assert set(build_context(context)) == {"pyproject.toml", "README.md", "service", "client"}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                             "--wheel-dir", str(tmp_path / "dist"), str(context)],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("paceline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "paceline-server = paceline_server.cli:main" in entry_points
    assert "paceline_server/migrations/env.py" in names
    assert any(n.startswith("paceline_server/migrations/versions/") for n in names)
    assert "paceline_server/grpc/v1/paceline_pb2.py" in names
    assert "paceline/client.py" in names
    assert not any("__pycache__" in n or n.endswith(".db") for n in names)
