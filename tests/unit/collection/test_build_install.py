"""The built collection tarball holds the collection and its docs but not the checkout's tooling, installs into a
clean collections path, and its modules run from there."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


# What the tarball must hold (the collection and its documentation) and leave out (the checkout's tooling).
SHIPPED = ["LICENSE", "README.md", "CHANGELOG.md", "MANIFEST.json", "FILES.json", "bindep.txt", "requirements.txt",
           "meta/runtime.yml", "meta/execution-environment.yml", "changelogs/changelog.yaml",
           "plugins/modules/domain_migration.py", "plugins/strategy/rolling.py", "plugins/filter/upgrade.py",
           "roles/rolling_upgrade/tasks/main.yml", "playbooks/drain-host.yml", "playbooks/drain_host.yml",
           "plugins/action/rolling_turn.py", "docs/ROLLING.md",
           "inventories/example/hosts.yml", "examples/gitops/.gitlab-ci.yml"]
LEFT_OUT = ["tests", "benchmarks", "scripts", "extensions", ".ci", "reports", ".venv", ".collections", ".git",
            "inventories/lab", "ansible.cfg", "pyproject.toml", "requirements-test.txt", ".ansible-lint", ".yamllint",
            ".gitignore", ".hypothesis", ".pytest_cache", ".ruff_cache"]


def run(argv, cwd, env=None):
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{res.stdout}\n{res.stderr}"
    return res


def test_tarball_installs_and_its_module_runs(tmp_path):
    # A clean environment: no ansible.cfg from the checkout (whose collections_path already holds
    # this collection, so an install would be a no-op), only the copy installed from the tarball.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    run([BIN / "ansible-galaxy", "collection", "build", str(REPO), "--output-path", str(tmp_path)], cwd=tmp_path,
        env=env)
    (tarball,) = tmp_path.glob("hvfleet-drain-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        license_text = tar.extractfile("LICENSE").read().decode()
    assert set(SHIPPED) <= set(names), set(SHIPPED) - set(names)
    leaks = [n for n in names if n in LEFT_OUT or n.startswith(tuple(f"{d}/" for d in LEFT_OUT))
             or "__pycache__" in n or n.endswith(".pyc")]
    assert not leaks, f"build_ignore leaks: {leaks}"
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 3, 29 June 2007" in license_text

    colls = tmp_path / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", str(tarball), "-p", str(colls)], cwd=tmp_path, env=env)
    assert (colls / "ansible_collections" / "hvfleet" / "drain" / "MANIFEST.json").is_file()

    env.update(ANSIBLE_COLLECTIONS_PATH=str(colls), ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
    res = subprocess.run(
        [BIN / "ansible", "localhost", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
         "-m", "hvfleet.drain.domain_migration",
         "-a", "name=no-such-vm uri=test:///default dest_uri=test:///default"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    out = res.stdout
    assert res.returncode != 0 and "FAILED" in out, out + res.stderr
    result = json.loads(out[out.index("=> {") + 3:])
    assert "no-such-vm" in result["msg"], result
    assert "test:///default" in result["msg"], result


def test_installed_playbooks_run_by_their_fully_qualified_names(tmp_path):
    """Every playbook has a name valid as a Python identifier, so that `ansible-playbook hvfleet.drain.NAME` finds it
    once the collection is installed; each hyphenated name only imports its underscore twin."""
    playbooks = sorted(p.stem for p in (REPO / "playbooks").glob("*.yml"))
    fqcn = [name for name in playbooks if name.isidentifier()]
    for name in set(playbooks) - set(fqcn):
        assert name.replace("-", "_") in fqcn, name
        plays = yaml.safe_load((REPO / "playbooks" / f"{name}.yml").read_text())
        assert plays == [{"name": f"Run {name.replace('-', '_')}.yml",
                          "ansible.builtin.import_playbook": f"{name.replace('-', '_')}.yml"}], name
    assert {"drain_host", "undrain_host", "migrate_vm", "rolling_kernel_upgrade", "reconcile"} <= set(fqcn)

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    run([BIN / "ansible-galaxy", "collection", "build", str(REPO), "--output-path", str(tmp_path)], cwd=tmp_path,
        env=env)
    (tarball,) = tmp_path.glob("hvfleet-drain-*.tar.gz")
    colls = tmp_path / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", str(tarball), "-p", str(colls)], cwd=tmp_path, env=env)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    hypervisors:\n      hosts:\n        hv1:\n        hv2:\n")
    env.update(ANSIBLE_COLLECTIONS_PATH=str(colls), ANSIBLE_NOCOLOR="1")
    for name in fqcn:
        res = subprocess.run([BIN / "ansible-playbook", f"hvfleet.drain.{name}", "-i", str(inventory),
                              "--syntax-check", "-e", "target=hv1"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"hvfleet.drain.{name}:\n{res.stdout}\n{res.stderr}"
        assert "playbook: " in res.stdout and str(colls) in res.stdout, res.stdout  # the installed copy ran
    # and one for real: the request check of drain_host refuses a run without a host, before contacting any
    res = subprocess.run([BIN / "ansible-playbook", "hvfleet.drain.drain_host", "-i", str(inventory)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0 and "No hypervisor given" in res.stdout + res.stderr, res.stdout + res.stderr
