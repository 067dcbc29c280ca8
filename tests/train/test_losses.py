import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.train.losses import LOSSES, build_loss, distillation_loss


@pytest.mark.parametrize("name", LOSSES)
def test_losses_ignore_void_and_reward_correct_predictions(name):
    target = torch.randint(0, 4, (2, 16, 16))
    target[:, :4] = 255
    good = torch.nn.functional.one_hot(target.clamp(0, 3), 4).permute(0, 3, 1, 2).float() * 20
    bad = torch.randn(2, 4, 16, 16)
    loss = build_loss(name, ignore_index=255)
    assert loss(good, target) < 0.05
    assert loss(bad, target) > loss(good, target)
    # garbage in ignored pixels changes nothing
    good2 = good.clone()
    good2[:, :, :4] = torch.randn(2, 4, 4, 16) * 100
    assert loss(good2, target) == pytest.approx(loss(good, target).item(), abs=1e-6)


def test_loss_backprops_with_class_weights():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    build_loss("ohem", 255, torch.tensor([1.0, 2.0, 3.0]))(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_unknown_loss():
    with pytest.raises(EdgesegError, match="did you mean 'ohem'"):
        build_loss("ohm", 255)


def test_distillation_is_zero_on_agreement_and_pulls_the_student_towards_the_teacher():
    teacher = torch.randn(2, 5, 8, 8)
    assert distillation_loss(teacher.clone(), teacher).abs() < 1e-6
    student = torch.randn(2, 5, 8, 8, requires_grad=True)
    before = distillation_loss(student, teacher)
    assert before > 0
    before.backward()
    with torch.no_grad():
        after = distillation_loss(student - 10 * student.grad, teacher)
    assert after < before
    # A teacher at another output stride is resized to the student's logits.
    assert distillation_loss(student, teacher[..., ::2, ::2]).shape == ()


def test_boundary_pixels_are_those_within_the_radius_of_a_label_change():
    from edgeseg.train.losses import boundary_mask

    target = torch.zeros(1, 6, 10, dtype=torch.long)
    target[:, :, 5:] = 1  # a vertical edge between columns 4 and 5
    target[:, 0, 0] = 255  # void is never a boundary pixel itself
    edge = boundary_mask(target, 255, radius=2)[0]
    want = torch.zeros(6, 10, dtype=torch.bool)
    want[:, 3:7] = True  # columns within 2 px of the change
    want[:3, :3] |= True  # and the neighbours of the void pixel, whose window sees 255
    want[0, 0] = False
    assert torch.equal(edge, want)


def test_boundary_weighting_matches_a_hand_computed_mean_and_reduces_to_ce():
    from edgeseg.train.losses import BoundaryWeightedCE, boundary_mask

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :2] = 255
    cw = torch.tensor([1.0, 2.0, 0.5])
    plain = torch.nn.CrossEntropyLoss(weight=cw, ignore_index=255)(logits, target)
    assert BoundaryWeightedCE(255, cw, boundary_weight=0.0)(logits, target) == pytest.approx(
        plain.item(), rel=1e-6
    )
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    w = cw[target.clamp(0, 2)] * valid * (1 + 3.0 * boundary_mask(target, 255, 2))
    want = (ce * w).sum() / w.sum()
    got = BoundaryWeightedCE(255, cw, boundary_weight=3.0)(logits, target)
    assert got == pytest.approx(want.item(), rel=1e-6)


def test_distillation_skips_pixels_without_a_teacher_opinion():
    """Stored logits are NaN over a crop's padding: those pixels neither count nor poison the
    mean, and a teacher with no opinion anywhere gives no loss (not NaN)."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    holed = teacher.clone()
    holed[:, :, :, 4:] = float("nan")
    part = distillation_loss(student, holed)
    assert part == pytest.approx(distillation_loss(student[..., :4], teacher[..., :4]).item())
    assert distillation_loss(student, torch.full_like(teacher, float("nan"))) == 0


@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_distillation_compares_on_the_coarser_grid(hw):
    """A coarser teacher (stored logits) is compared with the student's logits averaged down to
    its grid, a plain pool where the sizes divide and area interpolation where they do not."""
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 5, 8, 8), torch.randn(2, 5, *hw)
    pooled = torch.nn.functional.interpolate(student, size=hw, mode="area")
    want = distillation_loss(pooled, teacher)
    assert distillation_loss(student, teacher).item() == pytest.approx(want.item(), rel=1e-5)
