"""ES2 reproduction library: models, representations, ES2 loss and trainer, attacks, judges, evaluation."""

__version__ = "0.1.0"
