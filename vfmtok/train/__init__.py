"""Trainers for tokenizers and AR models: one loop (:mod:`vfmtok.train.loop`), one config base, two model kinds."""

from vfmtok.train.ar_trainer import ARTrainConfig, ARTrainer, ARTrainResult, train_ar
from vfmtok.train.config import TrainConfig
from vfmtok.train.loop import Trainer
from vfmtok.train.tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer, TrainResult

__all__ = ["ARTrainConfig", "ARTrainResult", "ARTrainer", "TokenizerTrainConfig", "TokenizerTrainer", "TrainConfig",
           "TrainResult", "Trainer", "train_ar"]
