"""durajobs installs beside an application's own typer, and its CLI starts fast on any of them.

typer >= 0.29 converts option values through pydantic (~70 ms a command to import it):
``durajobs._typer_values`` converts the CLI's values without it and leaves other values to typer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import attrs
import typer
from typer.testing import CliRunner

from durajobs import Continuous, Jobs, every

ROOT = Path(__file__).parent.parent


@attrs.define
class Count:
    n: int = 0


def tick(ctx: object) -> None:
    pass


def test_required_dependencies_have_no_upper_bound() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [r for r in project["dependencies"] if any(op in r for op in ("<", "==", "~="))]
    assert pinned == []


def test_commands_convert_their_values_without_pydantic(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    registry = {"tokens": Continuous(state=Count, schedule=every("1 hour"), execute=tick)}
    with Jobs(db, registry) as jobs:
        for n in range(3):
            jobs.continuous("tokens").start(f"user-{n}", Count(n))
    code = f"""
import json, sys
from durajobs.cli import main
db = {str(db)!r}
runs = [
    ["ls", "--kind", "continuous", "--status", "active", "--limit", "2", "--offset", "1"],
    ["show", "continuous", "tokens", "user-0", "-n", "1"],
    ["tail", "-n", "2", "--interval", "0.5"],
    ["stats", "--overdue-after", "60"],
    ["ls", "--limit", "0"],
    ["ls", "--kind", "cron"],
    ["tail", "--interval", "x"],
]
codes = [main(["--db", db, *argv]) for argv in runs]
print(json.dumps({{"codes": codes, "pydantic": "pydantic" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0, 2, 2, 2], "pydantic": False}, out.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "durajobs.cli", "--db", str(db), "ls", "--json", "--limit", "2",
         "--offset", "1", "--kind", "continuous"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert [row["id"] for row in json.loads(listed)] == ["user-1", "user-2"]


def test_importing_the_cli_changes_no_other_typer_app() -> None:
    """An application that imports durajobs (even its CLI module) keeps typer as it is: the
    conversion is installed by the ``durajobs`` command's ``main()`` only."""
    code = (
        "import typer.core; before = typer.core.build_runtime_param; import durajobs.cli; "
        "print(typer.core.build_runtime_param is before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() in ("True", ""), out.stderr  # "" on typer < 0.29 (no such step)


def test_other_values_are_still_typers_own() -> None:
    """What ``_typer_values`` does not convert (a path, a clamp, a bool as text) typer does."""
    from durajobs import _typer_values

    _typer_values.install()  # as the durajobs command's main() does

    app = typer.Typer()
    seen = {}

    @app.command()
    def command(
        where: Path,
        level: Annotated[int, typer.Option(max=3, clamp=True)] = 0,
        loud: Annotated[bool, typer.Option(envvar="LOUD")] = False,
        names: Annotated[list[str] | None, typer.Option("--name")] = None,
    ) -> None:
        seen.update(where=where, level=level, loud=loud, names=names)

    result = CliRunner().invoke(
        app, ["x/y", "--level", "7", "--name", "a", "--name", "b"], env={"LOUD": "yes"}
    )
    assert result.exit_code == 0, result.output
    assert seen == {"where": Path("x/y"), "level": 3, "loud": True, "names": ["a", "b"]}
    assert CliRunner().invoke(app, ["x", "--level", "1.5"]).exit_code == 2
