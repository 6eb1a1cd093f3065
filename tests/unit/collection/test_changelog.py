"""Changelog fragments are valid for antsibull-changelog, and CHANGELOG.md is what they make."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHANGELOG = Path(sys.executable).parent / "antsibull-changelog"


def run(argv, cwd):
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_fragments_and_changelog_yaml_pass_the_linters():
    res = run([CHANGELOG, "lint"], REPO)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
    res = run([CHANGELOG, "lint-changelog-yaml", "changelogs/changelog.yaml"], REPO)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_the_linter_refuses_a_bad_fragment(tmp_path):
    shutil.copytree(REPO / "changelogs", tmp_path / "changelogs")
    shutil.copy(REPO / "galaxy.yml", tmp_path)
    (tmp_path / "changelogs" / "fragments" / "bad.yml").write_text("new_stuff:\n  - something\n")
    res = run([CHANGELOG, "lint"], tmp_path)
    assert res.returncode != 0
    assert "bad.yml" in res.stdout and "new_stuff" in res.stdout, res.stdout


def test_changelog_md_is_generated_from_the_fragments():
    res = run([REPO / "scripts" / "changelog", "--check"], REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Release Summary" in (REPO / "CHANGELOG.md").read_text()
