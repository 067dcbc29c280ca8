import math

import numpy as np
import pytest
import torch

from edgeseg.train.metrics import ConfusionMatrix, HD95Meter, hd95


def test_hand_computed_two_classes():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    m = cm.compute()
    # class 0: tp 1, fp 0, fn 1 -> IoU 1/2; class 1: tp 2, fp 1, fn 0 -> IoU 2/3
    assert m.per_class_iou == pytest.approx([0.5, 2 / 3])
    assert m.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.pixel_acc == pytest.approx(0.75)
    assert m.per_class_dice == pytest.approx([2 / 3, 0.8])
    assert m.mean_dice == pytest.approx((2 / 3 + 0.8) / 2)


def test_ignore_index_and_absent_class():
    target = torch.tensor([0, 0, 255, 255])
    pred = torch.tensor([0, 0, 1, 2])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred, target)
    m = cm.compute()
    assert m.per_class_iou[0] == 1.0
    assert math.isnan(m.per_class_iou[1]) and math.isnan(m.per_class_iou[2])  # never seen
    assert m.miou == 1.0 and m.pixel_acc == 1.0


def test_accumulates_over_batches_like_one_big_batch():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, (4, 16, 16))
    p = rng.integers(0, 5, (4, 16, 16))
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    for i in range(4):
        a.update(p[i], t[i])
    b.update(p, t)
    assert torch.equal(a.mat, b.mat)


def test_false_positive_on_class_absent_from_truth_counts():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert cm.compute().per_class_iou == [0.5, 0.0]


def test_hd95_of_shifted_square():
    a = np.zeros((64, 64), bool)
    a[10:30, 10:30] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, a) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a)))


def test_hd95_meter_skips_missing_classes():
    m = HD95Meter(3)
    t = np.zeros((32, 32), np.uint8)
    t[8:24, 8:24] = 1
    m.update(t.copy(), t)
    res = m.compute()
    assert res[0] == 0.0 and res[1] == 0.0 and math.isnan(res[2])
