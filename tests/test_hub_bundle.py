"""Remote-code bundle (issue #8): flattening, auto_map, and loading where causalqwen is not importable."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import causalqwen
from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM, CausalQwenTokenizer, ToolRouterModel
from causalqwen.configuration import configuration_causal_qwen
from causalqwen.hub import build_code_bundle, export_remote_code, remote_auto_map, write_code_bundle
from causalqwen.modeling import cauchy
from hub_server import last_json_line, run_isolated

PACKAGE_DIR = Path(causalqwen.__file__).resolve().parent
CAUSAL_QWEN_BUNDLE = [
    "_checks.py",
    "_compat.py",
    "_keys.py",
    "cauchy.py",
    "configuration_causal_qwen.py",
    "loss.py",
    "modeling_causal_qwen.py",
    "numeric_embedding.py",
    "remote_code.py",
]


def tiny_causal_qwen_config(**overrides) -> CausalQwenConfig:
    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        num_token_id=299,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return CausalQwenConfig(**settings)


def tiny_causal_qwen(seed: int = 0) -> CausalQwenForNumericCausalLM:
    torch.manual_seed(seed)
    model = CausalQwenForNumericCausalLM(tiny_causal_qwen_config()).eval()
    # Non-default heads so that a loader which silently re-initialised them could not match the originals.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model


CAUSAL_QWEN_INPUTS = {
    "input_ids": torch.tensor([[5, 17, 299, 42, 7], [3, 299, 8, 299, 1]]),
    "numeric_values": torch.tensor([[0.0, 0.0, 3.25, 0.0, 0.0], [0.0, -1250.0, 0.0, 0.0625, 0.0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]),
}


def tensor_outputs(output) -> dict[str, torch.Tensor]:
    return {key: value for key, value in output.items() if torch.is_tensor(value)}


# ------------------------------------------------------------------------------------ generic flattening
def test_leaf_module_is_bundled_verbatim():
    bundle = build_code_bundle([cauchy])
    assert list(bundle) == ["cauchy.py"]
    assert bundle["cauchy.py"] == Path(cauchy.__file__).read_text(encoding="utf-8")


def test_config_class_bundles_only_its_module_and_the_key_checks():
    bundle = build_code_bundle([CausalQwenConfig])
    assert list(bundle) == ["_keys.py", "configuration_causal_qwen.py"]
    assert bundle["configuration_causal_qwen.py"] == Path(configuration_causal_qwen.__file__).read_text()


def _make_package(root: Path, name: str, files: dict[str, str]) -> str:
    for relative, source in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for folder in {(root / name / rel).parent for rel in files} | {root / name}:
        (folder / "__init__.py").touch()
    importlib.invalidate_caches()
    return name


def _import_flat(directory: Path, package: str, module: str):
    (directory / "__init__.py").touch()
    sys.path.insert(0, str(directory.parent))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(f"{package}.{module}")
    finally:
        sys.path.remove(str(directory.parent))


def test_cross_subpackage_imports_are_flattened_and_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _make_package(
        tmp_path,
        "flatpkg_ok",
        {
            "math_ops/scale.py": """
                FACTOR = 3
                def scale(x):
                    return FACTOR * x
            """,
            "math_ops/offset.py": """
                from .scale import scale
                def offset(x):
                    return scale(x) + 1
            """,
            "models/model_top.py": '''
                """A module docstring mentioning no import line."""
                from ..math_ops.offset import (
                    offset,
                )
                from ..math_ops.scale import FACTOR

                def top(x):
                    from ..math_ops.scale import scale  # a function-level import is flattened too
                    return offset(x) * FACTOR + scale(0)
            ''',
            "unused.py": "RAISE = 1 / 0\n",
        },
    )
    module = importlib.import_module(f"{package}.models.model_top")
    bundle = build_code_bundle([module])
    assert list(bundle) == ["model_top.py", "offset.py", "scale.py"]
    top = bundle["model_top.py"]
    assert "from .offset import (" in top
    assert top.count("from .scale import") == 2
    assert "..math_ops" not in top
    flat = tmp_path / "flat_ok"
    written = write_code_bundle(flat, [module])
    assert sorted(p.name for p in written) == ["model_top.py", "offset.py", "scale.py"]
    assert _import_flat(flat, "flat_ok", "model_top").top(2) == (3 * 2 + 1) * 3


@pytest.mark.parametrize(
    ("files", "match"),
    [
        (
            {
                "a/dup.py": "X = 1\n",
                "b/dup.py": "from ..a.dup import X\n",
                "top.py": "from .b.dup import X\n",
            },
            "share the basename 'dup.py'",
        ),
        ({"sub/mod.py": "X = 1\n", "top.py": "from .sub import mod\n"}, "imports a subpackage"),
        (
            {"mod.py": "X = 1\n", "top.py": "from . import mod\n"},
            r"'from \. import \.\.\.' cannot be bundled",
        ),
        ({"mod.py": "X = 1\n", "top.py": "from .missing import X\n"}, "names no module file"),
        ({"mod.py": "X = 1\n", "top.py": "from {pkg}.mod import X\n"}, "absolute import of '{pkg}.mod'"),
        (
            {"mod.py": "X = 1\n", "top.py": '"""\nfrom .elsewhere import X\n"""\nfrom .mod import X\n'},
            r"transformers would load '\.elsewhere'",
        ),
    ],
    ids=["duplicate-basename", "subpackage", "dot-only", "missing", "absolute-self", "docstring-import"],
)
def test_unbundlable_imports_raise(tmp_path, monkeypatch, files, match):
    name = f"badpkg_{abs(hash(match)) % 10**8}"
    files = {path: source.replace("{pkg}", name) for path, source in files.items()}
    monkeypatch.syspath_prepend(str(tmp_path))
    _make_package(tmp_path, name, files)
    top = tmp_path / name / "top.py"
    module_name = f"{name}.top"
    spec = importlib.util.spec_from_file_location(module_name, top)
    module = importlib.util.module_from_spec(spec)  # not executed: some of these imports cannot run
    module.__file__ = str(top)
    monkeypatch.setitem(sys.modules, module_name, module)
    with pytest.raises(ValueError, match=match.replace("{pkg}", name)):
        build_code_bundle([module])


def test_bundle_rejects_non_classes():
    with pytest.raises(TypeError, match="expected a class or a module"):
        build_code_bundle(["causalqwen.hub"])
    with pytest.raises(ValueError, match="at least one"):
        build_code_bundle([])


# ----------------------------------------------------------------------------------------- CausalQwen
def test_causal_qwen_auto_map_and_bundle_files():
    auto_map, roots = remote_auto_map(tiny_causal_qwen())
    assert auto_map == {
        "AutoConfig": "configuration_causal_qwen.CausalQwenConfig",
        "AutoModel": "modeling_causal_qwen.CausalQwenModel",
        "AutoModelForCausalLM": "modeling_causal_qwen.CausalQwenForNumericCausalLM",
    }
    assert sorted(p.name for p in roots) == ["configuration_causal_qwen.py", "modeling_causal_qwen.py"]
    assert list(build_code_bundle(roots)) == CAUSAL_QWEN_BUNDLE


def test_save_pretrained_writes_bundle_of_package_files_only(tmp_path):
    model = tiny_causal_qwen()
    model.save_pretrained(tmp_path / "ckpt")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    python_files = [n for n in names if n.endswith(".py")]
    assert python_files == CAUSAL_QWEN_BUNDLE
    package_files = {p.name for p in PACKAGE_DIR.rglob("*.py")}
    assert set(python_files) <= package_files
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_causal_qwen.CausalQwenForNumericCausalLM"
    # The in-memory config is untouched: only the saved folder carries the remote-code map.
    assert getattr(model.config, "auto_map", None) is None
    assert "README.md" in names
    for name in python_files:
        source = (tmp_path / "ckpt" / name).read_text()
        assert not re.search(r"^\s*from \.\.", source, flags=re.MULTILINE), name
        assert not re.search(r"^\s*(from|import) causalqwen", source, flags=re.MULTILINE), name


def test_export_remote_code_needs_a_saved_folder(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        export_remote_code(tiny_causal_qwen(), tmp_path)


REMOTE_LOAD = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

try:
    import causalqwen
    raise SystemExit("causalqwen must not be importable here")
except ModuleNotFoundError:
    pass
ckpt = sys.argv[1] if len(sys.argv) > 1 else "ckpt"
reference = torch.load("reference.pt")
inputs = torch.load("inputs.pt")
model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True).eval()
with torch.no_grad():
    output = model(**inputs)
equal = {k: bool(torch.equal(v, output[k])) for k, v in reference.items()}
base = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
with torch.no_grad():
    hidden = base(**inputs).last_hidden_state
model.save_pretrained("resaved")
again = AutoModelForCausalLM.from_pretrained("resaved", trust_remote_code=True).eval()
with torch.no_grad():
    resaved_equal = bool(torch.equal(again(**inputs).logits, reference["logits"]))
print(json.dumps({
    "equal": equal,
    "model_module": type(model).__module__,
    "config_class": type(model.config).__name__,
    "base_class": type(base).__name__,
    "hidden_equal": bool(torch.equal(hidden, torch.load("hidden.pt"))),
    "resaved_auto_map": json.load(open("resaved/config.json"))["auto_map"],
    "resaved_equal": resaved_equal,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "causalqwen"),
}))
"""


