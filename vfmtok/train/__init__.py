"""Trainers for tokenizers and AR models, and their shared utilities."""

from vfmtok.train.ar_trainer import ARTrainConfig, ARTrainResult, train_ar
from vfmtok.train.tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer, TrainResult

__all__ = ["ARTrainConfig", "ARTrainResult", "TokenizerTrainConfig", "TokenizerTrainer", "TrainResult", "train_ar"]
