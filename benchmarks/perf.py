"""Performance of CausalQwen relative to a plain ``Qwen2ForCausalLM`` of the same shape (issue #9).

Measured in one process, on the same inputs, median of ``--repeats`` (>= 5) runs after a warm-up:

* train step (forward + backward + AdamW step) time and peak memory (weights, gradients, optimizer
  state and activations: the growth of the allocated bytes above their level before the model is built, on
  the CPU malloc's own count (``common.MemoryMeter``; the RSS is reported beside it)), at two batch
  shapes per size: a short one and a realistic one (tiny: 4 x 128 and 8 x 512 tokens; 0.5B: 1 x 64 and
  4 x 1,024, where plain Qwen2 materialises float32 logits of [4,096 x 151,936], 2.5 GB, and CausalQwen's
  chunked loss never does); CausalQwen three times: the default, ``isotropic_scale=True`` (one scale per
  position, no second vocabulary matmul) and ``loss_compile=True`` (the One-vs-Rest loss's elementwise passes
  as compiled kernels);
* ``generate`` throughput with the KV cache at batch 1 and 8 (greedy, a fixed number of new tokens);
* tokenizer throughput with number parsing (``CausalQwenTokenizer`` on the real Qwen vocabulary) against
  the plain Qwen2 tokenizer of the same vocabulary.

Targets (ratios CausalQwen / base, issues #9 and #16): train step <= 1.8 at the tiny shape and <= 1.3 at
0.5B, peak memory <= 0.85 at 0.5B with 4 x 1,024 tokens and <= 1.02 elsewhere, generate >= 0.85, tokenizer
>= 0.6 (the isotropic rows are reported beside the default, without a target of their own). Sizes: ``tiny`` (H=64, 2 layers) and ``0.5b`` (the Qwen2.5-0.5B shape, random weights). Both
models get identical backbones (same seed), so the ratios isolate what CausalQwen adds: the ``<NUM>``
fusion, abduction, the Cauchy heads (``loc_S`` and ``scale_S = |W| scale_U'``: two vocabulary matmuls) and
the chunked gated loss.

    python benchmarks/perf.py --quick            # what `make bench` runs
    python benchmarks/perf.py --sizes tiny,0.5b  # full
    python benchmarks/perf.py --device cuda      # on a GPU machine
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM  # noqa: E402
from causalqwen.training.presets import TINY_BACKBONE  # noqa: E402
from common import (  # noqa: E402
    MemoryMeter,
    Timing,
    apply_threads,
    base_parser,
    environment_info,
    markdown_table,
    release_memory,
    resolve_device,
    time_call,
    time_interleaved,
    wall_clock,
    write_results,
)

# Ratio targets: one number, or per size ({size: target}); peak memory at the realistic 0.5B shape has its own.
TARGETS: dict[str, Any] = {
    "train_step": {"tiny": 1.8, "0.5b": 1.3},
    "peak_memory": {"tiny": 1.02, "0.5b": 1.02, "0.5b 4x1024": 0.85},
    "generate": 0.85,
    "tokenizer": 0.6,
}


def target_for(metric: str, size: str, shape: str = "") -> float:
    target = TARGETS[metric]
    if not isinstance(target, dict):
        return target
    return target.get(f"{size} {shape}", target[size])


# Backbone shapes. ``0.5b`` is Qwen2.5-0.5B's config (tied embeddings, 151,936 rows).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(TINY_BACKBONE, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True),
    "0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}


# The per-size measurements, in the order they run (``--measure`` picks some: a 0.5B generate re-run needs
# minutes, the train steps at 4 x 1,024 tokens a quarter of an hour).
MEASURES = ("train", "loss_kernels", "generate")


@dataclass
class Budget:
    """Work per measurement; ``--smoke`` shrinks everything so CI proves the script runs in seconds."""

    repeats: int
    train_shapes: tuple[tuple[int, int], ...]  # (batch, tokens per row) of each train-step measurement
    prompt_len: int
    new_tokens: int
    tokenizer_texts: int
    # Shapes whose step is timed once on CPU, by the step that measures peak memory: a 0.5B step at
    # 4 x 1,024 tokens takes minutes on 2 cores (``--repeats`` times them all again).
    single_run_shapes: tuple[tuple[int, int], ...] = ()
    # Shapes trained with activation checkpointing in both models: the 0.5B shape at 4 x 1,024 tokens without
    # it needs more than 23 GB in float32 with AdamW (the plain Qwen2 step was killed for memory on the
    # 23 GB benchmark machine), and users train that size with checkpointing anyway. The backbone's
    # activations then shrink to the layer inputs, so the vocabulary head's share of memory, which is what
    # CausalQwen's chunked loss changes, shows.
    checkpointed_shapes: tuple[tuple[int, int], ...] = ()


BUDGETS = {
    "smoke": Budget(repeats=2, train_shapes=((2, 16),), prompt_len=4, new_tokens=4, tokenizer_texts=50),
    "quick": Budget(
        repeats=5, train_shapes=((4, 128), (8, 512)), prompt_len=16, new_tokens=32, tokenizer_texts=2000
    ),
    "full": Budget(
        repeats=7, train_shapes=((8, 256), (8, 512)), prompt_len=32, new_tokens=64, tokenizer_texts=5000
    ),
}
# The 0.5B shape on CPU costs seconds per short step and minutes per realistic one: its short shape and its
# generation are cut so `make bench` stays in budget (the ratios, not the absolute times, are reported).
SIZE_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("quick", "tiny"): dict(repeats=15),
    ("quick", "0.5b"): dict(
        train_shapes=((1, 64), (4, 1024)),
        single_run_shapes=((4, 1024),),
        checkpointed_shapes=((4, 1024),),
        new_tokens=16,
    ),
    ("full", "0.5b"): dict(
        train_shapes=((4, 256), (4, 1024)), checkpointed_shapes=((4, 1024),), new_tokens=32
    ),
}


def budget_for(mode: str, size: str, repeats: int | None = None) -> Budget:
    """The budget of ``mode`` adjusted for ``size``; an explicit ``repeats`` wins over both."""
    budget = replace(BUDGETS[mode], **SIZE_OVERRIDES.get((mode, size), {}))
    if repeats is not None:
        budget.repeats = repeats
        budget.single_run_shapes = ()
    return budget


ISOTROPIC = "causalqwen[isotropic]"
# Train-step variants of CausalQwen reported beside the default (no target of their own): (name, row label,
# config options).
VARIANTS = (
    (ISOTROPIC, ", isotropic", {"isotropic_scale": True}),
    ("causalqwen[loss_compile]", ", loss_compile", {"loss_compile": True}),
)

# Variants whose memory is sampled only (``common.MemoryMeter(per_operation=False)``): their peak can be missed
# by up to one operation's temporaries.
COMPILED_VARIANTS = frozenset(name for name, _, options in VARIANTS if options.get("loss_compile"))


def build_models(size: str, device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    """Constructors (not models: only one model lives at a time) for the base, CausalQwen and the
    :data:`VARIANTS` of CausalQwen (train step only)."""
    shape = SHAPES[size]

    def base():
        torch.manual_seed(0)
        return Qwen2ForCausalLM(Qwen2Config(**shape)).to(device=device, dtype=dtype)

    def causal(**options):
        def build():
            torch.manual_seed(0)
            config = CausalQwenConfig(**shape, num_token_id=shape["vocab_size"] - 1, **options)
            return CausalQwenForNumericCausalLM(config).to(device=device, dtype=dtype)

        return build

    return {
        "qwen2": base,
        "causalqwen": causal(),
        **{name: causal(**options) for name, _, options in VARIANTS},
    }


def make_batch(
    vocab: int, num_id: int, batch: int, seq: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random ids with 10% ``<NUM>`` tokens carrying values; labels are the ids (causal-LM training)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, num_id, (batch, seq), generator=generator)
    is_num = torch.rand((batch, seq), generator=generator) < 0.1
    ids[is_num] = num_id
    values = torch.where(is_num, torch.randn((batch, seq), generator=generator) * 100, 0.0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": ids.to(device),
        "numeric_values": values.to(device),
    }


def model_inputs(name: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The base model sees the same ids (<NUM> is an ordinary token for it) but has no value inputs.
    if name.startswith("causalqwen"):
        return batch
    return {k: v for k, v in batch.items() if k != "numeric_values"}


def fits_in_memory(size: str, device: torch.device, copies: int = 1) -> tuple[bool, str]:
    """Whether ``copies`` training setups fit (weights, grads, AdamW state: 16 bytes/param, +50% slack)."""
    shape = SHAPES[size]
    h, layers, vocab, inter = (
        shape["hidden_size"],
        shape["num_hidden_layers"],
        shape["vocab_size"],
        shape["intermediate_size"],
    )
    params = vocab * h + layers * (4 * h * h + 3 * h * inter)
    need = copies * 16 * params * 1.5
    free = free_memory_bytes(device)
    return need < free, f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"


def free_memory_bytes(device: torch.device) -> int:
    """Memory available for one more model: free GPU memory, or the system's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def train_step(model, optimizer, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One optimisation step on ``batch`` (the unit the train-step ratio compares)."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return step


def generate_call(model, kwargs: dict[str, Any], expected_len: int) -> Callable[[], None]:
    """One ``generate`` call that must produce exactly the requested number of tokens."""

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(**kwargs)
        if out.shape[1] != expected_len:
            raise RuntimeError(f"generate produced {out.shape[1]} tokens, expected {expected_len}")

    return run


def prepare_train(
    name: str,
    build: Callable[[], Any],
    rows: int,
    seq: int,
    device: torch.device,
    shape: dict,
    checkpointing: bool = False,
) -> tuple[MemoryMeter, Callable[[], None], float]:
    """Peak memory of building the model and optimizer and running a step on ``rows`` x ``seq`` tokens at
    steady state; returns its meter (allocated bytes and RSS), the step and that step's seconds. A first step on
    8 tokens allocates the gradients and the AdamW state cheaply, so the measured step's peak holds weights,
    state, activations and gradients, as every later step's does. Timing is separate (the meter's sampling
    thread steals CPU and its per-operation reads add a few microseconds each), except for
    ``single_run_shapes``.
    """
    vocab = shape["vocab_size"]
    batch = model_inputs(name, make_batch(vocab, vocab - 1, rows, seq, device))
    warm = model_inputs(name, make_batch(vocab, vocab - 1, 1, 8, device))
    # The loss_compile variant runs compiled kernels, which a per-operation meter would force back to eager.
    with MemoryMeter(device, per_operation=name not in COMPILED_VARIANTS) as meter:
        model = build()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_step(model, optimizer, warm)()
        step = train_step(model, optimizer, batch)
        seconds = time_call(step, repeats=1, warmup=0, device=device).median
    return meter, step, seconds


def measure_train(
    builders: dict[str, Callable[[], Any]],
    budget: Budget,
    device: torch.device,
    size: str,
    rows: int,
    seq: int,
) -> dict[str, Any]:
    """Peak memory per model (one at a time), then step times: interleaved when all fit at once; else, where
    the base and one variant fit together, each variant interleaved with the base (``paired_base_step``: the
    base's runs of that pair, the variant's ratio reads them); else one model at a time."""
    shape = SHAPES[size]
    interleave, _ = fits_in_memory(size, device, copies=len(builders))
    single = device.type == "cpu" and (rows, seq) in budget.single_run_shapes
    checkpointing = (rows, seq) in budget.checkpointed_shapes
    memory, steps, timings, paired = {}, {}, {}, {}
    base_name, base_step = next(iter(builders)), None
    for name, build in builders.items():
        memory[name], step, seconds = prepare_train(name, build, rows, seq, device, shape, checkpointing)
        if single:
            timings[name] = Timing([seconds])
        elif interleave:
            steps[name] = step
        elif name == base_name and pair_fits(memory[name], device):
            base_step = step
        elif base_step is not None:
            pair = time_interleaved(
                {base_name: base_step, name: step}, repeats=budget.repeats, warmup=1, device=device
            )
            timings[name], paired[name] = pair[name], pair[base_name]
            if base_name not in timings:
                timings[base_name] = pair[base_name]
        else:
            timings[name] = time_call(step, repeats=budget.repeats, warmup=0, device=device)
        del step
        release_memory()
    if steps:
        timings = time_interleaved(steps, repeats=budget.repeats, warmup=1, device=device)
    del steps, base_step
    release_memory()
    return {
        name: {
            "train_step": timings[name].to_dict(),
            **({"paired_base_step": paired[name].to_dict()} if name in paired else {}),
            "peak_memory_bytes": memory[name].peak_bytes,
            "peak_rss_bytes": memory[name].peak_rss_bytes,
            "memory_meter": memory[name].kind,
            "interleaved": (interleave or name in paired or (name == base_name and bool(paired)))
            and not single,
            "single_run": single,
            "activation_checkpointing": checkpointing,
        }
        for name in builders
    }


def pair_fits(base_memory: MemoryMeter, device: torch.device) -> bool:
    """Whether a second model fits beside the live base, judged by the base's measured peak (+25 %): at the 0.5B
    shape four copies do not fit in 23 GB but two do at 1 x 64 tokens (8.6 GB each), so each variant's
    step can alternate with the base's instead of being timed minutes apart."""
    return 1.25 * base_memory.peak_bytes < free_memory_bytes(device)


def measure_loss_kernels(size: str, budget: Budget, device: torch.device) -> dict[str, Any]:
    """One loss chunk's One-vs-Rest token term (``cauchy.ovr_bce_sum``), forward and backward, with the eager
    kernels against the ``loss_compile`` ones, interleaved: the part of a train step that option changes (the
    whole step is timed once at the realistic 0.5B shape, where run-to-run noise hides a few seconds)."""
    from causalqwen.modeling.cauchy import ovr_bce_sum
    from causalqwen.modeling.loss import chunk_rows

    vocab = SHAPES[size]["vocab_size"]
    rows = chunk_rows(CausalQwenConfig.loss_chunk_size, vocab)
    generator = torch.Generator().manual_seed(3)
    loc = (torch.randn(rows, vocab, generator=generator) * 3).to(device).requires_grad_()
    scale = (torch.rand(rows, vocab, generator=generator) + 0.1).to(device).requires_grad_()
    threshold = torch.zeros(vocab, device=device)
    labels = torch.randint(0, vocab, (rows,), generator=generator).to(device)

    def chunk(compiled: bool) -> Callable[[], None]:
        def run() -> None:
            value = ovr_bce_sum(loc, scale, threshold, labels, compiled=compiled)
            torch.autograd.grad(value, (loc, scale))

        return run

    timings = time_interleaved(
        {"eager": chunk(False), "compiled": chunk(True)}, repeats=budget.repeats, warmup=1, device=device
    )
    return {"rows": rows, "vocab": vocab, **{name: t.to_dict() for name, t in timings.items()}}


def measure_generate(
    builders: dict[str, Callable[[], Any]], budget: Budget, device: torch.device, size: str
) -> dict[str, Any]:
    """Greedy decoding of exactly ``new_tokens`` tokens with the KV cache, batch 1 and 8; tokens/s."""
    vocab = SHAPES[size]["vocab_size"]
    models = {name: builders[name]().eval() for name in ("qwen2", "causalqwen")}
    results = {}
    for batch_size in (1, 8):
        generator = torch.Generator().manual_seed(2)
        prompt = torch.randint(0, vocab - 1, (batch_size, budget.prompt_len), generator=generator).to(device)
        kwargs = dict(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=budget.new_tokens,
            min_new_tokens=budget.new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
        expected = budget.prompt_len + budget.new_tokens
        calls = {"qwen2": generate_call(models["qwen2"], kwargs, expected)}
        for mode in ("standard", "deterministic"):
            calls[f"causalqwen[{mode}]"] = generate_call(
                models["causalqwen"], {**kwargs, "inference_mode": mode}, expected
            )
        timings = time_interleaved(calls, repeats=budget.repeats, warmup=1, device=device)
        results[f"batch{batch_size}"] = {
            key: {**t.to_dict(), "tokens_per_s": batch_size * budget.new_tokens / t.median}
            for key, t in timings.items()
        }
    del models, calls
    release_memory()
    return results


# ------------------------------------------------------------------------------------------ tokenizers

_WORDS = [
    "the",
    "loan",
    "rate",
    "year",
    "price",
    "total",
    "growth",
    "sample",
    "mean",
    "patient",
    "dose",
    "value",
    "store",
    "sales",
    "order",
]


def number_corpus(n: int, seed: int = 0) -> list[str]:
    """Deterministic sentences mixing words and numbers of every surface form the grammar handles."""
    rng = random.Random(seed)
    forms = [
        lambda: str(rng.randint(0, 10**6)),
        lambda: f"{rng.uniform(-1000, 1000):.3f}",
        lambda: f"{rng.uniform(0, 1):.4g}",
        lambda: f"{rng.uniform(1, 9):.2f}e{rng.randint(-5, 5)}",
        lambda: f"{rng.randint(1000, 10**7):,}",
        lambda: f"{rng.randint(0, 100)}%",
    ]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(6, 16)):
            parts.append(rng.choice(forms)() if rng.random() < 0.3 else rng.choice(_WORDS))
        texts.append(" ".join(parts) + ".")
    return texts


def load_tokenizers() -> tuple[Any, Any]:
    """(CausalQwenTokenizer on the real Qwen vocabulary, the plain Qwen2 tokenizer it wraps)."""
    from causalqwen.tokenization.qwen_vocab import load_qwen2_tokenizer
    from causalqwen.tokenization.tokenization_causal_qwen import CausalQwenTokenizer

    return CausalQwenTokenizer.from_qwen_vocab(), load_qwen2_tokenizer()


def measure_tokenizers(budget: Budget) -> dict[str, Any]:
    """Batch-encoding throughput (texts/s) of both tokenizers on the same corpus; calls are interleaved."""
    causal_tok, plain_tok = load_tokenizers()
    texts = number_corpus(budget.tokenizer_texts)
    chars = sum(len(t) for t in texts)
    calls = {"qwen2": lambda: plain_tok(texts), "causalqwen": lambda: causal_tok(texts)}
    timings = time_interleaved(calls, repeats=budget.repeats, warmup=1)
    results = {
        name: {**t.to_dict(), "texts_per_s": len(texts) / t.median, "chars": chars}
        for name, t in timings.items()
    }
    encoded = causal_tok(texts[:1])
    if "numeric_values" not in encoded:
        raise RuntimeError("CausalQwenTokenizer did not return numeric_values")
    return results


# ---------------------------------------------------------------------------------------------- driver


def ratio_row(
    metric: str, base: float, causal: float, higher_is_better: bool, unit: str, target: float | None
) -> list[Any]:
    """[metric, base, CausalQwen, ratio, target, met]; ``target=None`` reports the ratio alone."""
    ratio = causal / base if base else float("nan")
    measured = [metric, f"{base:.4g} {unit}", f"{causal:.4g} {unit}", ratio]
    if target is None:
        return [*measured, "-", "-"]
    met = ratio >= target if higher_is_better else ratio <= target
    bound = ">=" if higher_is_better else "<="
    return [*measured, f"{bound} {target}", "yes" if met else "NO"]


def run_size(
    size: str, budget: Budget, device: torch.device, dtype: torch.dtype, measures: Sequence[str] = MEASURES
) -> dict[str, Any]:
    builders = build_models(size, device, dtype)
    result: dict[str, Any] = {"shape": SHAPES[size]}
    ok, why = fits_in_memory(size, device)
    if "train" in measures and ok:
        result["train"] = {
            f"{rows}x{seq}": measure_train(builders, budget, device, size, rows, seq)
            for rows, seq in budget.train_shapes
        }
    elif "train" in measures:
        result["train_skipped"] = why
        print(f"[perf] {size}: train step skipped ({why})", flush=True)
    if "loss_kernels" in measures:
        result["loss_kernels"] = measure_loss_kernels(size, budget, device)
    if "generate" in measures:
        result["generate"] = measure_generate(builders, budget, device, size)
    return result