def test_causal_qwen_loads_as_remote_code_without_the_package(tmp_path):
    original = tiny_causal_qwen()
    original.save_pretrained(tmp_path / "ckpt")
    # The reference is the package's own load of the checkpoint. The in-memory original agrees only to
    # rounding: loaded weights are memory-mapped at other alignments, and F.linear with one output (the
    # value head) then takes another SIMD path (measured: |delta value_loc| = 1.5e-8).
    model = CausalQwenForNumericCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        reference = tensor_outputs(model(**CAUSAL_QWEN_INPUTS))
        hidden = model.model(**CAUSAL_QWEN_INPUTS).last_hidden_state
        for key, value in tensor_outputs(original(**CAUSAL_QWEN_INPUTS)).items():
            torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-6)
    assert {"logits", "loc_S", "scale_S", "value_loc", "value_scale"} <= set(reference)
    torch.save(reference, tmp_path / "reference.pt")
    torch.save(CAUSAL_QWEN_INPUTS, tmp_path / "inputs.pt")
    torch.save(hidden, tmp_path / "hidden.pt")

    result = last_json_line(run_isolated(REMOTE_LOAD, tmp_path))
    assert result["equal"] == dict.fromkeys(reference, True)
    assert result["model_module"].startswith("transformers_modules.ckpt.")
    assert result["model_module"].endswith(".modeling_causal_qwen")
    assert result["config_class"] == "CausalQwenConfig"
    assert result["base_class"] == "CausalQwenModel"
    assert result["hidden_equal"] is True
    # Saving again from the remote-code classes yields a loadable checkpoint with the same map.
    assert (
        result["resaved_auto_map"]["AutoModelForCausalLM"]
        == "modeling_causal_qwen.CausalQwenForNumericCausalLM"
    )
    assert result["resaved_equal"] is True
    assert result["loaded"] == []


