"""Mean Teacher: the consistency loss, the teacher being the student's weight average, and a
run on unlabeled video end to end."""

from __future__ import annotations

import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.train import semi
from edgeseg.train.trainer import TrainConfig, train

TINY = dict(
    data="synthetic:16",
    model="mbv3_unet_small",
    batch_size=2,
    input_size=(64, 128),
    crop=(64, 128),
    workers=0,
    quiet=True,
)


def test_consistency_is_zero_on_agreement_and_only_counts_confident_pixels():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 6, 6) * 5
    assert semi.consistency_loss(teacher.clone(), teacher, 0.0) == 0
    student = torch.randn(2, 4, 6, 6)
    assert semi.consistency_loss(student, teacher, 0.0) > 0
    assert semi.consistency_loss(student, teacher * 0, 0.9) == 0  # a uniform teacher is unsure
    sure = teacher.softmax(1).max(1).values >= 0.9
    part = semi.consistency_loss(student, teacher, 0.9)
    assert 0 < part < semi.consistency_loss(student, teacher, 0.0) and sure.any()


def test_the_consistency_weight_ramps_up_then_holds():
    assert semi.ramp_weight(0.0, 2.0) == pytest.approx(2.0 * 2.718281828**-5, rel=1e-6)
    assert semi.ramp_weight(0.15, 2.0) < semi.ramp_weight(0.29, 2.0) < 2.0
    assert semi.ramp_weight(0.3, 2.0) == semi.ramp_weight(0.9, 2.0) == 2.0


def test_the_teacher_is_the_weight_average_of_the_student(tmp_path, monkeypatch):
    """Every step's teacher is the run's weight average (what is validated and saved), and that
    average follows the student by the EMA rule."""
    from edgeseg.data.synthetic import write_clip

    clip = write_clip(tmp_path / "unlabeled.mp4", 8, (64, 128), fps=25)
    seen: list[torch.nn.Module] = []
    real = semi.teacher_logits

    def spy(teacher, weak):
        seen.append(teacher)
        return real(teacher, weak)

    monkeypatch.setattr(semi, "teacher_logits", spy)
    student_steps: list[dict] = []
    import edgeseg.train.trainer as trainer

    step = trainer.train_one_epoch

    def record(loop, loader, epoch, on_batch=None):
        def after(loss):
            student_steps.append({k: v.clone() for k, v in loop.model.state_dict().items()})
            if on_batch:
                on_batch(loss)

        return step(loop, loader, epoch, after)

    monkeypatch.setattr(trainer, "train_one_epoch", record)
    captured = {}
    real_finish = trainer._finish

    def finish(run):
        captured["loop"] = run.loop
        return real_finish(run)

    monkeypatch.setattr(trainer, "_finish", finish)
    train(TrainConfig(**TINY, out=str(tmp_path / "run"), epochs=1, unlabeled=str(clip), ema=0.9))
    loop = captured["loop"]
    assert seen and all(t is loop.ema.module for t in seen)
    # Replay the EMA over the recorded student weights: it must equal the saved average.
    key = next(k for k, v in student_steps[0].items() if v.is_floating_point() and v.ndim == 4)
    avg = None
    for n, weights in enumerate(student_steps):
        w = weights[key]
        d = min(0.9, (1 + n) / (10 + n))
        avg = w.clone() if avg is None else avg + (w - avg) * (1 - d)
    torch.testing.assert_close(loop.ema.module.state_dict()[key], avg, rtol=1e-5, atol=1e-6)
    assert not torch.equal(avg, student_steps[-1][key])  # an average, not the student


def test_unlabeled_frames_give_two_views_of_the_same_crop(tmp_path, monkeypatch):
    from edgeseg.data import TrainTransform
    from edgeseg.data.synthetic import write_clip

    clip = write_clip(tmp_path / "u.mp4", 6, (90, 160), fps=25)
    frames = semi.UnlabeledFrames(clip, TrainTransform((64, 96), jitter=0), 96)
    assert len(frames) == 6 and frames.frames[0].shape == (96, 171, 3)  # aspect kept
    weak, strong = frames[0]
    assert weak.shape == strong.shape == (3, 64, 96)
    assert not torch.equal(weak, strong)  # the student's view is photometrically changed
    monkeypatch.setattr(semi, "strong_view", lambda crop, rng: crop)
    for i in range(6):
        weak, strong = frames[i]
        assert torch.equal(weak, strong)  # ... and otherwise the very same random crop


def test_mean_teacher_needs_the_weight_average_and_readable_frames(tmp_path):
    cfg = TrainConfig(**TINY, out=str(tmp_path), epochs=1, unlabeled="x.mp4", ema=0.0)
    with pytest.raises(EdgesegError, match="keep ema above 0"):
        cfg.check()
    with pytest.raises(EdgesegError, match="unlabeled data not found"):
        semi.read_frames(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesegError, match="no frames"):
        semi.read_frames(tmp_path / "empty")
