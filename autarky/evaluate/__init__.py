"""Evaluation: the one bits-per-byte that training, the benchmarks and the model's metrics report."""

from autarky.evaluate.bpb import Score, bits_per_byte, token_byte_lengths

__all__ = ["Score", "bits_per_byte", "token_byte_lengths"]
