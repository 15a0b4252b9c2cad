"""Baseline tokenizers (taming VQGAN, LlamaGen VQ) behind the vfmtok interface.

Registry names: ``<family>_f<downsampling>_k<codebook size>[_<size tag>]``.

* ``vqgan_f16_k1024``, ``vqgan_f16_k16384``: the released taming ImageNet f16 models (256 px, 16x16 tokens).
* ``llamagen_vq_f16_k16384``, ``llamagen_vq_f8_k16384``: LlamaGen VQ-16 / VQ-8 (256 px, 16x16 / 32x32 tokens).
* ``vqgan_f4_k1024_cifar``, ``llamagen_vq_f4_k4096_cifar``: small CIFAR-10 configurations (32 px input,
  8x8 = 64 tokens).
* ``test_vqgan``, ``test_llamagen_vq``: tiny variants for tests (16 px, 4x4 tokens).

Every entry point takes keyword overrides of the constructor defaults (e.g. ``image_size=384`` gives a
24x24 grid with the same weights). Official checkpoints load with ``vfmtok.load_official("vqgan", path)`` and
``vfmtok.load_official("llamagen_vq", path)``.
"""
