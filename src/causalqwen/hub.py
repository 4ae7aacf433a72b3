"""Remote-code bundle and model cards (issue #8).

Remote code. ``transformers`` loads a ``trust_remote_code`` checkpoint by copying the module named in
``auto_map`` and, recursively, the files it imports as siblings (``from .x import Y``) into one flat folder.
The package's modules import each other across subpackages (``from ..modeling.cauchy import ...``), which a
machine without the package cannot resolve, so saving writes its own bundle: flat copies
of every module reachable through relative imports, with those imports rewritten to siblings. This relies on
docs/CONVENTIONS.md: intra-package imports are relative and name a module, and basenames are unique.

Model cards. :func:`render_model_card` renders ``hub_cards/<kind>.j2`` (one template per model kind) with
``huggingface_hub.ModelCard``; ``push_to_hub`` of a model uploads that card as README.md.

The save hook itself (:class:`~causalqwen.remote_code.RemoteCodeMixin`, a base of every saved class) lives in
``remote_code.py`` and imports this module by name at call time, so bundles carry only what loading and running
need, never this module.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from .remote_code import RemoteCodeMixin  # re-exported: the hook's home is remote_code.py

__all__ = [
    "CARD_KINDS",
    "RemoteCodeMixin",
    "build_code_bundle",
    "remote_auto_map",
    "render_model_card",
    "write_code_bundle",
]

CARD_KINDS = ("causal_qwen", "tool_router", "tool_planner", "lora_adapter")
CARD_TEMPLATES_DIR = Path(__file__).resolve().parent / "hub_cards"

# What transformers' dynamic_module_utils.get_relative_imports matches (a plain regex over the whole text,
# docstrings included); every name it finds in a bundled file must be a file of the bundle.
_HF_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)
_IMPORT_PREFIX = re.compile(r"from\s+\.+[\w.]*\s+import\b")
# Bundles written by transformers' loader live under this top-level package, one flat folder per checkpoint.
_DYNAMIC_PACKAGE = "transformers_modules"


# --------------------------------------------------------------------------------------------- code bundle
def _module_of(obj: type | ModuleType) -> ModuleType:
    if isinstance(obj, ModuleType):
        return obj
    if isinstance(obj, type):
        return sys.modules[obj.__module__]
    raise TypeError(f"expected a class or a module to bundle, got {type(obj).__name__}")


def _source_file(module: ModuleType) -> Path:
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        raise ValueError(f"module {module.__name__!r} has no Python source file to bundle")
    return Path(file).resolve()


def _package_root(module: ModuleType) -> Path:
    """Folder that all of ``module``'s relative imports stay inside (the top-level package's folder)."""
    top = module.__name__.split(".")[0]
    package = sys.modules.get(top)
    if top == _DYNAMIC_PACKAGE or package is None or not getattr(package, "__file__", None):
        return _source_file(module).parent
    return Path(package.__file__).resolve().parent


def _resolve_relative(node: ast.ImportFrom, importer: Path) -> Path:
    """File that ``from <dots><module> import ...`` in ``importer`` refers to."""
    where = f"{importer.name}:{node.lineno}"
    if not node.module:
        raise ValueError(
            f"{where}: 'from {'.' * node.level} import ...' cannot be bundled; import names from the module "
            "itself (docs/CONVENTIONS.md)"
        )
    base = importer.parent
    for _ in range(node.level - 1):
        base = base.parent
    target = base.joinpath(*node.module.split("."))
    if target.with_suffix(".py").is_file():
        return target.with_suffix(".py").resolve()
    if target.is_dir():
        raise ValueError(
            f"{where}: 'from {'.' * node.level}{node.module} import ...' imports a subpackage; the bundle needs "
            "the module that defines the names (docs/CONVENTIONS.md)"
        )
    raise ValueError(f"{where}: relative import {'.' * node.level}{node.module} names no module file")


def _relative_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]


def _check_no_absolute_self_import(tree: ast.Module, file: Path, package: str) -> None:
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] == package:
                raise ValueError(
                    f"{file.name}:{node.lineno}: absolute import of {name!r} cannot be bundled (a machine without "
                    f"{package!r} could not load it); use a relative import naming the module"
                )


def _flatten_imports(source: str, tree: ast.Module, targets: Mapping[int, str]) -> str:
    """Rewrite each relative import (keyed by its first line) to ``from .<basename> import``."""
    lines = source.splitlines(keepends=True)
    for node in _relative_imports(tree):
        index = node.lineno - 1
        line = lines[index]
        head, tail = line[: node.col_offset], line[node.col_offset :]
        new_tail, count = _IMPORT_PREFIX.subn(f"from .{targets[node.lineno]} import", tail, count=1)
        if count != 1:
            raise ValueError(f"cannot rewrite the import on line {node.lineno}: {line.strip()!r}")
        lines[index] = head + new_tail
    return "".join(lines)


def _root_file(root: type | ModuleType | Path) -> tuple[Path, str]:
    """Source file of a bundle root, and the package name that must not be imported absolutely."""
    if isinstance(root, Path):
        return root.resolve(), ""
    module = _module_of(root)
    top = module.__name__.split(".")[0]
    return _source_file(module), "" if top == _DYNAMIC_PACKAGE else top


def build_code_bundle(roots: Iterable[type | ModuleType | Path]) -> dict[str, str]:
    """Flattened sources of ``roots``' modules and every module they reach through relative imports.

    ``roots`` are classes, modules or source files. Returns ``{file name: source}`` with intra-package
    imports rewritten to sibling imports, ready to be written into one folder. Only relative imports are
    followed, so only the package's own files are bundled; ``__init__`` files are never needed.

    Raises:
        ValueError: two bundled modules share a basename, an import cannot be bundled (subpackage import,
            ``from . import x``, absolute import of the package itself), or a bundled file contains a line
            that transformers would take for a relative import of a module outside the bundle.
        TypeError: a root is neither a class, a module nor a path.
    """
    pending: list[Path] = []
    package = ""
    for root in roots:
        file, top = _root_file(root)
        pending.append(file)
        package = package or top
    if not pending:
        raise ValueError("build_code_bundle needs at least one class or module")

    bundle: dict[str, str] = {}
    origin: dict[str, Path] = {}
    while pending:
        file = pending.pop()
        name = file.name
        if name in origin:
            if origin[name] != file:
                raise ValueError(
                    f"two bundled modules share the basename {name!r}: {origin[name]} and {file} "
                    "(module basenames must be unique across the package)"
                )
            continue
        if name == "__init__.py":
            raise ValueError(f"{file} is a package __init__; bundle the modules that define the classes")
        origin[name] = file
        source = file.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(file))
        if package:
            _check_no_absolute_self_import(tree, file, package)
        targets = {}
        for node in _relative_imports(tree):
            target = _resolve_relative(node, file)
            targets[node.lineno] = target.stem
            pending.append(target)
        bundle[name] = _flatten_imports(source, tree, targets)

    for name, source in bundle.items():
        for imported in _HF_RELATIVE_IMPORT.findall(source):
            if f"{imported}.py" not in bundle:
                raise ValueError(
                    f"{name}: transformers would load '.{imported}' (a line starting with 'from .{imported} "
                    "import'), which is not a module of the bundle; reword that line"
                )
    return dict(sorted(bundle.items()))


def write_code_bundle(
    save_directory: str | os.PathLike, roots: Iterable[type | ModuleType | Path]
) -> list[Path]:
    """Write :func:`build_code_bundle` of ``roots`` into ``save_directory``; returns the written paths."""
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in build_code_bundle(roots).items():
        path = directory / name
        path.write_text(source, encoding="utf-8")
        written.append(path)
    return written


def _class_reference(cls: type) -> str:
    """``module.Class`` as transformers' ``get_class_from_dynamic_module`` splits it (one dot)."""
    return f"{_source_file(_module_of(cls)).stem}.{cls.__name__}"


