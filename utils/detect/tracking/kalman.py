"""Constant-velocity Kalman filter on boxes, batched over tracks.

State per track (8 values): ``(cx, cy, a, h, vcx, vcy, va, vh)`` where ``(cx, cy)`` is the box
centre, ``a = w / h`` the aspect ratio and ``h`` the height; velocities are per frame. The
measurement is ``(cx, cy, a, h)``. As in DeepSORT / ByteTrack, the position and velocity noise
standard deviations are proportional to the box height (1/20 and 1/160 of it), so the filter
behaves the same for small and large objects; the aspect ratio gets small fixed noise.

Every method works on a batch of ``K`` tracks: means ``(K, 8)``, covariances ``(K, 8, 8)``.
"""

from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20.0
STD_VELOCITY = 1.0 / 160.0


def xyxy_to_xyah(xyxy: np.ndarray) -> np.ndarray:
    """``(K, 4)`` corner boxes -> ``(K, 4)`` ``(cx, cy, w / h, h)``."""
    xyxy = np.asarray(xyxy, dtype=np.float64)
    w = xyxy[:, 2] - xyxy[:, 0]
    h = np.maximum(xyxy[:, 3] - xyxy[:, 1], 1e-6)
    return np.stack([xyxy[:, 0] + 0.5 * w, xyxy[:, 1] + 0.5 * h, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """``(K, >=4)`` ``(cx, cy, a, h, ...)`` -> ``(K, 4)`` corner boxes."""
    cx, cy, a, h = xyah[:, 0], xyah[:, 1], xyah[:, 2], xyah[:, 3]
    w = a * h
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)


class KalmanBoxFilter:
    """Batched constant-velocity Kalman filter in ``(cx, cy, a, h)`` space (stateless)."""

    def __init__(self, std_position: float = STD_POSITION, std_velocity: float = STD_VELOCITY) -> None:
        self.std_position = std_position
        self.std_velocity = std_velocity

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at ``(K, 4)`` xyah measurements, zero velocity: ``(mean (K,8), cov (K,8,8))``."""
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        mean = np.concatenate([z, np.zeros_like(z)], axis=1)
        h = z[:, 3]
        sp, sv = 2.0 * self.std_position * h, 10.0 * self.std_velocity * h
        std = np.stack([sp, sp, np.full_like(h, 1e-2), sp, sv, sv, np.full_like(h, 1e-5), sv], axis=1)
        cov = np.zeros((len(z), 8, 8))
        idx = np.arange(8)
        cov[:, idx, idx] = std**2
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Advance ``K`` tracks by ``dt`` frames (new arrays; process noise grows linearly with ``dt``)."""
        if len(mean) == 0 or dt <= 0:
            return mean.copy(), cov.copy()
        h = mean[:, 3]
        sp, sv = self.std_position * h, self.std_velocity * h
        var = np.stack([sp, sp, np.full_like(h, 1e-2), sp, sv, sv, np.full_like(h, 1e-5), sv], axis=1) ** 2
        new_mean = mean.copy()
        new_mean[:, :4] += dt * mean[:, 4:]
        # F P F^T with F = [[I, dt I], [0, I]], written blockwise to avoid two (K,8,8) matmuls.
        p11, p12, p21, p22 = cov[:, :4, :4], cov[:, :4, 4:], cov[:, 4:, :4], cov[:, 4:, 4:]
        new_cov = np.empty_like(cov)
        new_cov[:, :4, :4] = p11 + dt * (p12 + p21) + dt * dt * p22
        new_cov[:, :4, 4:] = p12 + dt * p22
        new_cov[:, 4:, :4] = p21 + dt * p22
        new_cov[:, 4:, 4:] = p22
        idx = np.arange(8)
        new_cov[:, idx, idx] += dt * var
        return new_mean, new_cov

    def update(
        self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct ``K`` tracks with their ``(K, 4)`` xyah measurements (new arrays)."""
        if len(mean) == 0:
            return mean.copy(), cov.copy()
        z = np.asarray(measurements, dtype=np.float64).reshape(-1, 4)
        h = mean[:, 3]
        sp = self.std_position * h
        r = np.stack([sp, sp, np.full_like(h, 1e-1), sp], axis=1) ** 2
        idx = np.arange(4)
        s = cov[:, :4, :4].copy()  # H P H^T + R
        s[:, idx, idx] += r
        pht = cov[:, :, :4]  # P H^T, (K, 8, 4)
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1, (K, 8, 4)
        innovation = z - mean[:, :4]
        new_mean = mean + np.einsum("kij,kj->ki", gain, innovation)
        new_cov = cov - gain @ pht.transpose(0, 2, 1)  # P - K S K^T, since K S = P H^T
        return new_mean, new_cov
