"""Hyperparameter search over sctrain runs (``python -m sctrain.tune``), on Optuna."""
