"""The token cache: exact tokens on disk, compact dtypes, reuse by key, atomic builds, deterministic flips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import random_images
from vfmtok import create_tokenizer, store
from vfmtok.interface import TokenizerSpec
from vfmtok.token_cache import TokenCache, TokenDataset, build_token_cache, disk_dtype


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return create_tokenizer("test_llamagen_vq").eval()


@pytest.fixture(scope="module")
def images(tok) -> torch.Tensor:
    return random_images(10, tok.spec.image_size, seed=3)


class StubTokenizer:
    """Just enough of a tokenizer: fixed indices spread over a large codebook, counting calls."""

    def __init__(self, codebook_size: int, num_tokens: int = 6) -> None:
        self.spec = TokenizerSpec(name="stub", image_size=4, num_tokens=num_tokens, latent_dim=1,
                                  codebook_size=codebook_size, token_grid=None)
        self.training, self.calls = False, 0

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        base = images[:, 0, 0, :].to(torch.int64).sum(-1, keepdim=True)  # [B, 1]
        tokens = (base * 7919 + torch.arange(self.spec.num_tokens)) % self.spec.codebook_size  # [B, L]
        tokens[:, -1] = self.spec.codebook_size - 1  # the largest index always occurs
        return tokens


def test_tokens_and_flipped_tokens_match_the_tokenizer(tmp_path: Path, tok, images: torch.Tensor) -> None:
    labels = torch.arange(10) % 3
    cache = build_token_cache(tok, images, labels, tmp_path / "c", key={"data": "x"}, flip=True, batch_size=4)
    assert len(cache) == 10 and cache.num_tokens == tok.spec.num_tokens and cache.has_flip
    assert cache.tokens().dtype == np.uint16
    assert torch.equal(torch.from_numpy(cache.tokens().astype(np.int64)), tok.tokenize(images))
    flipped = tok.tokenize(images.flip(-1))
    assert torch.equal(torch.from_numpy(cache.tokens("flip").astype(np.int64)), flipped)
    assert not torch.equal(flipped, tok.tokenize(images))  # the flip does change the tokens
    assert np.array_equal(cache.labels, labels.numpy()) and cache.labels.dtype == np.int64
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["tokenizer"] == "test_llamagen_vq" and meta["key"] == {"data": "x"}
    assert meta["spec"] == tok.spec.to_dict() and store.verify(tmp_path / "c") == []  # every file as in the manifest


@pytest.mark.parametrize("k, dtype", [(65536, np.uint16), (70000, np.int32)])
def test_disk_dtype_holds_the_largest_index(tmp_path: Path, k: int, dtype: type) -> None:
    assert disk_dtype(k) == dtype
    stub = StubTokenizer(k)
    imgs = (torch.arange(5 * 3 * 4 * 4) % 251).to(torch.uint8).reshape(5, 3, 4, 4)
    cache = build_token_cache(stub, imgs, torch.zeros(5, dtype=torch.int64), tmp_path, key={}, batch_size=2)
    assert cache.tokens().dtype == dtype
    assert torch.equal(torch.from_numpy(cache.tokens().astype(np.int64)), stub.tokenize(imgs))
    assert int(cache.tokens().max()) == k - 1


def test_reused_when_the_key_matches_rebuilt_otherwise(tmp_path: Path) -> None:
    stub = StubTokenizer(100)
    imgs = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.int64)
    build_token_cache(stub, imgs, labels, tmp_path, key={"a": 1}, batch_size=3)
    assert stub.calls == 2
    build_token_cache(stub, imgs, labels, tmp_path, key={"a": 1}, batch_size=3)
    assert stub.calls == 2  # nothing recomputed
    cache = build_token_cache(stub, imgs, labels, tmp_path, key={"a": 2}, batch_size=3)
    assert stub.calls == 4 and cache.meta["key"] == {"a": 2}
    build_token_cache(stub, imgs, labels, tmp_path, key={"a": 2}, flip=True, batch_size=3)
    assert stub.calls == 8  # the flip setting is part of the identity


def test_interrupted_build_leaves_no_complete_cache(tmp_path: Path) -> None:
    stub = StubTokenizer(100)
    imgs = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.int64)
    build_token_cache(stub, imgs, labels, tmp_path, key={"a": 1}, batch_size=3)
    tokenize = stub.tokenize

    def failing(x: torch.Tensor) -> torch.Tensor:
        if stub.calls >= 3:
            raise RuntimeError("killed")
        return tokenize(x)

    stub.tokenize = failing
    with pytest.raises(RuntimeError, match="killed"):
        build_token_cache(stub, imgs, labels, tmp_path, key={"a": 2}, batch_size=3)
    assert not (tmp_path / "meta.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files are removed
    with pytest.raises(FileNotFoundError, match="not a complete token cache"):
        TokenCache(tmp_path)
    stub.tokenize = tokenize
    assert build_token_cache(stub, imgs, labels, tmp_path, key={"a": 2}, batch_size=3).meta["key"] == {"a": 2}


def test_dataset_flip_choice_is_deterministic_and_balanced(tmp_path: Path) -> None:
    stub = StubTokenizer(1000)
    n = 400
    imgs = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    cache = build_token_cache(stub, imgs, torch.arange(n) % 7, tmp_path, key={}, flip=True, batch_size=128)
    ds, again, other_seed = TokenDataset(cache, seed=1), TokenDataset(cache, seed=1), TokenDataset(cache, seed=2)
    pattern = [ds.use_flip(i) for i in range(n)]
    assert pattern == [again.use_flip(i) for i in range(n)]
    assert pattern != [other_seed.use_flip(i) for i in range(n)]
    assert 0.4 < sum(pattern) / n < 0.6
    ds.set_epoch(1)
    assert pattern != [ds.use_flip(i) for i in range(n)]
    for i in range(20):
        tokens, label = ds[i]
        source = cache.tokens("flip" if ds.use_flip(i) else "plain")[i]
        assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(source.astype(np.int64)))
        assert label.dtype == torch.int64 and int(label) == i % 7
    batch_tokens, batch_labels = ds.batch([3, 5])
    assert batch_tokens.shape == (2, 6) and torch.equal(batch_labels, torch.tensor([3, 5]))
    plain = build_token_cache(stub, imgs, torch.arange(n) % 7, tmp_path / "plain", key={}, batch_size=128)
    assert not any(TokenDataset(plain, seed=1).use_flip(i) for i in range(n))


def test_bad_inputs(tmp_path: Path) -> None:
    stub = StubTokenizer(100)
    imgs = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        build_token_cache(stub, imgs.float(), torch.zeros(4), tmp_path, key={})
    with pytest.raises(ValueError, match="labels"):
        build_token_cache(stub, imgs, torch.zeros(3, dtype=torch.int64), tmp_path, key={})
    with pytest.raises(ValueError, match="empty"):
        build_token_cache(stub, imgs[:0], torch.zeros(0, dtype=torch.int64), tmp_path, key={})
    with pytest.raises(TypeError):
        build_token_cache(stub, imgs, torch.zeros(4, dtype=torch.int64), tmp_path, key={"x": object()})
    cache = build_token_cache(stub, imgs, torch.zeros(4, dtype=torch.int64), tmp_path, key={})
    with pytest.raises(KeyError, match="flip"):
        cache.tokens("flip")
    with pytest.raises(IndexError):
        TokenDataset(cache)[4]


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_cache_is_moved_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    stub = StubTokenizer(100)
    imgs = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.int64)
    first = build_token_cache(stub, imgs, labels, tmp_path / "c", key={"a": 1}, batch_size=3).tokens().copy()
    target = tmp_path / "c" / "tokens.npy"
    raw = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(raw[: len(raw) // 2])
    elif damage == "edit":
        target.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # same size, one bit flipped
    else:
        target.unlink()
    with pytest.raises(ValueError, match="tokens.npy"):
        TokenCache(tmp_path / "c")  # never served
    again = build_token_cache(stub, imgs, labels, tmp_path / "c", key={"a": 1}, batch_size=3)
    assert stub.calls == 4 and np.array_equal(again.tokens(), first)  # recomputed, same tokens
    moved = list((tmp_path / ".quarantine" / "tokens").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("c.")  # kept aside, not deleted
