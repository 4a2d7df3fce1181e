"""The zoo's image task: a procedurally generated set of 32x32 RGB images in 10 classes (shapes
and textures), drawn with torch on the device that trains on it, so nothing is downloaded and
a GPU makes the whole set in seconds.

Each image is one figure on a background: a disk, square, triangle, ring, cross or ellipse, or a
disk / square filled with a texture (stripes, checkerboard, concentric rings, dots). Every image
draws its own position, scale, rotation, figure and background colours (kept apart by a minimum
contrast), a background colour gradient, texture frequency and phase, and Gaussian pixel noise of
a random strength, so the classes overlap in colour, place and size and only shape and texture
tell them apart. All of it is vectorised: parameters are drawn for a whole split at once and
images rendered in chunks of ``CHUNK`` with tensor operations (no Python loop per image).

The same seed gives the same set on the same kind of device (torch's generators differ between
the CPU and CUDA); the splits draw from independent streams, so changing one split's size leaves
the others as they were.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from wattwise.errors import BadInput

N_CLASSES = 10
SIZE = 32
CLASS_NAMES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "cross",
    "ellipse",
    "striped disk",
    "checkered square",
    "bullseye",
    "dotted disk",
)
FULL_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
"""The set's split sizes on a GPU."""
CPU_QUICK_SIZES = {"train": 4_000, "val": 1_000, "test": 1_000}
"""The shrunk split sizes of a quick run on a CPU."""
CHUNK = 8_192
"""Images rendered per tensor pass (bounds the memory of the temporaries: ~40 MB each)."""
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
_MEAN, _STD = 0.5, 0.3  # images lie in [0, 1]; this roughly centres and scales them


def check_sizes(sizes: dict[str, int]) -> dict[str, int]:
    """BadInput unless ``sizes`` gives a positive whole number for train, val and test."""
    if set(sizes) != set(_SPLIT_STREAM) or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes.values()
    ):
        raise BadInput(
            f"sizes={sizes!r}: expected {{'train': N, 'val': N, 'test': N}} with whole numbers >= 1"
        )
    return dict(sizes)


