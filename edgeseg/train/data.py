"""A run's data: train and val sets with their transforms, preloaded when small, and loaders
(and Mean Teacher's unlabeled frames)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from edgeseg.data import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, build_dataset
from edgeseg.data.datasets import DatasetInfo, SegDataset
from edgeseg.errors import EdgesegError
from edgeseg.train import semi
from edgeseg.train.config import TrainConfig
from edgeseg.train.distributed import DistInfo, _seed_worker


def default_input_size(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The dataset's native size rounded to the nearest multiple of 32 (at least 32)."""
    return tuple(max(32, int(round(s / 32)) * 32) for s in image_hw)  # type: ignore[return-value]


def default_crop(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Three quarters of each side, down to a multiple of 32: smaller crops mean more, cheaper
    steps in a time budget (352x480 -> 256x352 on CamVid)."""
    return tuple(max(32, int(0.75 * s) // 32 * 32) for s in input_hw)  # type: ignore[return-value]


@dataclass
class Data:
    """The datasets and loaders of one run."""

    train_set: SegDataset
    val_set: SegDataset
    loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler | None
    input_hw: tuple[int, int]
    crop_hw: tuple[int, int]
    unlabeled: DataLoader | None = None  # Mean Teacher's frames: (weak, strong) views

    @property
    def info(self) -> DatasetInfo:
        return self.train_set.info

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)


def train_loader(
    dataset: Dataset,
    sampler: DistributedSampler | None,
    batch_size: int,
    workers: int,
    world: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """The loader of training batches (``batch_size`` split over ``world`` processes)."""
    per_proc = max(1, batch_size // world)
    return DataLoader(
        dataset,
        per_proc,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(dataset) // world >= per_proc,
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        # Forked workers inherit OpenCV's thread pool half-alive and hang in it; spawned ones
        # start clean (a one-off start-up cost: the workers persist).
        multiprocessing_context="spawn" if workers > 0 else None,
    )


def build_data(
    cfg: TrainConfig,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
    norm: tuple[tuple[float, ...], tuple[float, ...]] = (IMAGENET_MEAN, IMAGENET_STD),
) -> Data:
    """Train and val sets of ``cfg.data`` with their transforms (``norm``: mean and std),
    preloaded when small, and loaders; with ``cfg.unlabeled`` (a video or image folder) also the
    loader of Mean Teacher's frames.

    Val masks stay at native resolution (batch 1 allows images of different sizes); under
    torchrun each process scores a disjoint shard, and the confusion matrices are summed.
    """
    dist_info = dist_info or DistInfo()
    data, input_size, crop, scale = cfg.data, cfg.input_size, cfg.crop, cfg.scale
    batch_size, workers, seed, unlabeled = cfg.batch_size, cfg.workers, cfg.seed, cfg.unlabeled
    mean, std = norm
    train_set, val_set = build_dataset(data, "train"), build_dataset(data, "val")
    input_hw = tuple(input_size) if input_size else default_input_size(val_set[0][0].shape[:2])
    if input_hw[0] % 32 or input_hw[1] % 32:
        raise EdgesegError(f"input_size must be multiples of 32, got {input_hw[0]}x{input_hw[1]}")
    crop_hw = tuple(crop) if crop else default_crop(input_hw)
    ignore = train_set.info.ignore_index
    train_set.transform = TrainTransform(
        crop_hw,
        scale=scale,
        ignore_index=ignore,
        mean=mean,
        std=std,
        base_hw=input_hw,
        photometric=cfg.photometric,
    )
    val_set.transform = EvalTransform(input_hw, mean=mean, std=std)
    if len(train_set) <= 2000:  # decoding PNGs every epoch would dominate a CPU run
        train_set.preload()
        val_set.preload()
    world, rank = dist_info.world, dist_info.rank
    sampler = DistributedSampler(train_set, world, rank, seed=seed) if world > 1 else None
    loader = train_loader(train_set, sampler, batch_size, workers, world, pin_memory)
    shard = Subset(val_set, range(rank, len(val_set), world)) if world > 1 else val_set
    val_loader = DataLoader(shard, 1, shuffle=False, num_workers=0)
    frames = None
    per_proc = max(1, batch_size // world)
    if unlabeled:
        views = TrainTransform(crop_hw, scale=scale, ignore_index=ignore, mean=mean, std=std)
        unlabeled_set = semi.UnlabeledFrames(unlabeled, views, input_hw[0])
        if len(unlabeled_set) < per_proc:
            raise EdgesegError(
                f"{unlabeled} has {len(unlabeled_set)} frames, fewer than a batch ({per_proc})"
            )
        frames = DataLoader(
            unlabeled_set,
            per_proc,
            shuffle=True,
            drop_last=True,
            num_workers=0,
        )
    return Data(train_set, val_set, loader, val_loader, sampler, input_hw, crop_hw, frames)  # type: ignore[arg-type]