# ------------------------------------------------------------------------ tokenizer auto_map (generic)
TOY_TOKENIZER_PACKAGE = {
    "text/casing.py": """
        def shout(text):
            return text.upper() + "!"
    """,
    "tokenization/tokenization_toy.py": """
        from transformers import TokenizersBackend

        from ..text.casing import shout

        class ToyTokenizer(TokenizersBackend):
            def shout(self, text):
                return shout(text)
    """,
}

TOY_TOKENIZER_LOAD = """
import json
import os
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("toy_tok", trust_remote_code=True)
print(json.dumps({
    "class": type(tokenizer).__name__,
    "module": type(tokenizer).__module__,
    "ids": tokenizer("hello world unknown")["input_ids"],
    "shout": tokenizer.shout("hi"),
}))
"""


def test_tokenizer_auto_map_loads_with_auto_tokenizer(tmp_path, monkeypatch):
    """The tokenizer half of the mechanism on a test-only tokenizer class of a throwaway package."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    _make_package(tmp_path / "src", "toytok_pkg", TOY_TOKENIZER_PACKAGE)
    module = importlib.import_module("toytok_pkg.tokenization.tokenization_toy")
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = module.ToyTokenizer(tokenizer_object=backend, unk_token="[UNK]")
    assert tokenizer("hello world unknown")["input_ids"] == [1, 2, 0]
    tokenizer.save_pretrained(tmp_path / "toy_tok")

    auto_map = export_remote_code(tokenizer, tmp_path / "toy_tok")
    assert auto_map == {"AutoTokenizer": ["tokenization_toy.ToyTokenizer", None]}
    saved = json.loads((tmp_path / "toy_tok" / "tokenizer_config.json").read_text())
    assert saved["auto_map"] == auto_map
    assert sorted(p.name for p in (tmp_path / "toy_tok").glob("*.py")) == ["casing.py", "tokenization_toy.py"]

    result = last_json_line(run_isolated(TOY_TOKENIZER_LOAD, tmp_path))
    assert result["class"] == "ToyTokenizer"
    assert result["module"].startswith("transformers_modules.toy_tok.")
    assert result["ids"] == [1, 2, 0]
    assert result["shout"] == "HI!"


def test_the_save_hook_travels_without_the_hub_tooling():
    """remote_code.py travels in every bundle: it imports only the standard library and never names
    causalqwen.hub in an import statement (only as a string, at call time), so hub.py stays out."""
    import ast

    import causalqwen.remote_code as hook

    tree = ast.parse(Path(hook.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "remote_code.py must not import package modules"
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    for cls in (CausalQwenForNumericCausalLM, ToolRouterModel, CausalQwenTokenizer):
        assert "hub.py" not in build_code_bundle([cls]), cls.__name__


# ------------------------------------------------------------------------- the real tokenizer and router
TOKENIZER_TEXTS = ["The loan is 50000 yuan at 3.5% for 25 years", "x = -1.25e3, y = 7"]

REAL_TOKENIZER_LOAD = """
import json, sys
from transformers import AutoTokenizer

