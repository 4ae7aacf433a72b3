"""Quickstart: a ToolPlanner on a CausalQwen backbone plans tool calls under a budget written in the request.

Builds a CPU-sized planner (the offline all-MiniLM-L6-v2 tool tower, a fresh 2-layer CausalQwen over the real
Qwen2.5 vocabulary), trains it on the synthetic planning set through the ``Trainer`` (1,000 steps, about 1.5 minutes
on 2 CPU cores; ``QUICKSTART_STEPS`` overrides it, as the tests do), and plans.
"""

import os
import tempfile

import torch

from causalqwen.training.planner_data import build_synthetic_planning_dataset, plan_metrics
from causalqwen.training.planner_trainer import build_planner, rows_tools, train_planner

torch.set_num_threads(2)
data = build_synthetic_planning_dataset(2000, 50, 200, seed=0)
# build_planner("causal_qwen") is fresh; pass a checkpoint directory (Qwen2 or CausalQwen) and router=<trained router
# directory> to start from trained weights; apply_planner_lora(model) adapts a large backbone with LoRA.
model, processor = build_planner("causal_qwen", seed=0)
with tempfile.TemporaryDirectory() as folder:
    train_planner(
        model,
        processor,
        data["train"],
        folder,
        max_steps=int(os.environ.get("QUICKSTART_STEPS", 1000)),
        learning_rate=2e-3,
        seed=0,
    )
model.eval()

sizes = {
    "tiny": [1, 0.5, 0, 0.02, 0.01, 0.05],
    "large": [8, 32, 1, 1.2, 2.0, 14.0],
}  # cpu, GB, gpu, s, $/1k, B
tools = [{"name": f"{family}_{size}", "text": f"{family}_{size}: {what} ({size} model)", "resources": sizes[size]}
         for family, what in (("transcribe", "transcribe speech audio to text"),
                              ("translate", "translate text between languages")) for size in sizes]  # fmt: skip
for request in ("transcribe the recording of the football match, then translate it into French, with every step "
                "under 100 ms", "transcribe the recording of the football match, with the best quality"):  # fmt: skip
    plan = model.plan(processor, request, tools, runtime_context=[[0.0]])
    print([step.name for step in plan.steps], [round(step.latency, 3) for step in plan.steps])

test = data["test"]
rows = [test[i] for i in range(len(test))]
plans = model.plan(processor, [r["query"] for r in rows], [rows_tools(r) for r in rows],
                   runtime_context=[[r["runtime_load"]] for r in rows])  # fmt: skip
metrics = plan_metrics([p.tools for p in plans], test)
print(f"test exact match {metrics['exact_match']:.2f}, budget compliance {metrics['budget_compliance']:.2f}")
