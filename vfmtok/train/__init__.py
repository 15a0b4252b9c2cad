"""Trainers for tokenizers and AR models, and their shared utilities."""

from vfmtok.train.tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer, TrainResult

__all__ = ["TokenizerTrainConfig", "TokenizerTrainer", "TrainResult"]
