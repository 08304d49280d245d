"""Curvature of the loss: Hessian-vector products, traces and spectra.

HVPs are forward-over-reverse products over parameter pytrees, optionally
restricted to a subset of leaves; on top of them: Hutchinson traces per layer
(HAWQ-V2), power iteration and Lanczos for the top eigenvalues, and stochastic
Lanczos quadrature for the spectral density. Each HVP is one compiled program,
shared by all of them, and runs data-parallel on a batch sharded over the mesh.
Also the per-block statistics of Signal Propagation Plots (:func:`block_statistics`).
"""

from archjax.analysis.hessian import (
    TraceEstimate,
    classifier_loss,
    hutchinson_trace,
    hvp,
    module_path,
    param_paths,
    stack_batches,
)
from archjax.analysis.signal import block_statistics
from archjax.analysis.spectrum import (
    SpectralDensity,
    lanczos_tridiagonal,
    power_iteration,
    spectral_density,
    top_eigenvalues,
)

__all__ = [
    "SpectralDensity",
    "TraceEstimate",
    "block_statistics",
    "classifier_loss",
    "hutchinson_trace",
    "hvp",
    "lanczos_tridiagonal",
    "module_path",
    "param_paths",
    "power_iteration",
    "spectral_density",
    "stack_batches",
    "top_eigenvalues",
]