def _own_file(cls: type, root: Path) -> Path | None:
    """``cls``'s source file if it belongs to the package rooted at ``root``, else ``None``.

    transformers loads each remote-code module of a checkpoint into its own hashed folder, but copies the
    modules a class imports next to it; a class of a sibling folder counts as the package's own when an
    identical copy of its file lies in ``root``.
    """
    file = _source_file(_module_of(cls))
    if file.is_relative_to(root):
        return file
    sibling = root / file.name
    dynamic = cls.__module__.startswith(f"{_DYNAMIC_PACKAGE}.")
    if dynamic and sibling.is_file() and sibling.read_bytes() == file.read_bytes():
        return sibling
    return None


def _registered_auto_models(config_class: type) -> dict[str, type]:
    """``{AutoModel* name: model class}`` for every Auto model class ``config_class`` is registered with."""
    from transformers.models.auto import modeling_auto

    found = {}
    for name, auto_cls in sorted(vars(modeling_auto).items()):
        mapping = getattr(auto_cls, "_model_mapping", None)
        if not name.startswith("AutoModel") or not isinstance(auto_cls, type) or mapping is None:
            continue
        try:
            found[name] = mapping[config_class]
        except (KeyError, ValueError):
            continue
    return found


def remote_auto_map(obj: Any) -> tuple[dict[str, Any], list[type | Path]]:
    """The ``auto_map`` that makes ``obj`` (a model or a tokenizer) loadable as remote code, and its roots.

    Models: ``AutoConfig`` plus every ``AutoModel*`` class the config class is registered with (the model's
    own class under its ``_auto_class``, if set), restricted to classes of the model's own package. Entries
    of an existing ``config.auto_map`` that point into the bundle are kept. Tokenizers: ``AutoTokenizer``
    as the ``[class, None]`` pair that ``AutoTokenizer.from_pretrained`` reads from tokenizer_config.json.
    """
    cls = type(obj)
    root = _package_root(_module_of(cls))
    if not hasattr(obj, "config"):
        return {"AutoTokenizer": [_class_reference(cls), None]}, [cls]
    config_class = type(obj.config)
    classes: dict[str, type] = {"AutoConfig": config_class}
    classes.update(_registered_auto_models(config_class))
    if getattr(cls, "_auto_class", None):
        classes[cls._auto_class] = cls
    files = {name: _own_file(c, root) for name, c in classes.items()}
    auto_map = {name: f"{file.stem}.{classes[name].__name__}" for name, file in files.items() if file}
    roots = list(dict.fromkeys([_source_file(_module_of(cls)), *(f for f in files.values() if f)]))
    bundled = {file.stem for file in roots}
    for name, ref in (getattr(obj.config, "auto_map", None) or {}).items():
        if name not in auto_map and isinstance(ref, str) and "--" not in ref and ref.split(".")[0] in bundled:
            auto_map[name] = ref
    return dict(sorted(auto_map.items())), roots


