"""Reliability: fuzzed recipes never crash, big documents are refused fast, concurrent runs and cache
writers do not collide, an unwritable runs folder is a clear error, and planted secrets leak nowhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.core.errors import UserError
from runner.recipe import loading
from runner.runs import rundir

ROOT = Path(__file__).resolve().parent.parent
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # `make fuzz` raises this
VALID = yaml.safe_load((ROOT / "recipes" / "tiny-cpu.yaml").read_text())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["lora", "qlora", "full", "cpu", "flash", "1e-4", "-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_recipes(draw):
    """tiny-cpu with a few random edits: delete, replace, rename or add a key anywhere."""
    import copy

    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        targets = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(targets))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["delete", "replace", "rename", "add"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(path[-1])
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return data


def _load_text(project, text: str):
    path = project / "recipes" / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        loading.load("fuzz")
    except UserError as err:
        assert err.problems and all(str(p) for p in err.problems)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(recipe=mutated_recipes())
def test_mutated_recipes_validate_or_fail_with_a_user_error(project, recipe):
    recipe["name"] = "fuzz"
    _load_text(project, yaml.safe_dump(recipe, allow_unicode=True))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 2000), junk=st.text(max_size=12))
def test_damaged_yaml_text_validates_or_fails_with_a_user_error(project, cut, junk):
    text = (ROOT / "recipes" / "tiny-cpu.yaml").read_text().replace("name: tiny-cpu", "name: fuzz")
    cut %= len(text)
    _load_text(project, text[:cut] + junk + text[cut:])


def test_fuzzing_through_the_cli_exits_2_without_traceback(project):
    (project / "recipes" / "fuzz.yaml").write_text("schema: 1\nname: fuzz\nmodel: [\n  {base: }}\n")
    result = subprocess.run([sys.executable, "-m", "runner", "validate", "fuzz"], capture_output=True, text=True,
                            env=os.environ | {"RECIPE_RUNNER_HOME": str(project)})
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_alias_bomb_and_huge_documents_are_refused_quickly(project, run_cli):
    bomb = "a: &a [" + ",".join(["x"] * 50) + "]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 50) + "]\n" for i in range(8))
    (project / "recipes" / "bomb.yaml").write_text(bomb)
    (project / "recipes" / "huge.yaml").write_text("schema: 1\n" + "x: " + "y" * (2 << 20) + "\n")
    started = time.monotonic()
    code, out, err = run_cli("validate", "bomb", "huge")
    assert code == 2 and "alias bomb" in err and "the limit is 1,048,576" in err
    assert time.monotonic() - started < 5


def test_concurrent_runs_get_distinct_directories(project):
    made, barrier = [], threading.Barrier(8)

    def create():
        barrier.wait()
        made.append(rundir.create("tiny-cpu", "f" * 64).path)

    threads = [threading.Thread(target=create) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


@pytest.mark.model
def test_two_concurrent_trains_of_one_recipe(project, tiny_model_dir):
    """Two `recipe train tiny-cpu` at once on an empty cache: both train, in distinct run directories, and one
    intact prepared-data entry remains (atomic publish; the loser of the race discards its copy)."""
    env = os.environ | {"RECIPE_RUNNER_HOME": str(project), "RECIPE_CACHE_DIR": str(project / "cache"),
                        "RECIPE_RUNS_DIR": str(project / "runs"), "HF_HUB_OFFLINE": "1"}
    (project / "models").symlink_to(tiny_model_dir.parent)
    argv = [sys.executable, "-m", "runner", "train", "tiny-cpu", "train.max_steps=3", "train.save_steps=3"]
    processes = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    runs = [p for p in (project / "runs" / "tiny-cpu").iterdir() if p.name != "latest"]
    assert len(runs) == 2 and all((r / "model" / "adapter_model.safetensors").is_file() for r in runs)
    entries = [p for p in (project / "cache" / "data").iterdir() if not p.name.startswith(".")]
    leftovers = [p for p in (project / "cache" / "data").iterdir() if p.name.startswith(".")]
    assert len(entries) == 1 and not leftovers
    assert all((entries[0] / name).stat().st_size > 0 for name in ("train.jsonl", "val.jsonl", "test.jsonl",
                                                                   "data.json"))


@pytest.mark.model
def test_unwritable_runs_folder_is_a_clear_error_and_earlier_runs_survive(project, tiny_model_dir, run_cli,
                                                                           monkeypatch):
    if os.geteuid() == 0:
        # root ignores permission bits; a runs folder below a regular file cannot be created by anyone
        blocker = project / "not-a-folder"
        blocker.write_text("x")
        monkeypatch.setenv("RECIPE_RUNS_DIR", str(blocker / "runs"))
    else:
        runs = project / "runs"
        runs.mkdir()
        runs.chmod(0o500)
        monkeypatch.setenv("RECIPE_RUNS_DIR", str(runs))
    earlier = project / "earlier-run.txt"
    earlier.write_text("intact")
    (project / "models").symlink_to(tiny_model_dir.parent)
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(project / "cache"))
    code, out, err = run_cli("train", "tiny-cpu")
    assert code == 2 and "cannot create the runs folder" in err and "RECIPE_RUNS_DIR" in err
    assert "Traceback" not in err and earlier.read_text() == "intact"


FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=64m tmpfs "$DISK"
mkdir -p "$DISK/runs/tiny-cpu" && cp -a "$OUT/earlier" "$DISK/runs/tiny-cpu/earlier"
ln -s earlier "$DISK/runs/tiny-cpu/latest"
fill() { dd if=/dev/zero of="$DISK/filler" bs=1M 2>/dev/null; true; }
# 1. the disk is full before the run starts
fill
"$PY" -m runner train tiny-cpu $ARGS >/dev/null 2>"$OUT/setup.err"; echo $? >"$OUT/setup.rc"
ls "$DISK/runs/tiny-cpu" >"$OUT/setup.ls"; readlink "$DISK/runs/tiny-cpu/latest" >"$OUT/setup.latest"
rm "$DISK/filler"
# 2. the disk fills up once the run has saved its first checkpoint
"$PY" -m runner train tiny-cpu $ARGS >/dev/null 2>"$OUT/mid.err" & pid=$!
until ls "$DISK"/runs/tiny-cpu/2*/model/checkpoint-4/trainer_state.json >/dev/null 2>&1 || ! kill -0 $pid 2>/dev/null
do sleep 0.02; done
fill
wait $pid; echo $? >"$OUT/mid.rc"
cp "$DISK"/runs/tiny-cpu/2*/manifest.json "$OUT/mid-manifest.json"
# 3. space is freed: --resume finishes the run
rm "$DISK/filler"
"$PY" -m runner train tiny-cpu $ARGS --resume >/dev/null 2>"$OUT/resume.err"; echo $? >"$OUT/resume.rc"
cp "$DISK"/runs/tiny-cpu/2*/manifest.json "$OUT/resume-manifest.json"
cp "$DISK"/runs/tiny-cpu/2*/metrics.jsonl "$OUT/metrics.jsonl"
cp -a "$DISK/runs/tiny-cpu/earlier" "$OUT/earlier-after"
"""


