"""The package as other people's environments get it: one top-level name, posthog_migrate, whatever else lives there.

The repository keeps the design card's folders (migrate/, adapters/); the wheel must install them as
posthog_migrate and posthog_migrate.adapters, so that a team's own ``adapters`` (or AdapterHub's) and ours
live side by side.
"""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT, cli_environment, make_rows, write_csv


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "-q", "-w", str(out)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        pytest.skip(f"the wheel could not be built here (no package index?): {built.stderr[-500:]}")
    return next(out.glob("posthog_migrate-*.whl"))


def test_the_wheel_installs_one_top_level_package(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"posthog_migrate", next(n for n in top_level if n.endswith(".dist-info"))}, top_level
    assert "posthog_migrate/adapters/csv.py" in names and "posthog_migrate/cli.py" in names
    assert {f"posthog_migrate/capture/{name}.py" for name in ("__init__", "server", "workers", "testing")} <= set(names)
    assert "posthog_migrate/pull/stage.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "posthog-migrate = posthog_migrate.entry:main" in zipfile.ZipFile(built_wheel).read(entry_points).decode()


def test_the_installed_wheel_works_beside_another_top_level_adapters_package(built_wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    # Someone else's top-level `adapters` (AdapterHub's is called that), already installed.
    (packages / "adapters").mkdir()
    (packages / "adapters" / "__init__.py").write_text('OWNER = "someone else"\n')
    # Our dependencies (pyarrow, numpy...) from this test's environment, as a plain path: its .pth files (this
    # checkout's editable install among them) are not read from there, so only the wheel provides posthog_migrate.
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(built_wheel)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert not (packages / "migrate").exists()

    both = subprocess.run(
        [str(python), "-c", "import adapters, posthog_migrate.adapters.csv as ours; "
                            "print(adapters.OWNER, '|', ours.CsvAdapter.name, '|', ours.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert both.returncode == 0, both.stderr
    owner, name, path = (part.strip() for part in both.stdout.split("|"))
    assert (owner, name) == ("someone else", "csv") and path.startswith(str(packages))

    write_csv(tmp_path / "events.csv", make_rows(50))
    for command in ([str(venv / "bin" / "posthog-migrate")], [str(python), "-m", "posthog_migrate"]):
        result = subprocess.run([*command, "run", "events.csv", "--dry-run", "--restart", "-q"], cwd=tmp_path,
                                env=cli_environment(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "50 = 50 + 0 + 0  ✓ balanced" in result.stdout
