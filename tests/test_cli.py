"""The `paceline-server` command line on a database: migrate, inspect, export/import,
what-if replay; no database created by a command that only reads; one-line errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import fail, populated, run
from paceline_server.app.service import PacelineService
from paceline_server.cli import main
from paceline_server.settings import Settings
from paceline_server.store import open_store


def test_migrate_then_inspect(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    populated(url)
    table = run("--database-url", url, "inspect", "math")
    assert "curriculum math  seq 12  sampler uniform  weighting fixed" in table
    assert "reward weights: acc=0.750, len=0.250" in table
    rows = table.partition("\nwhy:")[0]  # the explanations follow the table
    lines = {line.split()[0]: line for line in rows.splitlines()[4:]}
    assert set(lines) == {"easy", "hard"}
    assert lines["easy"].split()[2] == "0.600"


def test_export_import_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = populated(url)
    exported = run("--database-url", url, "export", "math")
    lines = [json.loads(line) for line in exported.splitlines()]
    assert lines[0]["type"] == "curriculum" and lines[0]["seq"] == 12
    assert [x["type"] for x in lines[1:]] == ["run"] + ["report"] * 12
    assert [x["seq"] for x in lines[2:]] == list(range(1, 13))
    path = tmp_path / "math.jsonl"
    path.write_text(exported)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert run("--database-url", other, "import", str(path), "--name", "copy") == (
        "created curriculum copy (seq 12): 12 new reports, 0 already present; "
        "1 new runs, 0 already present\n")
    # An existing curriculum is refused unless the import is told to merge ...
    status, err = fail(capsys, "--database-url", other, "import", str(path), "--name", "copy")
    assert status == 2 and err.startswith("error CURRICULUM_EXISTS: ") and "--merge" in err
    # ... and a merge of the same export says that nothing was new.
    assert run("--database-url", other, "import", str(path), "--name", "copy",
               "--merge") == ("merged into curriculum copy (seq 12): 0 new reports, "
                              "12 already present; 0 new runs, 1 already present\n")
    copy = PacelineService(open_store(other), Settings(database_url=other)).engine("copy")
    assert copy.seq == 12
    original = service.engine("math").engine
    assert copy.engine.inspect().distributions == original.inspect().distributions
    # The copy exports as the original did, but for its name and the runs' times.
    again = [json.loads(line) for line in
             run("--database-url", other, "export", "copy").splitlines()]
    assert again[2:] == lines[2:]
    assert again[1] == lines[1]
    assert again[0]["spec"] == {**lines[0]["spec"], "name": "copy"}


def test_import_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=3)
    exported = run("--database-url", url, "export", "math")

    class Stdin:
        buffer = __import__("io").BytesIO(exported.encode())

    monkeypatch.setattr(sys, "stdin", Stdin)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert "created curriculum math (seq 3): 3 new reports" in run(
        "--database-url", other, "import", "-")


def test_replay_what_if(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url)
    text = run("--database-url", url, "replay", "math", "--sampler",
               '{"kind": "fixed_mix", "probabilities": [0.2, 0.8]}', "--every", "4")
    notes = [line for line in text.splitlines() if line.startswith("#")]
    assert notes[0] == ("# what-if replay of math (12 reports): sampler uniform -> "
                        "fixed_mix, weighting fixed -> (the same)")
    assert "Off-policy" in notes[1]
    assert any("TV: total variation" in line for line in notes)
    table = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert table[0][:4] == ["seq", "TV", "easy", "hard"]
    rows = table[1:]
    assert [row[0] for row in rows] == ["0", "4", "8", "12"]
    assert all(float(row[1]) == pytest.approx(0.4) for row in rows)  # TV of .6/.4 vs .2/.8
    assert "0.600->0.200" in text


def test_replay_help_explains_columns_and_off_policy(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Off-policy" in text and "total variation" in text
    assert "not what it would have produced online" in text


def test_errors_are_reported_with_their_code(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    status, err = fail(capsys, "--database-url", url, "inspect", "nope")
    assert status == 2 and err == "error CURRICULUM_NOT_FOUND: curriculum 'nope' not found"
    assert fail(capsys, "--database-url", url, "export", "nope")[0] == 2
    assert fail(capsys, "--database-url", url, "replay", "nope")[0] == 2


@pytest.mark.parametrize("command", [["inspect", "math"], ["export", "math"],
                                     ["replay", "math", "--sampler", "uniform"]])
def test_reading_commands_never_create_a_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """Run from a directory without ./paceline.db (the default), or pointed at a missing
    file: one line naming the file, and no file left behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACELINE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PACELINE_URL", raising=False)
    status, err = fail(capsys, *command)
    assert status == 1
    assert err == (f"error: database {tmp_path / 'paceline.db'} does not exist (choose one "
                   "with --database-url or PACELINE_DATABASE_URL, or a running service "
                   "with --url)")
    missing = tmp_path / "elsewhere" / "c.db"
    status, err = fail(capsys, "--database-url", f"sqlite:///{missing}", *command)
    assert status == 1 and f"database {missing} does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_reading_commands_do_not_migrate(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An existing file without the schema (not a Paceline database, or one never
    migrated) is reported, not migrated behind the user's back."""
    path = tmp_path / "empty.db"
    path.touch()
    status, err = fail(capsys, "--database-url", f"sqlite:///{path}", "inspect", "math")
    assert status == 2 and err.startswith("error SCHEMA_OUTDATED: ")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_import_of_a_missing_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACELINE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PACELINE_URL", raising=False)
    status, err = fail(capsys, "import", "/nonexistent.jsonl")
    assert (status, err) == (1, "error: cannot read /nonexistent.jsonl: No such file or "
                                "directory")
    assert list(tmp_path.iterdir()) == []  # nor did it create a database to import into


