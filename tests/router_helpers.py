"""Shared by the router test files: the tiny router shape (seconds per training run on CPU)."""

TINY_ROUTER = dict(d_tool=24, d_resource=8, encoder_hidden_size=16, encoder_state_size=4, num_attention_heads=4,
                   latency_hidden_size=8, dropout=0.0)  # fmt: skip
