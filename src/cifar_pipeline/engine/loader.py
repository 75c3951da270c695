"""Training data on the device, served an epoch at a time: a seeded permutation of the training images,
augmented in one batched pass on the device, cut into batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cifar_pipeline.core.config import AugmentParams
from cifar_pipeline.core.data import Cifar10, split_indices
from cifar_pipeline.core.errors import TrainingError
from cifar_pipeline.engine.augment import augment, to_unit_float


@dataclass
class DeviceData:
    """Train and validation data resident on the device."""

    train_x: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor
    val_x: torch.Tensor  # float [M, 3, 32, 32] in [0, 1]
    val_y: torch.Tensor

    @classmethod
    def from_numpy(cls, train_x, train_y, val_x, val_y, device: torch.device) -> DeviceData:
        def images(a):
            return torch.from_numpy(a).to(device).permute(0, 3, 1, 2).contiguous()

        def labels(a):
            return torch.from_numpy(a).long().to(device)

        return cls(images(train_x), labels(train_y), to_unit_float(images(val_x)), labels(val_y))

    @classmethod
    def split(cls, data: Cifar10, val_size: int, seed: int, device: torch.device) -> DeviceData:
        """The seeded train/validation split of the training images, moved to the device."""
        train_idx, val_idx = split_indices(len(data.train_y), val_size, seed)
        return cls.from_numpy(
            data.train_x[train_idx], data.train_y[train_idx], data.train_x[val_idx], data.train_y[val_idx], device
        )


def steps_per_epoch(n: int, batch_size: int, whole_batches: bool = False) -> tuple[int, int]:
    """(images used, steps) per epoch: BatchNorm can't train on one image, so a last batch of one is
    dropped (the dropped image is in a random place each epoch); with `whole_batches` (several ranks, each
    training on an equal share of every batch) a last partial batch is dropped."""
    if whole_batches:
        n -= n % batch_size
    elif n % batch_size == 1:
        n -= 1
    return n, -(-n // batch_size)


Batch = tuple[torch.Tensor, torch.Tensor]


class Loader:
    """One model's epochs over the device data; every random draw comes from `generator`. Of each batch
    of `batch_size` images, rank r of `world_size` trains on rows [r * local_batch, (r + 1) * local_batch)."""

    def __init__(
        self,
        data: DeviceData,
        batch_size: int,
        aug: AugmentParams,
        generator: torch.Generator,
        layout: Callable[[torch.Tensor], torch.Tensor],
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data, self.batch_size, self.aug, self.generator, self.layout = data, batch_size, aug, generator, layout
        self.images, self.steps = steps_per_epoch(data.train_x.shape[0], batch_size, world_size > 1)
        if self.steps == 0:
            raise TrainingError(
                f"{data.train_x.shape[0]} training images are fewer than one batch of {batch_size} split over "
                f"{world_size} ranks; lower the batch size or raise data.train_limit"
            )
        self.local_batch = batch_size // world_size
        self.offset = rank * self.local_batch
        self.first_flips = first_flips(data.train_x.shape[0], generator) if aug.alternate_flip else None

    def epoch(
        self, start_state: torch.Tensor | None = None, skip: int = 0, number: int = 1
    ) -> tuple[torch.Tensor, Iterator[Batch]]:
        """The generator's state at the epoch's start and the epoch's batches (epoch `number`, from 1). To
        finish an interrupted epoch, pass its start state and the number of batches it already trained on."""
        if start_state is not None:
            self.generator.set_state(start_state)
        state = self.generator.get_state()
        order = torch.randperm(self.data.train_x.shape[0], device=self.data.train_x.device, generator=self.generator)
        flips = None if self.first_flips is None else self.first_flips[order] ^ (number % 2 == 0)
        xs = self.layout(augment(self.data.train_x[order], self.aug, self.generator, flips))
        ys = self.data.train_y[order]
        starts = (i * self.batch_size + self.offset for i in range(skip, self.steps))
        return state, ((xs[s : s + self.local_batch], ys[s : s + self.local_batch]) for s in starts)


def first_flips(n: int, generator: torch.Generator) -> torch.Tensor:
    """Alternating flip: which of the n training images are mirrored in odd epochs (in even ones, the others)."""
    return torch.rand(n, device=generator.device, generator=generator) < 0.5
