"""env.json: every field is collected, and a missing git or CUDA gives None instead of an error."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime

import torch

from specbench_cli import __version__, env, files


def test_sha256_file_streams(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert files.sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    assert files.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()


def test_collect_env_without_git_or_cuda(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git, no nvidia-smi
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["hi"]}\n')

    info = env.collect_env([tiny], [questions], {"seed": 7}, "float32", "cpu")

    json.dumps(info)  # env.json must serialise as is
    assert info["git"] is None and info["gpu"] is None
    assert info["specbench"] == __version__
    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["transformers"] and info["packages"]["numpy"]
    assert info["python"].count(".") == 2
    assert info["cpu_cores"] >= 1 and info["ram_bytes"] > 0
    assert (info["device"], info["dtype"], info["seeds"]) == ("cpu", "float32", {"seed": 7})
    assert datetime.fromisoformat(info["started"]).tzinfo is not None

    [model] = info["models"]
    assert model["name"] == "tiny-random" and model["sha256"] == tiny.sha256
    assert model["params"] == sum(p.numel() for p in tiny.model.parameters())
    assert info["data_files"] == {str(questions): hashlib.sha256(questions.read_bytes()).hexdigest()}


def test_git_commit_and_dirty_flag(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(env, "PACKAGE_DIR", tmp_path)

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert env.git_info() == {"commit": head.strip(), "dirty": False}
    (tmp_path / "notes.txt").write_text("untracked files don't count\n")
    assert env.git_info()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert env.git_info()["dirty"] is True

    # an installed copy outside any checkout: no git info, no error
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # don't find a repo further up
    monkeypatch.setattr(env, "PACKAGE_DIR", outside)
    assert env.git_info() is None
