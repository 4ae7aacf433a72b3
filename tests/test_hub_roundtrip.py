"""Hub push/pull round trip (issue #8) against the in-memory test Hub of tests/hub_server.py.

The client side runs in subprocesses: ``HF_ENDPOINT`` is read when huggingface_hub is imported, and the
test process has imported it already (offline). Their sockets can reach 127.0.0.1 only, and their Hub cache
is fresh, so every file they load comes from the test server.
"""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from hub_server import HubServer, git_blob_sha1, last_json_line, run_isolated

# Shared by both client processes: tiny models built deterministically, and the inputs they are run on.
COMMON = """
import json, torch
from transformers import AutoModelForCausalLM

INPUTS = {
    "input_ids": torch.tensor([[5, 17, 299, 42, 7], [3, 299, 8, 299, 1]]),
    "numeric_values": torch.tensor([[0.0, 0.0, 3.25, 0.0, 0.0], [0.0, -1250.0, 0.0, 0.0625, 0.0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]),
}
LORA_TARGETS = ["q_proj", "v_proj"]


def outputs(model):
    with torch.no_grad():
        out = model(**INPUTS)
    return {k: v for k, v in out.items() if torch.is_tensor(v)}


def compare(got, want):
    return {k: bool(torch.equal(got[k], v)) for k, v in want.items()}
"""

PUSH_AND_PULL = """
import causalqwen
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.hub import render_model_card

config = CausalQwenConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=300, num_token_id=299, max_position_embeddings=64,
)
torch.manual_seed(0)
model = CausalQwenForNumericCausalLM(config).eval()
metrics = {"eval_loss": 2.71828, "eval_num_mae": 0.125, "eval_samples": 64}
commit = model.push_to_hub("tiny-causal-qwen", metrics=metrics, tags=["unit-test"])

model.save_pretrained("via_save", push_to_hub=True, repo_id="tester/via-save", commit_message="from save_pretrained")

# The package's own load of a local save is the reference (same memory-mapped weights as a download).
model.save_pretrained("local")
reference = outputs(CausalQwenForNumericCausalLM.from_pretrained("local").eval())
torch.save(reference, "reference.pt")

pulled = AutoModelForCausalLM.from_pretrained("tester/tiny-causal-qwen").eval()
pulled_class, pulled_equal = type(pulled).__name__, compare(outputs(pulled), reference)

# LoRA adapter on the pulled base (get_peft_model wraps it in place); B is perturbed so that the adapter changes the outputs.
torch.manual_seed(1)
lora = get_peft_model(pulled, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS)).eval()
with torch.no_grad():
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            parameter.normal_(0, 0.5)
lora.push_to_hub("tiny-lora")
lora_metrics = {"eval_loss": 1.5, "eval_accuracy": 0.75}
render_model_card(lora, metrics=lora_metrics, repo_id="tester/tiny-lora", base_model="tester/tiny-causal-qwen").push_to_hub(
    "tester/tiny-lora"
)
lora.save_pretrained("local_lora")
base_for_reference = CausalQwenForNumericCausalLM.from_pretrained("local").eval()
lora_reference = outputs(PeftModel.from_pretrained(base_for_reference, "local_lora").eval())
torch.save(lora_reference, "lora_reference.pt")

fresh_base = AutoModelForCausalLM.from_pretrained("tester/tiny-causal-qwen").eval()
lora_pulled = PeftModel.from_pretrained(fresh_base, "tester/tiny-lora").eval()

card = ModelCard.load("tester/tiny-causal-qwen")
print(json.dumps({
    "commit_oid": commit.oid,
    "pulled_class": pulled_class,
    "pulled_equal": pulled_equal,
    "original_max_diff": max(float((v - reference[k]).abs().max()) for k, v in outputs(model).items()),
    "lora_changes_outputs": not torch.equal(lora_reference["logits"], reference["logits"]),
    "lora_equal": compare(outputs(lora_pulled), lora_reference),
    "card_tags": card.data.tags,
}))
"""