def _merge_json(path: Path, key: str, value: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def export_remote_code(obj: Any, save_directory: str | os.PathLike) -> dict[str, Any]:
    """Write ``obj``'s code bundle into a folder it was saved to and record ``auto_map`` there.

    The map goes into config.json for models and tokenizer_config.json for tokenizers (the file each Auto
    class reads). Returns the ``auto_map``.
    """
    directory = Path(save_directory)
    auto_map, roots = remote_auto_map(obj)
    json_name = "config.json" if hasattr(obj, "config") else "tokenizer_config.json"
    json_path = directory / json_name
    if not json_path.is_file():
        raise ValueError(f"{directory} has no {json_name}; call export_remote_code after save_pretrained")
    write_code_bundle(directory, roots)
    _merge_json(json_path, "auto_map", auto_map)
    return auto_map


def save_with_bundle(obj: Any, save, save_directory, *args, **kwargs):
    """``RemoteCodeMixin.save_pretrained``: ``save`` (the next class's ``save_pretrained``), then the bundle,
    ``auto_map`` and (models) a README.md model card when the folder has none; ``push_to_hub=True`` pushes
    through :func:`push_with_card`, so that the upload holds exactly what this call just wrote."""
    push = kwargs.pop("push_to_hub", False)
    hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private") if key in kwargs}
    if push and "token" in kwargs:
        hub_kwargs["token"] = kwargs["token"]
    result = save(save_directory, *args, **kwargs)
    if not kwargs.get("is_main_process", True):
        return result  # in distributed saves only the main process writes the folder
    export_remote_code(obj, save_directory)
    _readable_weights(Path(save_directory))
    readme = Path(save_directory) / "README.md"
    if hasattr(obj, "config") and not readme.exists() and _has_card_template(obj):
        render_model_card(obj, repo_id=Path(save_directory).name).save(readme)
    if push:
        repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
        obj.push_to_hub(repo_id, **hub_kwargs)
    return result


def _readable_weights(directory: Path) -> None:
    """Give weight files the permissions of any file the user creates (``0o666 & ~umask``).

    transformers writes ``model.safetensors`` through a private temporary file (mode 0600) that it renames,
    so a checkpoint saved to share (a group folder, a web server, a container volume) was unreadable to others.
    """
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    for path in directory.glob("*.safetensors"):
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def push_with_card(
    obj: Any, push, repo_id: str, *, metrics: Mapping[str, float] | None = None, model_card=None, **kwargs
):
    """``RemoteCodeMixin.push_to_hub``: ``push`` (transformers' ``push_to_hub``) plus the rendered model card
    (models) as README.md. ``metrics`` (e.g. ``trainer.evaluate()``) go into the card's results table;
    ``model_card`` (a ``huggingface_hub.ModelCard``) replaces the rendered card."""
    renders = hasattr(obj, "config") and _has_card_template(obj)
    if metrics is not None:
        _clean_metrics(metrics)  # fail before anything is uploaded
        if model_card is None and not renders:
            raise ValueError(
                f"metrics given but no model card template is available for {type(obj).__name__}"
            )
    pending = (model_card, metrics) if model_card is not None or renders else None
    obj.__dict__["_pending_model_card"] = pending
    try:
        return push(repo_id, **kwargs)
    finally:
        obj.__dict__.pop("_pending_model_card", None)


def write_pending_card(obj: Any, working_dir, repo_id: str) -> None:
    """Called as ``_upload_modified_files`` starts, where ``repo_id`` is resolved ("name" -> "user/name") for
    the loading snippets: transformers' push_to_hub has just written its generic README.md (with the tags
    passed to it) into ``working_dir``; the rendered card replaces it, keeping those tags."""
    pending = obj.__dict__.get("_pending_model_card")
    if pending is None:
        return
    from huggingface_hub import ModelCard

    card, metrics = pending
    if card is None:
        card = render_model_card(obj, metrics=metrics, repo_id=repo_id)
    readme = Path(working_dir) / "README.md"
    if readme.is_file():
        tags = ModelCard.load(readme).data.tags or []
        card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
    card.save(readme)


# -------------------------------------------------------------------------------------------- model cards
def _card_kind(obj: Any) -> str | None:
    if getattr(obj, "peft_config", None):
        return "lora_adapter"
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    return model_type if model_type in CARD_KINDS else None


def _has_card_template(obj: Any) -> bool:
    # Templates ship with the package, not with the remote-code bundle: a model loaded as remote code saves
    # and pushes with transformers' generic card.
    kind = _card_kind(obj)
    return kind is not None and (CARD_TEMPLATES_DIR / f"{kind}.j2").is_file()


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | int]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name to number, got {type(metrics).__name__}")
    clean = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
        number = value if isinstance(value, int) else float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {name!r} is not finite ({number})")
        clean[name] = number
    return clean


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("causalqwen")
    except Exception:  # the bundle runs where the package is not installed
        return "unknown"


