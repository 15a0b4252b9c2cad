"""Metrics: reconstruction (PSNR, SSIM), codebook statistics, FID/KID/IS/precision-recall, probing, throughput."""