def generate(
    n: int, *, seed: int = 0, split: str = "train", device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of ``split`` as ``(x, y)``: ``x`` float32 ``(n, 3, 32, 32)`` standardised
    (about mean 0, std 1), ``y`` int64 class labels, balanced (each class ``n // 10`` or one
    more), both on ``device``."""
    if split not in _SPLIT_STREAM:
        raise BadInput(f"split={split!r}: expected one of {list(_SPLIT_STREAM)}")
    check_sizes({"train": n, "val": 1, "test": 1})
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed * 3 + _SPLIT_STREAM[split])

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen, device=device)

    y = torch.arange(n, device=device) % N_CLASSES
    y = y[torch.randperm(n, generator=gen, device=device)]
    params = {
        "y": y,
        "cx": uniform(-0.3, 0.3),
        "cy": uniform(-0.3, 0.3),
        "scale": uniform(0.55, 0.9),
        "angle": uniform(0.0, 2 * math.pi),
        "freq": uniform(2.5, 4.0),
        "phase": uniform(0.0, 2 * math.pi),
        "noise": uniform(0.02, 0.12),
        "bg": uniform(0.0, 1.0, 3),
        "gradient": uniform(-0.25, 0.25, 2, 3),
    }
    # The figure's colour: the background's moved by at least 0.4 in a random direction, so
    # every figure stands out, by more or less, whatever its colour.
    shift = torch.randn(n, 3, generator=gen, device=device)
    shift = shift / shift.norm(dim=1, keepdim=True).clamp_min(1e-6) * uniform(0.4, 0.9, 1)
    params["fg"] = (params["bg"] + shift).clamp(0.0, 1.0)
    x = torch.empty(n, 3, SIZE, SIZE, device=device)
    for start in range(0, n, CHUNK):
        part = {k: v[start : start + CHUNK] for k, v in params.items()}
        noise = torch.randn(len(part["y"]), 3, SIZE, SIZE, generator=gen, device=device)
        x[start : start + CHUNK] = _render(part, noise)
    return (x - _MEAN) / _STD, y


def _render(p: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] for one chunk of parameters (each a tensor with a leading image axis)."""
    device = noise.device
    axis = (torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5) / SIZE * 2 - 1
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")  # (32, 32), in [-1, 1]
    gx, gy = gx[None], gy[None]

    def col(name: str) -> torch.Tensor:
        return p[name][:, None, None]

    cos, sin = torch.cos(col("angle")), torch.sin(col("angle"))
    dx, dy = (gx - col("cx")) / col("scale"), (gy - col("cy")) / col("scale")
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # the figure's own rotated frame
    r = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    f, phase = col("freq") * math.pi, col("phase")
    masks = torch.stack(
        [
            r < 0.85,  # disk
            box < 0.7,  # square
            (v > -0.5) & (math.sqrt(3) * u.abs() + v < 0.9),  # triangle
            (r > 0.5) & (r < 0.9),  # ring
            ((u.abs() < 0.25) | (v.abs() < 0.25)) & (box < 0.9),  # cross
            (u / 0.95) ** 2 + (v / 0.42) ** 2 < 1,  # ellipse
            (torch.sin(f * u + phase) > 0) & (r < 0.9),  # striped disk
            (torch.sin(f * u + phase) * torch.sin(f * v + phase) > 0) & (box < 0.8),  # checkers
            (torch.sin(f * r + phase) > 0) & (r < 0.95),  # bullseye
            (torch.sin(f * u + phase) * torch.sin(f * v + phase) > 0.45) & (r < 0.9),  # dots
        ],
        dim=1,
    )  # (n, 10, 32, 32)
    mask = masks.gather(1, p["y"][:, None, None, None].expand(-1, 1, SIZE, SIZE)).float()
    ramp = gx[:, None] * p["gradient"][:, 0, :, None, None]
    ramp = ramp + gy[:, None] * p["gradient"][:, 1, :, None, None]
    background = p["bg"][:, :, None, None] + ramp  # (n, 3, 32, 32)
    image = background * (1 - mask) + p["fg"][:, :, None, None] * mask
    return (image + p["noise"][:, None, None, None] * noise).clamp(0.0, 1.0)


class _Batches(Dataset):
    """Tensors indexed a whole batch at a time (the sampler yields lists of indices), so a
    batch is one gather on the tensors' device, not a Python loop over samples and a collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.tensors = (x, y)

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.tensors
        index = torch.as_tensor(indices, device=x.device)
        return x[index], y[index]


class ImagesDataModule(pl.LightningDataModule):
    """The generated image set as a LightningDataModule. The images are made in ``setup`` on the
    trainer's device (the CPU without a trainer) and stay there; the training order is shuffled
    by a seeded generator. ``sizes`` defaults to ``FULL_SIZES``."""

    def __init__(
        self,
        batch_size: int = 256,
        *,
        seed: int = 0,
        sizes: dict[str, int] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size={batch_size!r}: expected a positive integer")
        self.batch_size = batch_size
        self.seed = seed
        self.sizes = check_sizes(sizes if sizes is not None else FULL_SIZES)
        self.device = device
        self.datasets: dict[str, _Batches] = {}
        self.generation_s: float | None = None
        """Seconds the set took to generate (the device synchronised), once made."""
        self.made_on: str | None = None
        """The device the set was made on, once made."""

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        import time

        device = self.device
        if device is None:
            trainer = getattr(self, "trainer", None)
            device = trainer.strategy.root_device if trainer is not None else "cpu"
        device = torch.device(device)
        t0 = time.perf_counter()
        for split, n in self.sizes.items():
            self.datasets[split] = _Batches(
                *generate(n, seed=self.seed, split=split, device=device)
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.generation_s = time.perf_counter() - t0
        self.made_on = str(device)

    def _loader(self, name: str, *, shuffle: bool) -> DataLoader:
        data = self.datasets[name]
        if shuffle:
            sampler = RandomSampler(data, generator=torch.Generator().manual_seed(self.seed))
        else:
            sampler = SequentialSampler(data)
        # batch_size=None: each item the sampler yields is already a batch of indices
        return DataLoader(
            data, sampler=BatchSampler(sampler, self.batch_size, drop_last=False), batch_size=None
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
