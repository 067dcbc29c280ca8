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
