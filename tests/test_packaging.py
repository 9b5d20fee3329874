"""The package as a wheel installs it (``pip install .`` on a cluster, no checkout): built offline from a copy of the
sources, unpacked outside the repository, it must hold every file the library reads at runtime and point its
defaults at files it has and at folders a user may write to, never into the installed package."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port, launch_env, tiny_args

# What a build reads: setup.py, the package and the folder its ds_configs/ package data comes from.
BUILD_INPUTS = ("setup.py", "megamythos", "ds_configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the sources (the checkout's build/ stays untouched), with no network."""
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp / "src" / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-q", str(tmp / "src"), "-w", str(tmp / "dist")],
                   check=True, capture_output=True, timeout=120)
    (found,) = (tmp / "dist").glob("megamythos-*.whl")
    return found


def test_wheel_holds_every_file_the_library_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # the modules (the Hugging Face export copies model/ and hf/ sources out of the installed package)
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "megamythos").rglob("*.py")}
    assert sources - names == set()
    # the DeepSpeed templates, the trainer's and the launcher's defaults among them, and the typing marker
    templates = {f"megamythos/ds_configs/{p.name}" for p in (REPO / "ds_configs").glob("*.json")}
    assert {"megamythos/ds_configs/cpu-debug.json", "megamythos/ds_configs/single-gpu.json"} <= templates
    assert templates | {"megamythos/py.typed"} <= names


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    """The wheel installed (unpacked, as pip installs a pure-Python wheel) into a folder outside the repository."""
    site = wheel.parent.parent / "site"
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_installed_defaults_are_the_packaged_templates_and_the_working_directory(site, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    probe = """if True:
        import dataclasses, json
        from megamythos.training.arguments import TrainArgs
        from megamythos.training.launch import rank_environment, trainer_defaults
        defaults = {f.name: f.default for f in dataclasses.fields(TrainArgs)}
        print(json.dumps({"ds_config": defaults["ds_config"], "data": defaults["default_data_dir"],
                          "cpu": trainer_defaults([], gpu=False, env={}),
                          "gpu": trainer_defaults(["--seq-length", "128"], gpu=True, env={}),
                          "env": rank_environment({"OMP_NUM_THREADS": "1"}, gpu=False, local_processes=1)}))
    """
    out = subprocess.run([sys.executable, "-c", probe], cwd=work, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    assert Path(found["ds_config"]).is_file() and Path(found["ds_config"]).is_relative_to(site)
    assert found["data"] == "data/default"  # under the working directory, not inside the installed package
    for argv in (found["cpu"], found["gpu"]):
        flags = dict(arg.split("=", 1) for arg in argv)
        assert Path(flags["--ds-config"]).is_file() and Path(flags["--ds-config"]).is_relative_to(site)
        assert all(not Path(flags[f]).is_absolute() for f in ("--save", "--tensorboard-dir", "--metrics-file"))
        assert json.loads(Path(flags["--ds-config"]).read_text()) == json.loads(
            (REPO / "ds_configs" / Path(flags["--ds-config"]).name).read_text())
    assert found["env"] == {"DS_ACCELERATOR": "cpu"}  # no PYTHONPATH or JIT cache pointing into the package


@pytest.mark.launch
def test_installed_launcher_trains_with_its_defaults_outside_the_checkout(site, corpus, tmp_path):
    """``python -m megamythos.training.launch`` is ``bash launchers/pretrain.sh`` for an installed package: its
    defaults (the packaged CPU template, the run folder runs/tiny) work from any directory and write nothing into
    the package."""
    before = sorted(p for p in site.rglob("*"))
    env = {**launch_env(), "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-m", "megamythos.training.launch", "--num-gpus", "1", "--master-port",
                          str(free_port()), *tiny_args(corpus, 1)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "latest").read_text().strip() == "iter_0000001"
    assert (tmp_path / "runs" / "tiny" / "metrics.jsonl").is_file()
    assert sorted(p for p in site.rglob("*")) == before