def test_import_errors_name_the_line(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=4)
    lines = run("--database-url", url, "export", "math").splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:4], lines[4][:40]]) + "\n")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    status, err = fail(capsys, "--database-url", other, "import", str(broken))
    assert status == 2 and err.startswith("error MALFORMED_BODY: line 5: not valid JSON")
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join(lines[:4]) + "\n")
    status, err = fail(capsys, "--database-url", other, "import", str(truncated))
    assert err == ("error INVALID_REQUEST: the export announces 4 reports but holds 2: it "
                   "is truncated or was edited")
    assert not (tmp_path / "other.db").exists()  # refused before any database was opened


def test_an_import_refused_inside_the_database_leaves_none_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Refusals found once the database is open (a report whose run is in neither the
    file nor the curriculum, a spec over the service's limits) left a new, empty
    database behind; an existing database is kept as it was."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=2)
    lines = run("--database-url", url, "export", "math").splitlines()
    runless = tmp_path / "runless.jsonl"
    runless.write_text("\n".join(line for line in lines if '"run"' not in line
                                 or '"report"' in line) + "\n")
    assert runless.read_text() != "\n".join(lines) + "\n"  # the run lines are gone
    new = tmp_path / "new.db"
    status, err = fail(capsys, "--database-url", f"sqlite:///{new}", "import", str(runless))
    assert status == 2 and err.startswith("error RUN_NOT_FOUND: "), err
    full = tmp_path / "full.jsonl"
    full.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PACELINE_MAX_DISTRIBUTIONS", "1")
    status, err = fail(capsys, "--database-url", f"sqlite:///{new}", "import", str(full))
    assert status == 2 and err.startswith("error INVALID_SPEC: "), err
    assert not any(p.name.startswith("new.db") for p in tmp_path.iterdir())
    status, err = fail(capsys, "--database-url", url, "import", str(full), "--name", "x")
    assert status == 2 and (tmp_path / "c.db").exists()  # an existing one stays


def test_an_import_refused_when_the_database_opens_leaves_none_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With PACELINE_AUTO_MIGRATE=false the file an import creates is not migrated, so
    opening it is refused (SCHEMA_OUTDATED): the empty database it had created stayed,
    and every later command named its missing schema instead of the missing file."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=2)
    export = tmp_path / "e.jsonl"
    export.write_text(run("--database-url", url, "export", "math"))
    monkeypatch.setenv("PACELINE_AUTO_MIGRATE", "false")
    new = tmp_path / "new.db"
    status, err = fail(capsys, "--database-url", f"sqlite:///{new}", "import", str(export))
    assert status == 2 and err.startswith("error SCHEMA_OUTDATED: "), err
    assert not any(p.name.startswith("new.db") for p in tmp_path.iterdir())


def test_import_does_not_migrate_an_existing_database(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command refuses a database whose schema is behind; `import` upgraded it
    silently (it may create a missing one, which it migrates from nothing)."""
    from paceline_server.store.migrate import current_revision, upgrade

    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=2)
    export = tmp_path / "e.jsonl"
    export.write_text(run("--database-url", url, "export", "math"))
    old = f"sqlite:///{tmp_path / 'old.db'}"
    assert upgrade(old, "0006") == "0006"
    status, err = fail(capsys, "--database-url", old, "import", str(export))
    assert status == 2 and err.startswith("error SCHEMA_OUTDATED: "), err
    assert current_revision(old) == "0006"


def test_migrate_refuses_a_database_a_newer_release_migrated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Going back to an older release: `migrate` said "error: CommandError: Can't locate
    revision identified by ..." (an unexpected error, exit status 1); it now says what
    that means and what to do, as `serve` without auto-migration does."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run("--database-url", url, "migrate")
    conn = sqlite3.connect(tmp_path / "c.db")
    with conn:
        conn.execute("UPDATE paceline_alembic_version SET version_num = '9999_future'")
    conn.close()
    status, err = fail(capsys, "--database-url", url, "migrate")
    assert status == 2 and err.startswith(
        "error SCHEMA_OUTDATED: the database schema is at revision 9999_future, which is "
        "newer than this Paceline release knows"), err


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=2)
    status, err = fail(capsys, "--database-url", url, "replay", "math", "--every", "0")
    assert status == 2 and err == "error INVALID_REQUEST: every must be a positive integer; got 0"
    status, err = fail(capsys, "--database-url", url, "replay", "math", "--sampler", "{oops")
    assert status == 1 and err.startswith("error: not a JSON strategy spec: ")
    status, err = fail(capsys, "--database-url", url, "replay", "math", "--sampler", "nope")
    assert status == 2 and err.startswith("error UNKNOWN_STRATEGY: ")


def test_an_unexpected_error_is_one_line_unless_debugging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    populated(url, reports=1)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(PacelineService, "inspect", broken)
    status, err = fail(capsys, "--database-url", url, "inspect", "math")
    assert (status, err) == (1, "error: RuntimeError: disk on fire (--debug shows the "
                                "traceback)")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["--database-url", url, "--debug", "inspect", "math"])


def test_pruned_log_is_neither_exported_nor_replayed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = populated(url, reports=7)
    assert service.store.prune_events("math", 5) == 5
    status, err = fail(capsys, "--database-url", url, "export", "math")
    assert (status, err) == (2, "error CONFLICT: reports 1..5 of curriculum 'math' were "
                                "pruned (PACELINE_PRUNE_EVENTS): an export would not "
                                "rebuild it")
    status, err = fail(capsys, "--database-url", url, "replay", "math")
    assert status == 2 and err.startswith("error CONFLICT: the log holds seq 6 where 1 "
                                          "was due")
    # pruned to nothing: no seq to check, and a replay of 0 reports was printed
    assert service.store.prune_events("math", 7) == 0  # the newest snapshot is at 5
    with service.store.writer("math") as writer:
        writer.put_snapshot(7, service.store.latest_snapshot("math").state)  # type: ignore[union-attr]
    assert service.store.prune_events("math", 7) == 2
    status, err = fail(capsys, "--database-url", url, "replay", "math")
    assert status == 2 and err.startswith("error CONFLICT: the log ends at seq 0 but the "
                                          "curriculum is at seq 7"), err


def test_url_and_database_url_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", "sqlite:///x.db", "inspect", "math", "--url",
              "http://127.0.0.1:9"])
    assert exited.value.code == 2
    assert "not both" in capsys.readouterr().err


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The real process: exit status and stderr as a shell sees them."""
    result = subprocess.run(
        [sys.executable, "-m", "paceline_server", "import", str(tmp_path / "nope.jsonl")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr == f"error: cannot read {tmp_path / 'nope.jsonl'}: No such file " \
                            "or directory\n"
    assert list(tmp_path.iterdir()) == []


def test_postgres_without_schema_refuses_to_start() -> None:
    from paceline_server.api.app import create_app
    from paceline_server.domain.errors import SchemaOutdated
    from support import fresh_pg_schema

    with fresh_pg_schema() as url, pytest.raises(SchemaOutdated, match="paceline-server migrate"):
        create_app(Settings(database_url=url))


def test_postgres_without_schema_is_not_migrated_by_inspect(
        capsys: pytest.CaptureFixture[str]) -> None:
    from support import fresh_pg_schema

    with fresh_pg_schema() as url:
        status, err = fail(capsys, "--database-url", url, "inspect", "math")
        assert status == 2 and err.startswith("error SCHEMA_OUTDATED: ")
        status, err = fail(capsys, "--database-url", url, "inspect", "math")
        assert err.startswith("error SCHEMA_OUTDATED: ")  # still not migrated


@pytest.mark.parametrize(("argv", "where"), [
    (["--port", "70000"], "port"),  # uvicorn logged :70000 and listened on 4464
    (["--grpc-port", "99999"], "grpc_port"),  # served on 99999 mod 65536
    (["--grpc-port", "-1"], "grpc_port"),  # served on 65535
    (["--workers", "0"], "workers"),
])
def test_serve_flags_are_checked_as_their_variables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], where: str
) -> None:
    status, err = fail(capsys, "--database-url", f"sqlite:///{tmp_path / 's.db'}",
                       "serve", *argv)
    assert status == 1 and err.startswith(f"error: invalid setting {where}: "), err
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened


def test_database_url_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = fail(capsys, "--database-url", "mysql://db/x", "inspect", "math")
    assert status == 1 and err.startswith("error: invalid setting database_url: "), err


def test_serve_on_a_busy_port_is_an_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn exits 3 when it cannot bind, the status docs/cli.md gives `repair`."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        capsys.readouterr()
        status = main(["--database-url", f"sqlite:///{tmp_path / 'busy.db'}", "serve",
                       "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.splitlines()[-1] == (f"error: the REST API could not start on 127.0.0.1:{port} "
                                    "(uvicorn's message above says why)")


@pytest.mark.parametrize(("tokens", "says"), [
    ("tok1:write", 'a JSON object, e.g. {"my-token": "write", "ro-token": "read"}'),
    ("{'tok1': 'write'}", "a JSON object"),
    ('{"": "write"}', "invalid setting api_tokens: Value error, token 1 of 1 (0 characters) "
                      "cannot be sent"),
    ('{"ok": "read", " t ": "write"}', "invalid setting api_tokens: Value error, token 2 of 2 "
                                       "(3 characters) cannot"),
    ('{"a\\tb": "read"}', "cannot be sent in an Authorization header"),
    ('{"ok": "read", "s3cret-tok3n": "admin"}',
     "invalid setting api_tokens: Input should be 'read' or 'write'"),
])
def test_unusable_api_tokens_are_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tokens: str, says: str) -> None:
    monkeypatch.setenv("PACELINE_API_TOKENS", tokens)
    status, err = fail(capsys, "--database-url", f"sqlite:///{tmp_path / 't.db'}", "serve")
    assert status == 1 and says in err, err
    # A token is a secret, and this line goes to the log: never shown, even when unusable.
    assert "s3cret" not in err and "' t '" not in err and "'a" not in err, err


@pytest.mark.parametrize(("variable", "value", "where"), [
    # accepted, then every read of a run was 500 INTERNAL (it overflows a timedelta)
    ("PACELINE_RUN_STALE_AFTER_S", "inf", "run_stale_after_s"),
    ("PACELINE_RUN_STALE_AFTER_S", "1e15", "run_stale_after_s"),
    # accepted, then `serve` stopped with "OverflowError: cannot convert float infinity"
    ("PACELINE_RATE_LIMIT_PER_S", "inf", "rate_limit_per_s"),
    # accepted, then `serve` stopped with a ValueError about "Redis URL", no setting named
    ("PACELINE_REDIS_URL", "localhost:6379", "redis_url"),
])
def test_settings_that_break_later_are_refused_at_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, where: str) -> None:
    monkeypatch.setenv(variable, value)
    # `migrate` reads the settings as `serve` does, and ends when it accepts them
    status, err = fail(capsys, "--database-url", f"sqlite:///{tmp_path / 's.db'}", "migrate")
    assert status == 1 and err.startswith(f"error: invalid setting {where}: "), err
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened
