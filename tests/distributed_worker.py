"""One training run for the distributed-equivalence tests (``tests/test_distributed.py``), as a script.

Run alone (one process) or under ``torchrun --nproc_per_node 2`` (gloo on the CPU): the package's own Trainer
subclasses train a tiny model for a few steps on a fixed, ragged dataset; the main process writes the final
trainable parameters (``params.safetensors``) and the per-step losses (``log.json``) to ``--out``.

    python tests/distributed_worker.py --family causal --batch 4 --out /tmp/one
    torchrun --nproc_per_node 2 tests/distributed_worker.py --family causal --batch 2 --out /tmp/two

``--broken`` runs a negative control the tests must detect: ``no-loss-scale`` drops the world-size factor that
compensates DDP's gradient averaging; ``skip-chunk`` makes the second process skip its last loss chunk.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

FAMILIES = ("causal", "lora", "router")
# A stalled gloo collective fails after this many seconds (naming gloo) instead of the default 30 minutes, so
# the test harness can tell a stall from a slow run and retry it.
GLOO_TIMEOUT = 120


def causal_rows(tokenizer, data: str = "mixed") -> list[dict]:
    """``mixed``: 32 ragged rows (prompts of different lengths; targets with a number, without one, number-only,
    with two numbers). ``extremes``: 8 rows, 5 whose only label is ``<NUM>``, 2 without any number and 1 with no
    label at all: with one row per process and two processes over one epoch, some step pairs a ``<NUM>``-only
    batch with another kind (5 is odd) and some process gets a fully ignored batch."""
    if data == "extremes":
        targets = [" 11", " unknown.", " 12", "", " 13", " unknown.", " 14", " 15"]
    else:
        targets = [
            [f" {2 * x + 1}.", " unknown.", f" {x}", f" about {x / 4} or {x}."][i % 4] for i, x in _xs(32)
        ]
    rows = []
    for (i, x), target in zip(_xs(len(targets)), targets):
        prompt = f"The price is {x}." + " Hello world!" * (i % 3) + " The loan is"
        p, t = tokenizer(prompt), tokenizer(target)
        ids = p["input_ids"] + t["input_ids"]
        values = p["numeric_values"] + t["numeric_values"]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "numeric_values": values,
                "labels": [-100] * len(p["input_ids"]) + t["input_ids"],
                "numeric_labels": values,
            }
        )
    return rows


def tiny_causal_model(tokenizer, lora: bool, tied: bool = False):
    from model_helpers import tiny_causal_lm  # this script's folder is on sys.path

    model = tiny_causal_lm(tokenizer, tie_word_embeddings=tied)
    if lora:
        from causalqwen.training.lora import apply_lora

        model = apply_lora(model, r=4)
    return model


def _xs(n: int) -> list[tuple[int, int]]:
    return [(i, 3 + 7 * i % 41) for i in range(n)]


def causal_trainer(args, tokenizer, output_dir):
    from datasets import Dataset

    from causalqwen.training.collator import NumericDataCollator
    from causalqwen.training.trainer import CausalQwenTrainer, numeric_training_arguments

    model = tiny_causal_model(tokenizer, args.family == "lora", args.tied)
    training_args = numeric_training_arguments(output_dir, **_common(args))
    trainer_class = _broken(CausalQwenTrainer) if args.broken == "no-loss-scale" else CausalQwenTrainer
    if args.broken == "skip-chunk":
        _skip_last_chunk(rank=int(os.environ.get("RANK", "0")))
    return trainer_class(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(causal_rows(tokenizer, args.data)),
        data_collator=NumericDataCollator(tokenizer),
    )


def fsdp_run(args, tokenizer) -> dict[str, torch.Tensor]:
    """FSDP2 (``fully_shard`` per decoder layer and at the root) in a plain loop; one process runs unsharded.

    accelerate enables FSDP only on accelerator devices (its ``MULTI_CPU`` mode falls back to DDP), so the
    CPU check drives torch's FSDP2 directly: the model, its chunked loss and the |W| cache run on parameters
    all-gathered from shards, and the gradients come back reduce-scattered (averaged over processes). The loss
    of each process is weighted by the global counts of labelled positions and <NUM> targets and multiplied by
    the number of processes, with ``CausalQwenTrainer``'s own ``item_counts`` and ``window_loss``.
    """
    import torch.distributed as dist

    from causalqwen.training.collator import NumericDataCollator
    from causalqwen.training.trainer import NumericItemCounts, item_counts, window_loss

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = tiny_causal_model(tokenizer, args.family == "lora", args.tied)
    inner = model.get_base_model() if args.family == "lora" else model
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=GLOO_TIMEOUT))
        mesh = init_device_mesh("cpu", (world,))
        for layer in inner.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rows, collate = causal_rows(tokenizer, args.data), NumericDataCollator(tokenizer)
    probe = collate(rows[:2])
    probe = {k: v for k, v in probe.items() if k not in ("labels", "numeric_labels")}

    def evaluate() -> list[float]:
        """Token and value scales of a no-grad forward: these read the |W| cache, which must not go stale
        when the head weight is all-gathered from shards."""
        model.eval()
        with torch.no_grad():
            out = model(**probe)
        model.train()
        return [float(out.scale_S.sum()), float(out.value_scale.sum()), float(out.loc_S.sum())]

    before = evaluate()  # fills the cache with the initial |W|
    losses = []
    for step in range(args.steps):
        start = (step * world + rank) * args.batch  # the global batch is the processes' batches in rank order
        batch = collate(rows[start : start + args.batch])
        out = model(**batch)
        local = item_counts(batch["labels"], inner.config.num_token_id)
        counts = local.clone()
        if world > 1:
            dist.all_reduce(counts)
        window = NumericItemCounts(counts[0], counts[1], world)
        loss = window_loss(out, local[0], local[1], window, float(inner.config.reg_lambda))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logged = loss.detach() / world
        if world > 1:
            dist.all_reduce(logged)
        losses.append(float(logged))
    after = evaluate()
    params = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            params[name] = full.detach().contiguous()
    wrapper = type(model).__name__
    return {
        "params": params,
        "losses": losses,
        "wrapper": wrapper,
        "eval_before": before,
        "eval_after": after,
    }


def _broken(trainer_class):
    """The negative control: counts summed over processes but the loss not scaled back up by their number."""
    from causalqwen.training.trainer import NumericItemCounts

    class NoLossScale(trainer_class):
        def get_batch_samples(self, *a, **k):
            batches, counts = super().get_batch_samples(*a, **k)
            if isinstance(counts, NumericItemCounts):
                counts = NumericItemCounts(counts.tokens, counts.numbers, 1)
            return batches, counts

    return NoLossScale


def _skip_last_chunk(rank: int, rows: int = 4) -> None:
    """The negative control for a process that skips a loss chunk: the loss runs in chunks of ``rows`` positions
    on every process (the tiny vocabulary would otherwise give one chunk), and process 1 drops its last one. Every
    parameter still gets a gradient, so DDP raises nothing: only the comparison with one process can see it."""
    from causalqwen.modeling import loss, modeling_causal_qwen

    modeling_causal_qwen.chunk_rows = lambda chunk_size, vocab_size: rows
    if rank == 1:
        starts = loss._ChunkSpec.starts
        loss._ChunkSpec.starts = lambda spec: starts(spec)[:-1] if len(starts(spec)) > 1 else starts(spec)


def router_rows() -> list[dict]:
    """Queries over a small catalogue: each row offers its positive tool and two others (ragged tool lists)."""
    tools = [
        ("get_weather: current weather for a city", [0.2, 0.1, 0.0, 0.0, 1.0, 0.5]),
        ("convert_currency: convert an amount between currencies", [0.1, 0.1, 0.0, 0.0, 1.0, 0.2]),
        ("transcribe_audio: speech to text for an audio file", [2.0, 4.0, 1.0, 2.0, 0.0, 3.0]),
        ("translate_text: translate text into another language", [0.5, 1.0, 0.0, 0.5, 1.0, 1.0]),
        ("resize_image: scale an image to a given size", [0.3, 0.5, 0.0, 0.2, 0.0, 0.4]),
    ]
    queries = [
        ("what is the weather in Paris", 0),
        ("how many euros is 40 dollars", 1),
        ("turn this recording into text", 2),
        ("say this sentence in French", 3),
        ("make the photo 200 pixels wide", 4),
        ("is it raining in Oslo", 0),
        ("convert 10 pounds to yen", 1),
        ("write down what the speaker says", 2),
    ]
    rows = []
    for i, (query, positive) in enumerate(queries * 2):
        offered = [positive, (positive + 1 + i % 3) % 5] + ([(positive + 4) % 5] if i % 2 else [])
        rows.append(
            {
                "id": str(i),
                "query": query,
                "tool_texts": [tools[t][0] for t in offered],
                "resource_vectors": [tools[t][1] for t in offered],
                "labels": [1.0] + [0.0] * (len(offered) - 1),
                "latency": [0.1 * (1 + t) if i % 3 else -1.0 for t in offered],
                "runtime_load": 0.5,
            }
        )
    return rows


def router_trainer(args, output_dir):
    from datasets import Dataset
    from transformers import TrainingArguments

    from causalqwen.modeling.modeling_tool_router import ToolRouterModel
    from causalqwen.training.minilm import load_router_tokenizer
    from causalqwen.training.router_trainer import RouterDataCollator, RouterTrainer, router_config_for

    tokenizer = load_router_tokenizer()
    torch.manual_seed(0)
    # No dropout: each process draws its own masks, which one process with accumulation would draw differently.
    config = router_config_for(tokenizer, d_tool=24, d_resource=8, encoder_hidden_size=32, dropout=0.0)
    model = ToolRouterModel(config)
    settings = {
        **_common(args),
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "report_to": "none",
    }
    return RouterTrainer(
        model=model,
        args=TrainingArguments(output_dir=output_dir, save_strategy="no", **settings),
        train_dataset=Dataset.from_list(router_rows()),
        data_collator=RouterDataCollator(tokenizer, shared_tool_set=True),
    )


def _common(args) -> dict:
    return dict(
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.accum,
        max_steps=args.steps,
        # Plain SGD without clipping: the update is proportional to the gradient, so a wrongly scaled gradient
        # (e.g. not averaged over processes) changes the parameters; Adam and clipping would hide a constant factor.
        optim="sgd",
        max_grad_norm=0.0,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.01,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        # CausalQwen: every process must touch every trainable parameter at every step (a process whose batch has
        # no <NUM> input or no label still runs the value encoding and the heads): with this off, DDP fails if one
        # does not. The router keeps the Trainer's default (True): with False, a 2-process gloo run stalled in its
        # first backward (its text encoder is shared by queries and tools, so parameters are used twice per step).
        ddp_find_unused_parameters=args.family == "router",
        ddp_timeout=GLOO_TIMEOUT,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--batch", type=int, required=True, help="rows per process and step")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tied", action="store_true", help="tie the token head to the input embedding")
    parser.add_argument("--data", choices=["mixed", "extremes"], default="mixed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--broken", choices=["no-loss-scale", "skip-chunk"], default=None)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 full shard per decoder layer (plain loop)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer

    if args.fsdp:
        result = fsdp_run(args, build_tiny_tokenizer())
    else:
        output_dir = str(args.out / "trainer")
        if args.family == "router":
            trainer = router_trainer(args, output_dir)
        else:
            trainer = causal_trainer(args, build_tiny_tokenizer(), output_dir)
        trainer.train()
        model = trainer.accelerator.unwrap_model(trainer.model)
        result = {
            "params": {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "wrapper": type(trainer.model_wrapped).__name__,
        }
    if int(os.environ.get("RANK", "0")) == 0:
        save_file(result.pop("params"), str(args.out / "params.safetensors"))
        result["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        (args.out / "log.json").write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process is done (and the main one has written the results)
        # Then leave without tearing gloo down: at interpreter exit its threads aborted a process ("terminate
        # called without an active exception"), and destroy_process_group() left a process hanging after its
        # peer had exited (seen in CI and here). Nothing is left to write.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
