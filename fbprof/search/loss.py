"""The latency-aware losses of the search.

* FBNet (default): ``L = CE * alpha * log(LAT)**beta`` with LAT in microseconds, alpha 0.2,
  beta 0.6 (Wu et al. 2019). The log is taken first, then the power: ``(log LAT)**beta``; a known
  reimplementation bug computes ``log(LAT**beta) = beta * log LAT`` instead, which is
  :func:`buggy_fbnet_loss` here only so that a test can tell the two apart.
* target (``--target-ms T``): ``L = CE + lambda * log(LAT / T)**2 + lambda * log(LAT_peak / T)**2``. The
  squared log-ratio is 0 at LAT = T and symmetric in relative terms (10% over costs as much as 10%
  under), so it pulls the latency *towards* the budget from both sides rather than only down; lambda
  (``--target-weight``, 2.0 by default) sets how hard against the cross-entropy. The first term uses
  the sampled architecture's relaxed latency (so the whole distribution moves); the second uses
  ``LAT_peak = fixed + sum softmax(theta / 0.1) * LUT``, a differentiable stand-in for the latency of
  the most likely architecture, which is the one reported (without it the distribution's mean
  meets the budget while its per-layer argmax drifts to the cheap candidates).

LAT is the differentiable ``fixed + sum_l sum_i m_l,i * LUT(l, i)`` (stem, head, pool and FC
make up ``fixed``), computed by :func:`relaxed_latency`.
"""

from __future__ import annotations

import torch

__all__ = ["ALPHA", "BETA", "fbnet_loss", "buggy_fbnet_loss", "target_loss", "relaxed_latency"]

ALPHA = 0.2
BETA = 0.6


def relaxed_latency(m: torch.Tensor, lat: torch.Tensor, fixed_us: float) -> torch.Tensor:
    """``fixed + sum(m * LUT)`` in microseconds (``m``: layers x candidates)."""
    return fixed_us + (m * lat).sum()


def fbnet_loss(ce: torch.Tensor, lat_us: torch.Tensor, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """FBNet's ``CE * alpha * (log LAT)**beta`` (LAT in µs, clamped to > 1 µs so that the log is positive)."""
    return ce * alpha * torch.log(lat_us.clamp_min(1.0 + 1e-3)) ** beta


def buggy_fbnet_loss(ce: torch.Tensor, lat_us: torch.Tensor, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """The reimplementation bug ``CE * alpha * log(LAT**beta)`` -- NOT used; kept for the test that guards against it."""
    return ce * alpha * torch.log(lat_us.clamp_min(1.0 + 1e-3) ** beta)


def target_loss(ce: torch.Tensor, lat_us: torch.Tensor, target_us: float, weight: float = 2.0) -> torch.Tensor:
    """``CE + weight * log(LAT / target)**2``: pulls LAT towards the target from both sides."""
    return ce + weight * torch.log(lat_us / target_us) ** 2
