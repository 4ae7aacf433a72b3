"""Shared by the model test files: a saved model's forward run as remote code, in a process without the package."""

import os
import subprocess
import sys
from pathlib import Path

import torch


def forward_as_remote_code(directory: Path, inputs: dict, field: str) -> torch.Tensor:
    """Load ``directory`` with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` in a fresh interpreter
    that must not import ``causalqwen``, run ``model(**inputs)`` without gradients and return its ``field``."""
    torch.save(inputs, directory / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        f"m = AutoModel.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()\n"
        "assert 'causalqwen' not in sys.modules, 'package was imported'\n"
        f"inputs = torch.load({str(directory / 'inputs.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(**inputs).{field}, {str(directory / 'out.pt')!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "USE_HUB_KERNELS": "0", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=directory, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(directory / "out.pt")