PULL_WITHOUT_PACKAGE = """
from peft import PeftModel

try:
    import causalqwen
    raise SystemExit("causalqwen must not be importable here")
except ModuleNotFoundError:
    pass
model = AutoModelForCausalLM.from_pretrained("tester/tiny-causal-qwen", trust_remote_code=True).eval()
lora = PeftModel.from_pretrained(
    AutoModelForCausalLM.from_pretrained("tester/tiny-causal-qwen", trust_remote_code=True).eval(), "tester/tiny-lora"
).eval()
print(json.dumps({
    "module": type(model).__module__,
    "equal": compare(outputs(model), torch.load("reference.pt")),
    "lora_equal": compare(outputs(lora), torch.load("lora_reference.pt")),
}))
"""


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def test_hub_server_speaks_the_protocol_used_by_huggingface_hub(hub, tmp_path):
    code = """
    import json
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    url = api.create_repo("proto")
    again = api.create_repo("proto", exist_ok=True)
    first = api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id="tester/proto")
    api.upload_file(path_or_fileobj=b"world", path_in_repo="c.txt", repo_id="tester/proto")
    errors = {}
    for name, call in {
        "entry": lambda: hf_hub_download("tester/proto", "missing.txt"),
        "repo": lambda: api.model_info("tester/nope"),
        "revision": lambda: hf_hub_download("tester/proto", "c.txt", revision="nobranch"),
    }.items():
        try:
            call()
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as error:
            errors[name] = type(error).__name__
    old = hf_hub_download("tester/proto", "a/b.txt", revision=first.oid)
    print(json.dumps({
        "repo_id": url.repo_id,
        "again": again.repo_id,
        "files": sorted(api.list_repo_files("tester/proto")),
        "top_level": sorted(e.path for e in api.list_repo_tree("tester/proto")),
        "content": open(hf_hub_download("tester/proto", "c.txt")).read(),
        "old_revision": open(old).read(),
        "exists": [api.file_exists("tester/proto", "c.txt"), api.file_exists("tester/proto", "zzz")],
        "errors": errors,
    }))
    """
    result = last_json_line(run_isolated(code, tmp_path, endpoint=hub.url, block_package=True))
    assert result["repo_id"] == "tester/proto"
    assert result["again"] == "tester/proto"
    assert result["files"] == ["a/b.txt", "c.txt"]
    assert result["top_level"] == ["a", "c.txt"]
    assert result["content"] == "world"
    assert result["old_revision"] == "hello"
    assert result["exists"] == [True, False]
    assert result["errors"] == {
        "entry": "RemoteEntryNotFoundError",
        "repo": "RepositoryNotFoundError",
        "revision": "RevisionNotFoundError",
    }
    assert hub.files("tester/proto")["c.txt"] == b"world"
    assert (
        git_blob_sha1(b"hello") == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"
    )  # `git hash-object` of "hello"


