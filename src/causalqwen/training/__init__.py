"""Training utilities: dataset builders, collators, Trainer subclasses and CLIs for both model families.

Modeling never imports this package (a model loads without ``datasets``/``accelerate``); import the
submodules directly, e.g. ``from causalqwen.training.trainer import CausalQwenTrainer``.
"""
