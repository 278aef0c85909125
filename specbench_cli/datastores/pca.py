"""DReSD's key transform: z-score per dimension, PCA to a few dimensions, L2 norm.

The scaling and the PCA are fitted from streamed sums (one pass over the sample; the sample never
sits in memory as a matrix of moments), then applied in numpy (tests, CPU) or in torch on the
model's device (queries at eval time never leave the GPU to be projected).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..types import SpecbenchError


@dataclass
class KeyTransform:
    """z-score per dimension -> PCA to `components.shape[0]` dims -> L2 norm (DReSD's key recipe)."""

    mean: np.ndarray  # (H,) float32
    std: np.ndarray  # (H,) float32
    components: np.ndarray  # (dim, H) float32, rows are unit eigenvectors, largest variance first
    explained_variance: float = float("nan")  # share of the z-scored variance the dims keep

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, H) -> (n, dim) float32 with unit rows (numpy; tests and CPU use)."""
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return l2_normalise(z @ self.components.T)

    def to_torch(self, device: Any) -> TorchTransform:
        return TorchTransform(self, device)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"mean": self.mean, "std": self.std, "components": self.components}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> KeyTransform:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["mean"], t["std"], t["components"])


class TorchTransform:
    """The same transform with its tensors on the model's device: a query never leaves the GPU to be projected."""

    def __init__(self, transform: KeyTransform, device: Any):
        import torch

        self.mean = torch.from_numpy(transform.mean).to(device)
        self.std = torch.from_numpy(transform.std).to(device)
        self.components_t = torch.from_numpy(np.ascontiguousarray(transform.components.T)).to(device)

    def __call__(self, h: Any) -> Any:
        import torch

        y = ((h.float() - self.mean) / self.std) @ self.components_t
        return torch.nn.functional.normalize(y, dim=-1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class MomentAccumulator:
    """Running sums of x and x x^T in float64 on the device, from which the scaling and PCA are fitted.

    The covariance of the z-scored keys is the raw covariance divided by std_i * std_j, so one pass of
    sums gives both the scaling and the PCA (DReSD: torch_pca with svd_solver="covariance_eigh").
    """

    def __init__(self, hidden: int, device: Any):
        import torch

        self.n = 0
        self.sum = torch.zeros(hidden, dtype=torch.float64, device=device)
        self.outer = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)

    def add(self, x: Any) -> None:
        x = x.double()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def fit(self, dim: int) -> KeyTransform:
        import torch

        if self.n < 2:
            raise SpecbenchError(f"the corpus gave {self.n} key(s); the PCA needs at least 2")
        mean = self.sum / self.n
        cov = self.outer / self.n - torch.outer(mean, mean)
        var = cov.diagonal().clamp(min=0)
        # A dimension that never varies (or varies at rounding level) keeps std 1: dividing by ~0
        # would blow rounding noise up to unit variance.
        std = torch.where(var > 1e-12 * var.max().clamp(min=1e-30), var.sqrt(), torch.ones_like(var))
        corr = cov / torch.outer(std, std)
        eigvals, eigvecs = torch.linalg.eigh(corr)  # ascending
        order = torch.argsort(eigvals, descending=True)[:dim]
        comps = eigvecs[:, order].T.contiguous()  # (dim, H)
        # Eigenvectors have no preferred sign; fix it (largest |entry| positive) so builds are reproducible.
        pivot = comps.abs().argmax(dim=1)
        signs = torch.sign(comps.gather(1, pivot[:, None]))
        comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
        total = eigvals.clamp(min=0).sum()
        kept = eigvals[order].clamp(min=0).sum()
        return KeyTransform(
            mean.float().cpu().numpy(),
            std.float().cpu().numpy(),
            comps.float().cpu().numpy(),
            float(kept / total) if total > 0 else float("nan"),
        )


def fit_transform(x: np.ndarray, dim: int) -> KeyTransform:
    """Fit the scaling + PCA on an in-memory (n, H) sample (tests, small stores)."""
    import torch

    acc = MomentAccumulator(x.shape[1], "cpu")
    acc.add(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return acc.fit(dim)
