"""Helpers shared by the tests (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

import torch


def perturb(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Add Gaussian noise to every weight. adaLN-Zero starts every residual branch and the output at zero, so an
    untrained model ignores its inputs; perturbed, its outputs depend on everything and the tests can fail."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model