_CONFIG_SUMMARY_KEYS = {
    "causal_qwen": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "vocab_size",
        "causal_size",
        "num_token_id",
        "inference_mode",
        "value_encoding",
        "value_normalization",
        "gamma_init",
        "b_noise_init",
        "gate_alpha",
        "reg_lambda",
    ),
    "tool_router": (
        "vocab_size",
        "d_tool",
        "d_resource",
        "resource_dim",
        "encoder_hidden_size",
        "encoder_num_layers",
        "share_encoder",
        "num_tool_set_layers",
        "num_attention_heads",
        "use_ffn",
        "matching",
    ),
    "tool_planner": (
        "backbone_type",
        "hidden_size",
        "max_plan_steps",
        "runtime_context_dim",
        "use_query_state",
        "allow_repeated_tools",
        "freeze_tool_tower",
        "pointer_size",
        "generate_arguments",
    ),
}


def render_model_card(
    model_or_config: Any,
    metrics: Mapping[str, float] | None = None,
    kind: str | None = None,
    *,
    repo_id: str | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    template_dir: str | os.PathLike | None = None,
):
    """Render the model card of a model, a config or a PEFT adapter model as a ``huggingface_hub.ModelCard``.

    Args:
        model_or_config: a CausalQwen / ToolRouter model or config, or a ``peft.PeftModel`` (LoRA adapter).
        metrics: ``{name: number}`` (e.g. ``trainer.evaluate()``) for the results table; with ``dataset``
            they also go into the YAML ``model-index`` so the Hub shows them.
        kind: one of :data:`CARD_KINDS`; inferred from the object when ``None``.
        repo_id: the Hub repository, used in the loading snippets.
        dataset: name of the evaluation data set of ``metrics``.
        base_model: Hub id of the base model (adapters: defaults to the adapter config's base model).
        template_dir: folder with ``<kind>.j2`` templates (default: the package's ``hub_cards``).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    inferred = _card_kind(model_or_config)
    kind = kind or inferred
    if kind not in CARD_KINDS:
        raise ValueError(
            f"cannot tell the model card kind of {type(model_or_config).__name__}; pass kind= one of "
            f"{', '.join(CARD_KINDS)}"
        )
    clean_metrics = _clean_metrics(metrics)
    template = Path(template_dir or CARD_TEMPLATES_DIR) / f"{kind}.j2"
    if not template.is_file():
        raise FileNotFoundError(f"no model card template {template}")

    context: dict[str, Any] = {"kind": kind, "package_version": _package_version()}
    tags = ["causalqwen", kind.replace("_", "-")]
    if kind == "lora_adapter":
        adapter = _adapter_summary(model_or_config)
        base_model = base_model or adapter.get("base_model")
        context["adapter"] = adapter
        config = getattr(getattr(model_or_config, "base_model", None), "config", None)
        model_type = getattr(config, "model_type", None)
        tags += ["peft", "lora"]
        library = "peft"
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
        if model_type != kind:
            raise ValueError(f"a {kind} card needs a {kind} model or config, got model_type {model_type!r}")
        library = "transformers"
    summary_keys = _CONFIG_SUMMARY_KEYS.get(model_type, ())
    context["config_summary"] = [(k, getattr(config, k)) for k in summary_keys if hasattr(config, k)]
    context["model_type"] = model_type
    context["architectures"] = list(getattr(config, "architectures", None) or [])
    context["metrics"] = list(clean_metrics.items())
    context["dataset"] = dataset
    context["repo_id"] = repo_id or "<namespace>/<repo>"
    context["base_model"] = base_model

    eval_results = None
    if clean_metrics and dataset:
        task = "text-generation" if model_type == "causal_qwen" else "other"
        eval_results = [
            EvalResult(
                task_type=task,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=name,
                metric_name=name,
                metric_value=value,
            )
            for name, value in clean_metrics.items()
        ]
    card_data = ModelCardData(
        library_name=library,
        license="apache-2.0",
        tags=tags,
        base_model=base_model,
        pipeline_tag="text-generation" if model_type == "causal_qwen" else None,
        model_name=(repo_id or "").split("/")[-1] or kind,
        eval_results=eval_results,
    )
    try:
        import jinja2
    except ImportError as error:  # pragma: no cover - jinja2 comes with torch and transformers
        raise ImportError("rendering model cards needs jinja2: pip install jinja2") from error
    # An Environment with a loader (rather than ModelCard.from_template) lets the kind templates extend the
    # shared _base.j2; StrictUndefined turns a misspelt variable into an error instead of an empty cell.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    content = env.get_template(template.name).render(card_data=card_data.to_yaml(), **context)
    return ModelCard(content)


def _adapter_summary(model: Any) -> dict[str, Any]:
    """The fields of the active PEFT adapter config a card shows."""
    peft_config = model.peft_config
    if not isinstance(peft_config, Mapping) or not peft_config:
        raise ValueError(f"{type(model).__name__}.peft_config is empty: not an adapter model")
    name = getattr(model, "active_adapter", None)
    name = name if isinstance(name, str) and name in peft_config else next(iter(peft_config))
    config = peft_config[name]
    target = getattr(config, "target_modules", None)
    return {
        "name": name,
        "peft_type": str(
            getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", ""))
        ),
        "r": getattr(config, "r", None),
        "lora_alpha": getattr(config, "lora_alpha", None),
        "lora_dropout": getattr(config, "lora_dropout", None),
        "target_modules": sorted(target) if isinstance(target, (set, list, tuple)) else target,
        "modules_to_save": sorted(getattr(config, "modules_to_save", None) or []),
        "base_model": getattr(config, "base_model_name_or_path", None) or None,
    }
