"""The command line, as a user runs it."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import trimesh

from ai_engine.geometry.splats import read_spz


def run_cli(*args: str, cwd, env_extra=None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_ENGINE_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ai_engine.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_generate_writes_a_mesh_and_a_splat(tmp_path, photo):
    (tmp_path / "cup.png").write_bytes(photo)
    done = run_cli("generate", "cup.png", "-o", "out/cup.glb", "--seed", "7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote out/cup.glb" in done.stdout and "seed 7" in done.stdout
    assert "100%" in done.stderr  # the progress bar ran to the end
    mesh = trimesh.load(io.BytesIO((tmp_path / "out/cup.glb").read_bytes()), file_type="glb",
                        force="mesh")
    assert mesh.is_watertight and len(mesh.faces) > 500
    done = run_cli("generate", "cup.png", "-o", "cup.spz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(read_spz((tmp_path / "cup.spz").read_bytes())) > 1000


def test_generate_reports_a_bad_image_with_its_code(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    done = run_cli("generate", "notes.txt", "-o", "x.stl", cwd=tmp_path)
    assert done.returncode == 1
    assert "imaging.unsupported_format" in done.stderr
    done = run_cli("generate", "notes.txt", "-o", "x.unknown", cwd=tmp_path)
    assert done.returncode != 0 and "--format" in done.stderr


def test_models_lists_what_can_run(tmp_path):
    done = run_cli("models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "silhouette" in done.stdout


def test_worker_without_a_queue_url_explains(tmp_path):
    done = run_cli("worker", cwd=tmp_path)
    assert done.returncode == 2 and "AI_ENGINE_QUEUE_URL" in done.stderr