try:
    import causalqwen
    raise SystemExit("causalqwen must not be importable here")
except ModuleNotFoundError:
    pass
texts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else TEXTS
tokenizer = AutoTokenizer.from_pretrained("tok", trust_remote_code=True)
encoded = tokenizer(texts, padding=True)
print(json.dumps({
    "class": type(tokenizer).__name__,
    "module": type(tokenizer).__module__,
    "input_ids": [list(map(int, ids)) for ids in encoded["input_ids"]],
    "numeric_values": [list(map(float, v)) for v in encoded["numeric_values"]],
    "decoded": [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded["input_ids"]],
}))
"""


def _tiny_real_tokenizer():
    from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer  # a broken import fails, never skips

    return build_tiny_tokenizer()


def test_causal_qwen_tokenizer_loads_as_remote_code_without_the_package(tmp_path):
    tokenizer = _tiny_real_tokenizer()
    assert type(tokenizer).__name__ == "CausalQwenTokenizer"
    tokenizer.save_pretrained(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert saved["auto_map"] == {"AutoTokenizer": ["tokenization_causal_qwen.CausalQwenTokenizer", None]}
    bundle = sorted(p.name for p in (tmp_path / "tok").glob("*.py"))
    assert "tokenization_causal_qwen.py" in bundle and "remote_code.py" in bundle and "hub.py" not in bundle
    assert set(bundle) <= {p.name for p in PACKAGE_DIR.rglob("*.py")}
    assert not list((tmp_path / "tok").glob("README.md"))  # tokenizers get no model card

    encoded = tokenizer(TOKENIZER_TEXTS, padding=True)
    code = f"TEXTS = {TOKENIZER_TEXTS!r}\n" + REAL_TOKENIZER_LOAD
    result = last_json_line(run_isolated(code, tmp_path))
    assert result["class"] == "CausalQwenTokenizer"
    assert result["module"].startswith("transformers_modules.tok.")
    assert result["input_ids"] == [list(map(int, ids)) for ids in encoded["input_ids"]]
    assert result["numeric_values"] == [list(map(float, v)) for v in encoded["numeric_values"]]
    assert result["decoded"] == [
        tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded["input_ids"]
    ]
    assert any(v == 50000.0 for v in result["numeric_values"][0])


TINY_ROUTER_SIZES = {
    "vocab_size": 128,
    "d_tool": 32,
    "d_resource": 16,
    "num_attention_heads": 4,
    "num_tool_set_layers": 1,
    "encoder_hidden_size": 32,
    "encoder_num_layers": 1,
    "encoder_state_size": 4,
    "latency_hidden_size": 16,
}

ROUTER_REMOTE_LOAD = """
import json, torch
from transformers import AutoModel

