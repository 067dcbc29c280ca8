"""Batch mixing keeps every label on its pixel: the image encodes its own mask, so any pixel
whose label moved without its colour (or the other way round) is caught."""

from __future__ import annotations

import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.train.mixing import mix_batch

VOID = 255


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four 3-channel images whose first channel is their mask's label (void included) and
    second channel the image's index."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 5, (4, 24, 32), generator=g)
    mask[:, :3, :5] = VOID
    mask[1, 10:14] = VOID
    img = torch.stack(
        [
            mask.float(),
            torch.arange(4.0)[:, None, None].expand(4, 24, 32),
            torch.rand(4, 24, 32, generator=g),
        ],
        1,
    )
    return img, mask


def aligned(img: torch.Tensor, mask: torch.Tensor) -> bool:
    return bool(torch.equal(img[:, 0], mask.float()))


@pytest.mark.parametrize("mode", ["cutmix", "classmix"])
def test_pasted_pixels_bring_their_labels_and_void_stays_void(mode):
    img, mask = _batch()
    g = torch.Generator().manual_seed(1)
    mixed, targets = mix_batch(img, mask, mode, prob=1.0, ignore_index=VOID, gen=g)
    ((out, weight),) = targets
    assert weight == 1.0 and aligned(mixed, out)
    assert (mixed[:, 1] != img[:, 1]).any()  # pixels of other images arrived
    came_from = mixed[:, 1].long()
    source_void = mask[came_from, torch.arange(24)[:, None], torch.arange(32)] == VOID
    assert torch.equal(out == VOID, source_void)  # void exactly where the pixel's source was void


def test_a_planted_shift_fails_the_alignment_check():
    img, mask = _batch()
    mixed, ((out, _),) = mix_batch(img, mask, "cutmix", 1.0, VOID, torch.Generator().manual_seed(1))
    assert aligned(mixed, out)
    assert not aligned(mixed, torch.roll(out, 1, dims=-1))


def test_classmix_moves_whole_classes():
    img, mask = _batch(3)  # every mask holds classes 0-4 and void
    mixed, ((out, _),) = mix_batch(
        img, mask, "classmix", 1.0, VOID, torch.Generator().manual_seed(4)
    )
    came_from = mixed[:, 1].long()
    partners = []
    for i in range(4):
        pasted = came_from[i] != i
        # with this seed every image is paired with another, and pixels of it arrive
        assert pasted.any(), f"nothing was pasted into image {i}"
        sources = came_from[i][pasted].unique().tolist()
        assert len(sources) == 1, f"image {i} got pixels from images {sources}"
        j = sources[0]
        partners.append(j)
        classes = out[i][pasted].unique()
        # half the partner's 5 classes (rounded up), never void; every pixel of those classes
        assert VOID not in classes.tolist() and len(classes) == 3
        assert torch.equal(pasted, torch.isin(mask[j], classes))
        # pasted pixels are the partner's, image and label; the others are left as they were
        assert torch.equal(mixed[i][:, pasted], img[j][:, pasted])
        assert torch.equal(out[i][pasted], mask[j][pasted])
        assert torch.equal(mixed[i][:, ~pasted], img[i][:, ~pasted])
        assert torch.equal(out[i][~pasted], mask[i][~pasted])
    assert sorted(partners) == [0, 1, 2, 3]  # the batch mixed with a shuffled copy of itself


def test_mixup_blends_images_and_weights_both_masks():
    img, mask = _batch()
    torch.manual_seed(0)
    mixed, targets = mix_batch(img, mask, "mixup", 1.0, VOID, torch.Generator().manual_seed(1))
    (a, wa), (b, wb) = targets
    assert torch.equal(a, mask) and wa + wb == pytest.approx(1.0)
    other = mixed[:, 1] - wa * torch.arange(4.0)[:, None, None]  # wb * the partner's index
    partner = (other / wb).round().long()[:, 0, 0]
    assert torch.equal(b, mask[partner])
    assert torch.allclose(mixed, wa * img + wb * img[partner], atol=1e-5)


def test_no_mixing_below_the_probability_and_bad_names_are_refused():
    img, mask = _batch()
    same, ((out, _),) = mix_batch(img, mask, "cutmix", 0.0, VOID)
    assert same is img and out is mask
    with pytest.raises(EdgesegError, match="did you mean 'cutmix'"):
        mix_batch(img, mask, "cutmx", 1.0, VOID)