def _private_mounts_work() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.model
@pytest.mark.skipif(not _private_mounts_work(), reason="making a full disk needs a private mount namespace "
                    "(unshare -m, root), which this machine refuses")
def test_full_disk_is_a_clear_error_earlier_runs_survive_and_resume_finishes(session_dirs, tiny_model_dir, tmp_path):
    """A real full disk (a 64 MiB tmpfs in a private mount namespace, filled with dd): full before the run, the
    half-made run is removed and `latest` is unchanged; full mid-run, the trainer dies, the runner says why and
    how to go on; with space freed, --resume reaches the final step. The earlier run is untouched throughout."""
    out, disk = tmp_path / "out", tmp_path / "disk"
    earlier = out / "earlier"
    (earlier / "model").mkdir(parents=True)
    (earlier / "manifest.json").write_text('{"status": "trained", "note": "an earlier run"}\n')
    (earlier / "model" / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    disk.mkdir()
    env = os.environ | {"DISK": str(disk), "OUT": str(out), "PY": sys.executable, "PYTHONPATH": str(ROOT),
                        "RECIPE_RUNS_DIR": str(disk / "runs"), "RECIPE_CACHE_DIR": str(session_dirs / "cache"),
                        "ARGS": "train.max_steps=24 train.save_steps=4 train.seed=21"}
    subprocess.run(["unshare", "-m", "bash", "-c", FULL_DISK_SCRIPT], env=env, cwd=ROOT, timeout=900, check=True)
    read = lambda name: (out / name).read_text()  # noqa: E731

    assert read("setup.rc").strip() == "2", read("setup.err")[-2000:]
    assert "No space left on device" in read("setup.err") and "RECIPE_RUNS_DIR" in read("setup.err")
    assert "Traceback" not in read("setup.err")
    assert read("setup.ls").split() == ["earlier", "latest"] and read("setup.latest").strip() == "earlier"

    mid = read("mid.err")
    assert read("mid.rc").strip() == "1", mid[-3000:]
    failure = mid.split("failed:")[-1]
    assert "is full; free space there" in failure and "--resume" in failure
    assert "Traceback" not in mid.split("Last lines:")[0].split("failed:")[-1]
    assert json.loads(read("mid-manifest.json"))["status"] in ("training", "failed")  # whole, never half-written

    assert read("resume.rc").strip() == "0", read("resume.err")[-3000:]
    manifest = json.loads(read("resume-manifest.json"))
    assert manifest["status"] == "trained" and manifest["train"]["steps"] == 24
    steps = [json.loads(line)["step"] for line in read("metrics.jsonl").splitlines() if '"loss"' in line]
    assert steps[-1] == 24

    assert (out / "earlier-after" / "manifest.json").read_bytes() == (earlier / "manifest.json").read_bytes()
    assert (out / "earlier-after" / "model" / "adapter_model.safetensors").read_bytes() == \
        (earlier / "model" / "adapter_model.safetensors").read_bytes()


SECRETS = {"HF_TOKEN": "hf_PLANTEDsecretVALUE123", "WANDB_API_KEY": "wandbPLANTEDsecret456",
           "OPENAI_API_KEY": "sk-PLANTEDsecret789"}


@pytest.mark.model
def test_planted_tokens_reach_no_file_under_runs(session_dirs, tiny_model_dir):
    """Train and evaluate with tokens in the environment; no file the runner or its engines wrote contains them."""
    env = os.environ | SECRETS
    for argv in (["train", "tiny-cpu", "train.max_steps=4", "train.seed=11"], ["eval", "tiny-cpu", "train.max_steps=4",
                                                                              "train.seed=11"]):
        result = subprocess.run([sys.executable, "-m", "runner", *argv], env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not any(value in result.stdout + result.stderr for value in SECRETS.values())
    leaks = []
    for root in (session_dirs / "runs", session_dirs / "cache"):
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                content = path.read_bytes()
                leaks += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in content]
    assert leaks == []


def test_written_files_get_the_usual_permissions(tmp_path):
    from runner.core.atomic import write_json_atomic

    mask = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "manifest.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_model_folder_is_built_once_by_concurrent_callers_and_a_failed_build_leaves_nothing(tmp_path, capfd):
    """...and what libraries print while building (GGUF conversion, adapter merge) goes to the build's log."""
    from runner.core.atomic import build_once

    target, calls = tmp_path / "models" / "m", []

    def build(staging: Path) -> None:
        calls.append(staging)
        print("Loading weights: 100%")
        os.write(2, b"Failed to load torchao/_C_mxfp8.so\n")  # a C extension writing to fd 2
        time.sleep(0.2)  # the others wait on the lock meanwhile
        (staging / "config.json").write_text("{}")

    threads = [threading.Thread(target=build_once, args=(target, "building m", build)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and (target / "config.json").is_file()
    assert build_once(target, "building m", build) is False and len(calls) == 1
    terminal = capfd.readouterr()
    assert f"building m (log: {target}.log)" in terminal.err and "Loading" not in terminal.out + terminal.err
    assert "Failed to load" not in terminal.err
    assert "Loading weights: 100%" in Path(f"{target}.log").read_text()
    assert "Failed to load torchao" in Path(f"{target}.log").read_text()

    def broken(staging: Path) -> None:
        (staging / "half.bin").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        build_once(tmp_path / "models" / "other", "building other", broken)
    assert not (tmp_path / "models" / "other").exists()


def test_a_content_addressed_folder_published_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    """The race CI hit: the other process publishes the same prepared-data folder after any existence check of ours
    and before our rename. Ours is discarded, theirs kept, no error (a rename onto a non-empty dir is ENOTEMPTY)."""
    from runner.core.atomic import staging_dir

    target = tmp_path / "cache" / "data" / "abc"
    real_exists = Path.exists
    # An existence check made now answers as it would have a moment before the other process published.
    monkeypatch.setattr(Path, "exists", lambda self, **kw: False if self == target else real_exists(self, **kw))
    with staging_dir(target, keep_existing=True) as staging:
        (staging / "rows.jsonl").write_text("ours\n")
        target.mkdir(parents=True)
        (target / "rows.jsonl").write_text("theirs\n")
    assert (target / "rows.jsonl").read_text() == "theirs\n"
    assert [p.name for p in target.parent.iterdir()] == ["abc"]  # our staging copy is gone