try:
    import causalqwen
    raise SystemExit("causalqwen must not be importable here")
except ModuleNotFoundError:
    pass
router = AutoModel.from_pretrained("router", trust_remote_code=True).eval()
with torch.no_grad():
    output = router(**torch.load("router_inputs.pt"))
reference = torch.load("router_reference.pt")
print(json.dumps({
    "class": type(router).__name__,
    "module": type(router).__module__,
    "equal": {k: bool(torch.equal(v, output[k])) for k, v in reference.items()},
}))
"""


# Router v2 shape: a pretrained-style BERT encoder (shared towers) and the KAN fusion head.
TINY_BERT_ROUTER = {
    **TINY_ROUTER_SIZES,
    "encoder_type": "pretrained",
    "share_encoder": True,
    "matching": "fusion",
    "text_encoder_config": {"model_type": "bert", "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 1,
                            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32},
}  # fmt: skip


@pytest.mark.parametrize("sizes", [TINY_ROUTER_SIZES, TINY_BERT_ROUTER], ids=["mamba", "pretrained-fusion"])
def test_tool_router_loads_as_remote_code_without_the_package(tmp_path, sizes):
    from causalqwen import ToolRouterConfig
    from causalqwen.modeling import modeling_tool_router as module

    config = ToolRouterConfig(**sizes)
    torch.manual_seed(0)
    original = module.ToolRouterModel(config).eval()
    original.save_pretrained(tmp_path / "router")
    saved = json.loads((tmp_path / "router" / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_tool_router.ToolRouterModel"
    assert saved["auto_map"]["AutoConfig"] == "configuration_tool_router.ToolRouterConfig"
    bundle = {p.name for p in (tmp_path / "router").glob("*.py")}
    assert {
        "modeling_tool_router.py",
        "configuration_tool_router.py",
        "cauchy.py",
        "remote_code.py",
    } <= bundle
    assert "hub.py" not in bundle
    assert bundle <= {p.name for p in PACKAGE_DIR.rglob("*.py")}

    generator = torch.Generator().manual_seed(1)
    inputs = {
        "query_input_ids": torch.randint(0, 128, (2, 6), generator=generator),
        "query_attention_mask": torch.ones(2, 6, dtype=torch.long),
        "tool_input_ids": torch.randint(0, 128, (2, 3, 5), generator=generator),
        "tool_attention_mask": torch.ones(2, 3, 5, dtype=torch.long),
        "resource_vectors": torch.rand(2, 3, 6, generator=generator),
        "tool_mask": torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool),
        "lexical_scores": torch.rand(2, 3, generator=generator) * 5,  # used by the fusion head only
    }
    model = module.ToolRouterModel.from_pretrained(tmp_path / "router").eval()
    with torch.no_grad():
        reference = tensor_outputs(model(**inputs))
    assert reference, "the router returned no tensors"
    torch.save(inputs, tmp_path / "router_inputs.pt")
    torch.save(reference, tmp_path / "router_reference.pt")

    result = last_json_line(run_isolated(ROUTER_REMOTE_LOAD, tmp_path))
    assert result["class"] == "ToolRouterModel"
    assert result["module"].startswith("transformers_modules.router.")
    assert result["equal"] == dict.fromkeys(reference, True)


def test_a_saved_folder_has_a_titled_card_and_shareable_weights(tmp_path):
    folder = tmp_path / "price-model"
    tiny_causal_qwen().save_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert "<namespace>/<repo>" not in card
    assert "# price-model" in card and 'from_pretrained("price-model"' in card
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600
