"""What a checkpoint and a restore cost in time: one model for everything that has to guess.

A checkpoint freezes the job, then every pod writes its process image to checkpoint storage in
parallel; a restore starts new pods that read their images back. Each takes a fixed latency (freeze,
metadata, sync; or pod start and fetch set-up) plus the image size over a bandwidth. When the image is
split evenly over `pods` writers, each writes `size / pods`; when the pods differ, the largest image
sets the pace.

The Simulated backend uses it to pretend to checkpoint pods on kwok nodes, and the simulator to replay
traces, so both agree on what a checkpoint costs (with their own latencies and bandwidths). A real
backend measures instead: the engine prefers a job's measured checkpoint duration as soon as it has one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True, slots=True)
class CheckpointCostModel:
    latency_s: float
    bandwidth_bytes_per_s: float  # per pod, to checkpoint storage
    restore_latency_s: float
    restore_bandwidth_bytes_per_s: float  # per pod, from checkpoint storage

    def checkpoint_s(self, size_bytes: float, pods: int = 1) -> float:
        """Seconds to checkpoint `size_bytes` split evenly over `pods` pods writing in parallel."""
        return self.latency_s + size_bytes / (self.bandwidth_bytes_per_s * pods)

    def restore_s(self, size_bytes: float, pods: int = 1) -> float:
        """Seconds to restore `size_bytes` split evenly over `pods` new pods reading in parallel."""
        return self.restore_latency_s + size_bytes / (self.restore_bandwidth_bytes_per_s * pods)

    def checkpoint_largest_s(self, image_bytes: Iterable[float]) -> float:
        """Seconds to checkpoint pods with these image sizes: the largest one sets the pace."""
        return self.checkpoint_s(max(image_bytes, default=0))

    def restore_largest_s(self, image_bytes: Iterable[float]) -> float:
        """Seconds to restore pods with these image sizes: the largest one sets the pace."""
        return self.restore_s(max(image_bytes, default=0))