def test_push_and_pull_model_and_lora_adapter(hub, tmp_path):
    pytest.importorskip("peft")
    result = last_json_line(
        run_isolated(COMMON + PUSH_AND_PULL, tmp_path, endpoint=hub.url, block_package=False)
    )
    assert result["pulled_class"] == "CausalQwenForNumericCausalLM"
    assert set(result["pulled_equal"]) >= {"logits", "loc_S", "scale_S", "value_loc", "value_scale"}
    assert all(result["pulled_equal"].values()), result["pulled_equal"]
    assert result["original_max_diff"] < 1e-6
    assert result["lora_changes_outputs"] is True
    assert result["lora_equal"] and all(result["lora_equal"].values()), result["lora_equal"]

    files = hub.files("tester/tiny-causal-qwen")
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "modeling_causal_qwen.py",
        "configuration_causal_qwen.py",
        "remote_code.py",
    } <= set(files)
    assert "hub.py" not in files
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_causal_qwen.CausalQwenForNumericCausalLM"
    )
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert set(card.data.tags) == {"causalqwen", "causal-qwen", "unit-test"}
    assert result["card_tags"] == card.data.tags
    assert "| eval_loss | 2.71828 |" in card.text
    assert "| eval_samples | 64 |" in card.text
    assert 'from_pretrained("tester/tiny-causal-qwen", trust_remote_code=True)' in card.text

    # save_pretrained(push_to_hub=True) uploads the same folder content, card included.
    via_save = hub.files("tester/via-save")
    assert {name for name in via_save if name.endswith(".py")} == {n for n in files if n.endswith(".py")}
    assert via_save["model.safetensors"] == files["model.safetensors"]
    assert 'from_pretrained("tester/via-save", trust_remote_code=True)' in via_save["README.md"].decode()

    adapter_files = hub.files("tester/tiny-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(adapter_files)
    assert json.loads(adapter_files["adapter_config.json"])["r"] == 4
    adapter_card = ModelCard(adapter_files["README.md"].decode())
    assert adapter_card.data.library_name == "peft"
    assert adapter_card.data.base_model == "tester/tiny-causal-qwen"
    assert "| eval_accuracy | 0.75 |" in adapter_card.text

    # Pull again where causalqwen cannot be imported: the remote-code bundle from the server is enough.
    remote = last_json_line(run_isolated(COMMON + PULL_WITHOUT_PACKAGE, tmp_path, endpoint=hub.url))
    # transformers names the module after the repo and the commit it downloaded: the server's head commit.
    head = hub.repos["tester/tiny-causal-qwen"].branches["main"]
    assert (
        remote["module"]
        == f"transformers_modules.tester.tiny_hyphen_causal_hyphen_qwen.{head}.modeling_causal_qwen"
    )
    assert all(remote["equal"].values()) and set(remote["equal"]) == set(result["pulled_equal"])
    assert all(remote["lora_equal"].values()) and set(remote["lora_equal"]) == set(result["lora_equal"])

    # Every request of the push/pull used one of the documented endpoints (all on the loopback server).
    kinds = {_request_kind(path) for _, path in hub.requests}
    assert {"create", "preupload", "commit", "resolve"} <= kinds <= KNOWN_KINDS, kinds


KNOWN_KINDS = {
    "create",
    "validate-yaml",
    "whoami-v2",
    "preupload",
    "commit",
    "info",
    "tree",
    "paths-info",
    "resolve",
}


def _request_kind(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "repos"]:
        return parts[2]
    if parts[:2] == ["api", "models"]:
        return parts[4] if len(parts) > 4 and parts[4] != "revision" else "info"
    if parts[0] == "api":
        return parts[1]
    return parts[2] if len(parts) > 2 else "unknown"


TOKENIZER_PUSH = """
import json
import causalqwen
from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
from transformers import AutoTokenizer

TEXTS = ["The loan is 50000 yuan at 3.5% for 25 years", "x = -1.25e3, y = 7"]
tokenizer = build_tiny_tokenizer()
tokenizer.push_to_hub("tiny-tokenizer")
pulled = AutoTokenizer.from_pretrained("tester/tiny-tokenizer")
want, got = tokenizer(TEXTS, padding=True), pulled(TEXTS, padding=True)
json.dump({k: [list(map(float, row)) for row in want[k]] for k in ("input_ids", "numeric_values")}, open("tok.json", "w"))
print(json.dumps({
    "class": type(pulled).__name__,
    "equal": {k: list(want[k]) == list(got[k]) for k in ("input_ids", "attention_mask", "numeric_values")},
}))
"""

TOKENIZER_PULL_WITHOUT_PACKAGE = """
import json
from transformers import AutoTokenizer

TEXTS = ["The loan is 50000 yuan at 3.5% for 25 years", "x = -1.25e3, y = 7"]
tokenizer = AutoTokenizer.from_pretrained("tester/tiny-tokenizer", trust_remote_code=True)
got = tokenizer(TEXTS, padding=True)
want = json.load(open("tok.json"))
print(json.dumps({
    "module": type(tokenizer).__module__,
    "equal": {k: [list(map(float, row)) for row in got[k]] == want[k] for k in want},
}))
"""


def test_push_and_pull_tokenizer(hub, tmp_path):
    result = last_json_line(run_isolated(TOKENIZER_PUSH, tmp_path, endpoint=hub.url, block_package=False))
    assert result["class"] == "CausalQwenTokenizer"
    assert result["equal"] == {"input_ids": True, "attention_mask": True, "numeric_values": True}
    files = hub.files("tester/tiny-tokenizer")
    config = json.loads(files["tokenizer_config.json"])
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_causal_qwen.CausalQwenTokenizer", None]}
    assert {"tokenization_causal_qwen.py", "remote_code.py"} <= set(files) and "hub.py" not in files

    remote = last_json_line(run_isolated(TOKENIZER_PULL_WITHOUT_PACKAGE, tmp_path, endpoint=hub.url))
    assert remote["module"].endswith(".tokenization_causal_qwen")
    assert remote["equal"] == {"input_ids": True, "numeric_values": True}
