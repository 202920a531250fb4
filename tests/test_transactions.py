"""Output folders are whole or absent: killed runs, I/O errors, permissions and recorded paths (issue 13).

A run is killed with SIGKILL at a chosen moment (during training, during the save of the crosscoder, during page
writing) by a patch inside a child process; the folder is then checked: a fresh target does not exist, a finished
one is unchanged byte for byte, and the next run removes what the killed one left beside it.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig
from crosscoder.io import MARKER, atomic_dir, load_crosscoder, save_crosscoder
from featgraph.cli import main

KILL_AT = {
    # moment → the patch, run in the child before main(): each ends the process with SIGKILL at that moment
    "training": """
        import torch
        step = torch.optim.Adam.step
        calls = [0]
        def killing_step(self, *a, **k):
            calls[0] += 1
            if calls[0] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(self, *a, **k)
        torch.optim.Adam.step = killing_step
    """,
    "save": """
        import crosscoder.io as io
        real = io.save_file
        def killing_save(tensors, path, *a, **k):
            real(tensors, path, *a, **k)  # the weights are on disk, cfg.json is not
            os.kill(os.getpid(), signal.SIGKILL)
        io.save_file = killing_save
    """,
    "pages": """
        import featgraph.demo as demo
        def killing_html(graph, path, **k):
            Path(path).write_text("<html>half a page")
            os.kill(os.getpid(), signal.SIGKILL)
        demo.write_html = killing_html
    """,
}


def _demo(out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    patch = textwrap.dedent(KILL_AT[kill_at]) if kill_at else ""
    script = "import os, signal, sys\nfrom pathlib import Path\n" + patch + (
        "\nfrom featgraph.cli import main\nsys.exit(main(['demo', '--size', 'tiny', '--out', sys.argv[1], '--quiet']))\n")
    return subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300, env=os.environ.copy())


def _graph():
    from featgraph.graph import FeatureGraph

    return FeatureGraph(["F0", "F1"], {"label": ["a", "b"]}, [0], [1], {"weight": np.array([0.5])}, meta={"measure": "pearson"})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory, tiny_embedded):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = _demo(out)
    assert r.returncode == 0, r.stderr
    return out


def test_killed_demo_leaves_no_folder_and_the_next_run_cleans_up(tmp_path, tiny_embedded):
    out = tmp_path / "demo"
    r = _demo(out, "pages")
    assert r.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-made under the target's name
    assert len(_leftovers(out)) == 1  # the killed run's temporary folder, beside it
    assert _demo(out).returncode == 0
    assert _leftovers(out) == []  # removed by the next run that touched this place
    assert {"graph.json", "graph.html", "summary.json", "crosscoder", MARKER} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("moment", ["training", "save", "pages"])
def test_killed_rerun_leaves_the_finished_folder_unchanged(tmp_path, finished_demo, moment):
    out = tmp_path / "run"
    shutil.copytree(finished_demo, out)
    before = _snapshot(out)
    r = _demo(out, moment)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _snapshot(out) == before  # the old outputs, whole: never a mix of old and new


def test_moved_folder_still_works_and_paths_are_absolute(tmp_path, finished_demo, monkeypatch, capsys):
    """The rule: a path inside the output is recorded relative to it (the folder moves whole), any other absolute."""
    import json

    moved = tmp_path / "elsewhere" / "demo"
    shutil.copytree(finished_demo, moved)
    meta = json.loads((moved / "graph.json").read_text())["graph"]
    assert meta["crosscoders"] == ["crosscoder"]
    monkeypatch.chdir(tmp_path)  # another directory than the one the demo ran in
    assert main(["graph", "prompt", str(moved), "--text", "the little dog was happy", "--out", "prompt", "--quiet"]) == 0
    prompt_meta = json.loads((tmp_path / "prompt" / "graph.json").read_text())["graph"]
    assert prompt_meta["crosscoders"] == [str(moved / "crosscoder")]  # outside the prompt folder: absolute
    other = tmp_path / "sub"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["graph", "prompt", str(tmp_path / "prompt"), "--text", "a big red ball", "--out", "again", "--quiet"]) == 0
    capsys.readouterr()


def test_recorded_model_and_data_paths_are_absolute(tmp_path, monkeypatch):
    from crosscoder.data import DataConfig
    from crosscoder.sources import ModelConfig, config_record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "text.txt").write_text("hello")
    record = config_record(ModelConfig(model="ckpt"), DataConfig(data="text.txt"))
    assert record["model"]["model"] == str(tmp_path / "ckpt") and record["data"]["data"] == str(tmp_path / "text.txt")
    named = config_record(ModelConfig(model="embedded"), DataConfig(data="roneneldan/TinyStories"))
    assert (named["model"]["model"], named["data"]["data"]) == ("embedded", "roneneldan/TinyStories")


# ---- I/O errors: one line, exit 2, before the work where it can be known -----------------------------------------

def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: mode 555 for a normal user; for root, a read-only system folder."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for d in (Path("/sys/fs"), Path("/proc/1")):
        try:
            (d / ".featgraph-probe").mkdir()
        except OSError:
            return d
        shutil.rmtree(d / ".featgraph-probe", ignore_errors=True)
    pytest.skip("no unwritable folder on this machine")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("argv", [
    ["demo", "--size", "tiny", "--quiet", "--out"],
    ["crosscoder", "train", "--size", "tiny", "--steps", "5", "--quiet", "--out"],
])
def test_unwritable_output_fails_first(tmp_path, capsys, argv, monkeypatch):
    import featgraph.demo as demo
    import crosscoder.fitting as fitting

    def never(*a, **k):
        raise AssertionError("the work started before the output location was checked")

    monkeypatch.setattr(demo, "load_inputs", never)
    monkeypatch.setattr("crosscoder.sources.load_inputs", never)
    monkeypatch.setattr(fitting, "fit", never)
    assert main(argv + [str(_unwritable(tmp_path) / "out")]) == 2
    assert "cannot write under" in _one_error_line(capsys)


def test_too_little_disk_space_fails_first(tmp_path, capsys, monkeypatch):
    import featgraph.demo as demo

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 500, 500))
    monkeypatch.setattr(demo, "load_inputs", lambda *a, **k: pytest.fail("work before the space check"))
    assert main(["demo", "--size", "tiny", "--quiet", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "not enough disk space" in line and "500 B free" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_full_mid_write_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, code):
    """A write that fails half-way (the disk filled during the run): one line, and neither the output nor its
    temporary folder remains."""
    import featgraph.export as export

    export.write_json(_graph(), tmp_path / "graph.json")
    real = export._write_rows

    def failing(path, header, rows):
        if path.name == "edges.csv":
            raise OSError(code, os.strerror(code), str(path))
        real(path, header, rows)

    monkeypatch.setattr(export, "_write_rows", failing)
    out = tmp_path / "csv"
    assert main(["export", str(tmp_path / "graph.json"), "--format", "csv", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "edges.csv" in line and os.strerror(code).lower() in line
    assert not out.exists() and _leftovers(out) == []


def test_verbose_shows_the_traceback(tmp_path, capsys):
    assert main(["-v", "export", str(tmp_path / "missing.json"), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# ---- permissions: the user's umask; unreadable is said as unreadable ----------------------------------------------

@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)])
def test_saved_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        save_crosscoder(build_crosscoder(CrosscoderConfig(["a"], 4, 8)), tmp_path / "cc")
        from featgraph.export import write_graphml

        write_graphml(_graph(), tmp_path / "g.graphml")
    finally:
        os.umask(old)
    assert (tmp_path / "cc").stat().st_mode & 0o777 == dir_mode
    for f in ("cfg.json", "crosscoder.safetensors"):  # safetensors alone would write 0600
        assert (tmp_path / "cc" / f).stat().st_mode & 0o777 == file_mode, f
    assert (tmp_path / "g.graphml").stat().st_mode & 0o777 == file_mode


def test_unreadable_weights_are_reported_as_unreadable(tmp_path, monkeypatch):
    from crosscoder.errors import FeatgraphError

    save_crosscoder(build_crosscoder(CrosscoderConfig(["a"], 4, 8)), tmp_path / "cc")
    weights = tmp_path / "cc" / "crosscoder.safetensors"
    if os.geteuid() != 0:
        weights.chmod(0)
    else:  # root reads anything: make the open itself refuse, as it would for another user
        import builtins

        real_open = builtins.open

        def guarded(file, *a, **k):
            if Path(file) == weights:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(FeatgraphError, match="cannot be read \\(permission denied\\)"):
        load_crosscoder(tmp_path / "cc")


# ---- atomic_dir's rules ------------------------------------------------------------------------------------------

def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    g = tmp_path / "graph.json"
    from featgraph.export import write_json

    write_json(_graph(), g)
    assert main(["export", str(g), "--format", "csv", "--out", str(mine)]) == 2
    assert "folder of other files" in _one_error_line(capsys)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_a_live_writers_temporary_folder_is_kept(tmp_path):
    """Leftovers are removed only when their process is gone: two runs on one place do not break each other."""
    target = tmp_path / "out"
    live = tmp_path / f".out.tmp-{os.getpid()}-abc"
    live.mkdir()
    dead_pid = _dead_pid()
    dead = tmp_path / f".out.tmp-{dead_pid}-xyz"
    dead.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    assert live.exists() and not dead.exists() and (target / "x").read_text() == "1"


def test_a_swap_killed_between_its_renames_is_restored(tmp_path):
    target = tmp_path / "out"
    old = tmp_path / f".out.old-{_dead_pid()}-abc"  # the old folder moved aside, the new one never moved in
    old.mkdir()
    (old / "graph.json").write_text("{}")
    with atomic_dir(tmp_path / "other"):
        pass
    assert old.exists()  # another target's run does not touch it
    with atomic_dir(target, keep=True) as tmp:
        assert (tmp / "graph.json").read_text() == "{}"  # restored first, then kept
    assert not old.exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid



def test_quiet_silences_transformers_loading_bar(tmp_path):
    """--quiet: no progress bar at all, transformers' "Loading weights" included (it shows without --quiet)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import build_word_tokenizer

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=2, eos_token_id=3)).save_pretrained(
        tmp_path / "ckpt")
    build_word_tokenizer().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "text.txt").write_text("once upon a time there was a little girl named lily\n" * 200)

    def run(*extra):
        argv = [sys.executable, "-m", "featgraph.cli", "crosscoder", "train", "--model", str(tmp_path / "ckpt"), "--data",
                str(tmp_path / "text.txt"), "--steps", "2", "--n-features", "16", "--context-size", "16", "--no-splice",
                "--out", str(tmp_path / "cc"), *extra]
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        return r.stderr

    assert "Loading weights" in run()
    assert run("--quiet").strip() == ""