def summary_rows(size: str, result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for shape, train in result.get("train", {}).items():
        base = train["qwen2"]
        shown = f"{shape} ckpt" if base["activation_checkpointing"] else shape
        for name, label in (("causalqwen", ""), *((name, label) for name, label, _ in VARIANTS)):
            causal = train[name]
            default = name == "causalqwen"
            memory = [("peak_memory", "peak_memory_bytes")]
            if default and base["memory_meter"] != "rss":
                # The resident set beside the allocated bytes: what the OS sees, freed-but-kept heap included.
                memory.append(("peak_rss", "peak_rss_bytes"))
            rows.append(
                ratio_row(
                    f"train_step {shown}{label}",
                    causal.get("paired_base_step", base["train_step"])["median_s"] * 1e3,
                    causal["train_step"]["median_s"] * 1e3,
                    False,
                    "ms",
                    target_for("train_step", size, shape) if default else None,
                )
            )
            for metric, key in memory:
                rows.append(
                    ratio_row(
                        f"{metric} {shown}{label}",
                        base[key] / 2**20,
                        causal[key] / 2**20,
                        False,
                        "MiB",
                        target_for("peak_memory", size, shape)
                        if default and metric == "peak_memory"
                        else None,
                    )
                )
    kernels = result.get("loss_kernels")
    if kernels is not None:
        # Columns: the eager kernels where the other rows have Qwen2, the compiled ones under CausalQwen.
        rows.append(
            ratio_row(
                f"loss chunk {kernels['rows']}x{kernels['vocab']} fwd+bwd, loss_compile vs eager",
                kernels["eager"]["median_s"] * 1e3,
                kernels["compiled"]["median_s"] * 1e3,
                False,
                "ms",
                None,
            )
        )
    for batch_key, gen in result.get("generate", {}).items():
        for mode in ("standard", "deterministic"):
            row = ratio_row(
                f"generate {batch_key} ({mode})",
                gen["qwen2"]["tokens_per_s"],
                gen[f"causalqwen[{mode}]"]["tokens_per_s"],
                True,
                "tok/s",
                target_for("generate", size),
            )
            rows.append(row)
    return [[size, *row] for row in rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma list of tiny,0.5b (default: tiny,0.5b)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (>= 5)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--skip-tokenizer", action="store_true", help="skip the tokenizer comparison")
    parser.add_argument(
        "--measure",
        default=",".join(MEASURES),
        help=f"comma list of the per-size measurements to run (default: all of {','.join(MEASURES)})",
    )
    args = parser.parse_args(argv)
    measures = args.measure.split(",")
    if not measures or any(m not in MEASURES for m in measures):
        parser.error(f"--measure takes a comma list of {', '.join(MEASURES)}, got {args.measure!r}")
    device = resolve_device(args.device)
    apply_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.repeats is not None and args.repeats < 5 and not args.smoke:
        raise ValueError(f"--repeats must be >= 5 for reported medians, got {args.repeats}")
    sizes = (args.sizes or ("tiny" if args.smoke else "tiny,0.5b")).split(",")
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; expected some of {', '.join(SHAPES)}")
    dtype = getattr(torch, args.dtype)

    results: dict[str, Any] = {"env": environment_info(device), "mode": mode, "targets": TARGETS}
    rows = []
    tok = None
    with wall_clock("perf") as clock:
        for size in sizes:
            with wall_clock(f"perf {size}"):
                budget = budget_for(mode, size, args.repeats)
                results[size] = run_size(size, budget, device, dtype, measures)
                results[size]["budget"] = vars(budget)
            rows += summary_rows(size, results[size])
        if not args.skip_tokenizer:
            try:
                with wall_clock("perf tokenizer"):
                    tok = measure_tokenizers(budget_for(mode, "tiny", args.repeats))
            except ImportError as err:
                # The tokenization package is optional for the model ratios: report the gap, keep the rest.
                results["tokenizer_skipped"] = f"tokenization package unavailable: {err}"
                print(f"[perf] tokenizer comparison skipped: {err}", flush=True)
                tok = None
        if tok is not None:
            results["tokenizer"] = tok
            row = ratio_row(
                "tokenizer",
                tok["qwen2"]["texts_per_s"],
                tok["causalqwen"]["texts_per_s"],
                True,
                "texts/s",
                target_for("tokenizer", "real vocab"),
            )
            rows.append(["real vocab", *row])
    results["wall_s"] = clock["seconds"]
    headers = ["size", "metric", "Qwen2", "CausalQwen", "ratio", "target", "met"]
    print(f"\n## perf ({device}, {args.dtype}, {mode} budget; medians of >= 5 runs, smoke: 2)\n")
    print(markdown_table(headers, rows))
    results["table"] = {"headers": headers, "rows": rows}
    write_results("perf", results, args.out)
    return results


if __name__ == "__main__":
    main()
