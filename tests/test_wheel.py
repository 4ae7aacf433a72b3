"""The built wheel is self-contained: templates inside the package (no symlink), cards render, and a saved
model loads as remote code in a process that cannot import the package (issue #15)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USE_WHEEL = """
import json, subprocess, sys, tempfile
from pathlib import Path
import torch
import causalqwen
from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.hub import render_model_card
assert Path(causalqwen.__file__).is_relative_to(sys.argv[1]), causalqwen.__file__  # the installed wheel
config = CausalQwenConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, num_token_id=63)
model = CausalQwenForNumericCausalLM(config).eval()
folder = Path(tempfile.mkdtemp()) / "wheel-model"
model.save_pretrained(folder)
ids, values = torch.tensor([[1, 63, 5]]), torch.tensor([[0.0, 2.5, 0.0]])
torch.save({"ids": ids, "values": values, "ref": model(input_ids=ids, numeric_values=values).value_loc},
           folder.parent / "io.pt")
remote = '''
import sys, torch
sys.modules["causalqwen"] = None  # the package cannot be imported here
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
io = torch.load(folder + "/../io.pt")
print(type(model).__module__.startswith("transformers_modules."),
      # loaded weights are memory-mapped at other alignments: equal to rounding (test_hub_bundle.py)
      torch.allclose(model(input_ids=io["ids"], numeric_values=io["values"]).value_loc, io["ref"], atol=1e-6))
'''
loaded = subprocess.run([sys.executable, "-c", remote, str(folder)], capture_output=True, text=True)
card = render_model_card(model, metrics={"mae": 1.5}, repo_id="me/x")
print(json.dumps({
    "files": sorted(p.name for p in folder.iterdir()),
    "title": "# wheel-model" in (folder / "README.md").read_text(),
    "card": "me/x" in card.content and "1.5" in card.content,
    "remote": loaded.stdout.split(), "remote_err": loaded.stderr[-1500:],
}))
"""


@pytest.mark.slow
def test_wheel_installs_renders_cards_and_saves_loadable_remote_code(tmp_path):
    import json

    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(ROOT)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheel_dir.glob("causalqwen-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        symlinks = [i.filename for i in archive.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000]
    cards = {"_base.j2", "causal_qwen.j2", "lora_adapter.j2", "tool_router.j2"}
    assert {f"causalqwen/hub_cards/{name}" for name in cards} <= names and not symlinks
    assert "causalqwen/remote_code.py" in names and "causalqwen/tokenization/tiny_vocab.py" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    # Only the wheel's copy of the package is importable: the dependencies come from this environment, the
    # source tree (an editable install) is hidden by putting the wheel's folder first and running elsewhere.
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "USE_HUB_KERNELS": "0"}
    run = subprocess.run([sys.executable, "-c", USE_WHEEL, str(target)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["title"] and result["card"]
    assert result["remote"] == ["True", "True"], result["remote_err"]
    assert "hub.py" not in result["files"] and "remote_code.py" in result["files"]
