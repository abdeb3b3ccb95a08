"""Losses: pure documented functions (and small modules where a loss keeps state).

    contrastive   nt_xent, nt_xent_multi, supcon, moco_infonce, mocov3_infonce, nnclr_loss,
                  ressl_loss, dcl_loss (DCL and DCLW), densecl_match, densecl_loss
    sogclr        SogCLRLoss (a per-sample moving-average estimator, in a buffer)
    redundancy    barlow_twins, vicreg, all4one_redundancy, tico_loss (decorrelation of the
                  embedding's dimensions)
    regression    byol, simsiam, fastsiam_loss (prediction of the other views, stop-gradient)
    spectral      mmcr_loss (MMCR: nuclear norms of the views' centroids), total_coding_rate,
                  emp_ssl_loss (EMP-SSL)
    sigreg        sigreg_loss, lejepa_loss (LeJEPA: a sketched test for an isotropic Gaussian)
    distill       DINOLoss (a centre in a buffer), sinkhorn, swav_loss
    cluster       spherical_kmeans, deepclusterv2_loss (DeepCluster V2: k-means targets),
                  smog_loss (SMoG: momentum groups)
    whitening     whiten_cholesky, wmse_loss (W-MSE), whiten_iterative, vibcreg_loss (VIbCReg)
    local         vicregl_loss, nearest_matches, location_grid (VICRegL: VICReg on feature-map
                  positions matched by location and by embedding)
    reconstruction  mae_loss, patchify, random_masking, sincos_pos_embed_2d (MAE: masked
                  patches predicted from the visible ones)
    invariance    gradient_penalty (the sensitivity to the augmentation's nuisance parameters)

Every function documents its tensor shapes, and each is tested against a naive
implementation and the paper's formula (tests/test_losses*.py).
"""
from .cluster import deepclusterv2_loss, smog_loss, spherical_kmeans
from .contrastive import (dcl_loss, densecl_loss, densecl_match, moco_infonce, mocov3_infonce, nnclr_loss, nt_xent, nt_xent_multi, ressl_loss,
                          supcon)
from .distill import DINOLoss, sinkhorn, swav_loss
from .invariance import gradient_penalty
from .local import location_grid, nearest_matches, vicregl_loss
from .reconstruction import mae_loss, patchify, random_masking, sincos_pos_embed_2d
from .redundancy import all4one_redundancy, barlow_twins, tico_loss, vicreg
from .regression import byol, fastsiam_loss, simsiam
from .sigreg import lejepa_loss, sigreg_loss
from .sogclr import SogCLRLoss
from .spectral import emp_ssl_loss, mmcr_loss, total_coding_rate
from .whitening import vibcreg_loss, whiten_cholesky, whiten_iterative, wmse_loss

__all__ = ["all4one_redundancy", "barlow_twins", "byol", "dcl_loss", "deepclusterv2_loss", "densecl_loss", "densecl_match", "emp_ssl_loss", "fastsiam_loss", "mmcr_loss", "tico_loss", "spherical_kmeans", "gradient_penalty", "lejepa_loss", "mae_loss", "patchify", "random_masking", "sincos_pos_embed_2d", "location_grid", "nearest_matches", "moco_infonce", "mocov3_infonce", "nnclr_loss", "nt_xent", "nt_xent_multi",
           "ressl_loss", "sigreg_loss", "simsiam", "sinkhorn", "smog_loss", "supcon", "swav_loss", "total_coding_rate", "vicreg", "vibcreg_loss", "vicregl_loss", "whiten_cholesky", "whiten_iterative", "wmse_loss",
           "DINOLoss", "SogCLRLoss"]
