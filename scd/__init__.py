"""Separable Causal Diffusion (SCD) and the Causal DiT baseline for streaming video world models."""
