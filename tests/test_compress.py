"""Stage division, the replacement schedule, plan sampling and the replacement-training forward."""
import itertools

import numpy as np
import pytest
import torch

from ct_ray.compress import (
    FixedSchedule,
    PlanSampler,
    ProgressiveSchedule,
    ReplacementModel,
    ReplacementPlan,
    StageChoice,
    StageDivision,
    build_student,
    replacement_probability,
    stage_parameter_names,
)
from ct_ray.models import OneStreamTracker, TrackerConfig

TINY = dict(embed_dim=32, num_heads=2, head_channels=16, template_size=32, search_size=64)


def tiny_teacher(depth=12, seed=0):
    torch.manual_seed(seed)
    return OneStreamTracker(TrackerConfig(depth=depth, **TINY))


def inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 64, 64, generator=g)


def test_progressive_schedule_e500():
    p = lambda e: replacement_probability(e, 500)  # noqa: E731
    assert p(1) == 0.5 and p(50) == 0.5 and p(51) == 0.5
    assert p(52) == pytest.approx(0.5 + 0.5 * 2 / 400)
    assert p(250) == pytest.approx(0.5 + 0.5 * 200 / 400)
    assert p(449) == pytest.approx(0.5 + 0.5 * 399 / 400)
    assert p(450) == 1.0 and p(451) == 1.0 and p(500) == 1.0


def test_progressive_schedule_e10_and_overrides():
    values = [replacement_probability(e, 10) for e in range(1, 11)]
    expected = [0.5, 0.5, 0.625, 0.6875, 0.75, 0.8125, 0.875, 0.9375, 1.0, 1.0]
    assert values == pytest.approx(expected)
    schedule = ProgressiveSchedule(initial_p=0.3, warmup_fraction=0.2, final_fraction=0.3)
    # E = 10: W = 2, F = 3; rise over epochs 4..6 as 0.3 + 0.7 * (e - 2) / 5.
    assert [schedule(e, 10) for e in (3, 4, 7, 8)] == pytest.approx([0.3, 0.3 + 0.7 * 2 / 5, 1.0, 1.0])
    assert FixedSchedule(0.7)(5, 10) == 0.7
    # The fixed-p ablation ends like the paper's: the student alone on the epochs the progressive schedule spends
    # at p = 1 (its last tenth and the epoch its rise reaches 1), down to the 3-epoch `small` students.
    assert [FixedSchedule(0.5)(e, 30) for e in (1, 26, 27, 30)] == [0.5, 0.5, 1.0, 1.0]
    assert [FixedSchedule(0.5)(e, 3) for e in (1, 2, 3)] == [0.5, 0.5, 1.0]
    for total in (2, 3, 6, 10, 30, 330):
        alone = sum(FixedSchedule(0.5)(e, total) == 1.0 for e in range(1, total + 1))
        assert alone == sum(replacement_probability(e, total) == 1.0 for e in range(1, total + 1)), total
    assert [FixedSchedule(0.5, final_fraction=0.0)(e, 10) for e in (1, 10)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="counted from 1"):
        replacement_probability(0, 10)
    with pytest.raises(ValueError, match="sum to less than 1"):
        ProgressiveSchedule(warmup_fraction=0.5, final_fraction=0.5)
    with pytest.raises(ValueError):
        FixedSchedule(1.5)


def test_bernoulli_draw_frequencies_and_fallback():
    sampler = PlanSampler(num_stages=4, seed=7, single_stage_below=None)
    plans = [sampler.sample(step, 0.3) for step in range(20000)]
    bits = np.array([plan.bits for plan in plans])
    # P(student at stage i) = p + P(no stage drew the student) / 4 = 0.3 + 0.7**4 / 4
    assert bits.mean(axis=0) == pytest.approx([0.3 + 0.7 ** 4 / 4] * 4, abs=0.015)
    assert bits.sum(axis=1).min() == 1
    assert np.mean(bits.sum(axis=1) == 1) == pytest.approx(4 * 0.3 * 0.7 ** 3 + 0.7 ** 4, abs=0.015)
    fallback = np.array([sampler.sample(step, 0.0).bits for step in range(8000)])
    assert (fallback.sum(axis=1) == 1).all()
    assert fallback.mean(axis=0) == pytest.approx([0.25] * 4, abs=0.02)
    assert all(sampler.sample(s, 1.0) == ReplacementPlan.all_student(4) for s in range(50))
    # The reference code's rule (the default): below p = 0.5 exactly one stage, chosen uniformly, per step.
    reference = PlanSampler(num_stages=4, seed=7)
    low = np.array([reference.sample(step, 0.3).bits for step in range(8000)])
    assert (low.sum(axis=1) == 1).all() and low.mean(axis=0) == pytest.approx([0.25] * 4, abs=0.02)
    high = np.array([reference.sample(step, 0.6).bits for step in range(8000)])
    assert high.mean(axis=0) == pytest.approx([0.6 + 0.4 ** 4 / 4] * 4, abs=0.02)


def test_plans_are_a_function_of_seed_and_step():
    a, b = PlanSampler(4, seed=3), PlanSampler(4, seed=3)
    assert [a.sample(s, 0.5) for s in range(100)] == [b.sample(s, 0.5) for s in reversed(range(100))][::-1]
    other = PlanSampler(4, seed=4)
    assert [a.sample(s, 0.5) for s in range(100)] != [other.sample(s, 0.5) for s in range(100)]
    assert str(ReplacementPlan.from_bits([1, 0, 0, 1])) == "STTS"
    with pytest.raises(ValueError):
        ReplacementPlan(("student",))


def test_uniform_division_12_to_4():
    division = StageDivision.uniform(12, 4)
    assert division.teacher_ranges() == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert division.student_ranges() == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert division.teacher_boundary_blocks() == [2, 5, 8, 11]
    assert division.student_init_blocks() == [2, 5, 8, 11]
    two = StageDivision.uniform(12, 4, blocks_per_stage=2)
    assert two.student_depth == 8 and two.student_init_blocks() == [1, 2, 4, 5, 7, 8, 10, 11]


def test_explicit_division_2442_and_rejections():
    division = StageDivision.explicit([2, 4, 4, 2], teacher_depth=12)
    assert division.teacher_ranges() == [(0, 2), (2, 6), (6, 10), (10, 12)]
    assert division.teacher_boundary_blocks() == [1, 5, 9, 11]
    assert division.student_init_blocks() == [1, 5, 9, 11]
    with pytest.raises(ValueError, match="covers 13 blocks, but the teacher has 12"):
        StageDivision.explicit([2, 4, 4, 3], teacher_depth=12)
    with pytest.raises(ValueError, match="positive integers"):
        StageDivision.explicit([2, 0, 6, 4])
    with pytest.raises(ValueError, match="multiple of"):
        StageDivision.uniform(12, 5)
    with pytest.raises(ValueError, match="more blocks than the teacher stages"):
        StageDivision.explicit([2, 4, 4, 2], blocks_per_stage=3)


def test_student_initialised_from_last_block_of_each_stage():
    teacher = tiny_teacher()
    division = StageDivision.explicit([2, 4, 4, 2])
    student = build_student(teacher, division)
    assert len(student.blocks) == 4
    for s, t in zip(range(4), [1, 5, 9, 11]):
        for (name, ps), (_, pt) in zip(student.blocks[s].named_parameters(), teacher.blocks[t].named_parameters()):
            assert torch.equal(ps, pt), (s, name)
    for name in ("pos_embed_z", "pos_embed_x", "patch_embed.proj.weight", "norm.weight",
                 "box_head.conv1_ctr.1.running_var", "box_head.conv5_size.bias"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name]), name
    assert student.pos_embed_z.data_ptr() != teacher.pos_embed_z.data_ptr()


def test_mixed_network_is_exact_when_student_equals_teacher():
    """With k_i equal to the teacher's stage sizes the student is the teacher, so every plan reproduces it."""
    teacher = tiny_teacher(depth=6)
    division = StageDivision.explicit([1, 2, 3], blocks_per_stage=[1, 2, 3])
    model = ReplacementModel(teacher, build_student(teacher, division), division).eval()
    template, search = inputs()
    for bits in itertools.product([0, 1], repeat=3):
        out = model(template, search, ReplacementPlan.from_bits(bits))
        assert torch.allclose(out.mixed["score_map"], out.teacher["score_map"], atol=1e-6), bits
        for mine, theirs in zip(out.features, out.teacher_features):
            assert torch.allclose(mine, theirs, atol=1e-5)
    _, boundary = teacher.forward_features(template, search, after_blocks=[0, 2, 5])
    assert all(torch.equal(a, b) for a, b in zip(out.teacher_features, boundary))


def test_gradients_reach_only_student_parameters():
    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    model = ReplacementModel(teacher, build_student(teacher, division), division).train()
    assert not teacher.training and model.student.training
    template, search = inputs()
    plan = ReplacementPlan.from_bits([0, 1, 0, 0])
    out = model(template, search, plan)
    loss = out.mixed["pred_boxes"].sum() + out.mixed["score_map"].mean() + sum(f.square().mean() for f in out.features)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    grads = {name: p.grad for name, p in model.student.named_parameters()}
    used = stage_parameter_names(division, plan.student_stages)
    unused = stage_parameter_names(division, [0, 2, 3])
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith(tuple(used)))
    assert all(grads[n] is None for n in grads if n.startswith(tuple(unused)))
    # Stage 0 is the teacher's, yet the student's embedding learns through the borrowed teacher blocks.
    assert grads["patch_embed.proj.weight"].abs().sum() > 0
    assert grads["box_head.conv5_ctr.weight"] is not None


def test_teacher_unchanged_after_optimizer_step():
    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    model = ReplacementModel(teacher, build_student(teacher, division), division).train()
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_student = {k: v.clone() for k, v in model.student.state_dict().items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    template, search = inputs()
    for step in range(2):
        out = model(template, search, PlanSampler(4, 0).sample(step, 0.5))
        loss = out.mixed["pred_boxes"].square().sum() + sum(
            (a - b).square().mean() for a, b in zip(out.features, out.teacher_features))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before_teacher.items())
    changed = [k for k, v in model.student.state_dict().items() if not torch.equal(v, before_student[k])]
    assert "patch_embed.proj.weight" in changed and "box_head.conv5_size.weight" in changed


def test_teacher_train_mode_switch():
    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    public = ReplacementModel(teacher, build_student(teacher, division), division, teacher_train_mode=True)
    public.train()
    assert teacher.training
    public.eval()
    assert not teacher.training


def test_student_of_another_width_uses_projections():
    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    student = build_student(teacher, division, embed_dim=16, num_heads=2)
    assert student.config.embed_dim == 16
    # Same-shape tensors are still copied from the teacher (the head past its first conv).
    assert torch.equal(student.box_head.conv2_ctr[0].weight, teacher.box_head.conv2_ctr[0].weight)
    model = ReplacementModel(teacher, student, division).train()
    template, search = inputs()
    out = model(template, search, ReplacementPlan.from_bits([0, 1, 1, 0]))
    assert all(f.shape[-1] == 32 for f in out.features) and out.mixed["score_map"].shape == (2, 1, 4, 4)
    loss = sum((a - b).square().mean() for a, b in zip(out.features, out.teacher_features))
    loss = loss + out.mixed["pred_boxes"].sum()
    loss.backward()
    # T S S T: embed -> teacher (to_teacher 0), -> student (to_student 0 at boundary 1), mimicking after the
    # student stages (to_teacher 2, 3), -> teacher (to_teacher 3), -> head (to_student 3 at boundary 4).
    used = {"to_teacher.0", "to_student.0", "to_teacher.2", "to_teacher.3", "to_student.3"}
    for name, p in model.named_parameters():
        prefix = name.rsplit(".", 1)[0]
        if prefix in used:
            assert p.grad is not None, name
    assert model.to_student[1].weight.grad is None and model.to_teacher[4].weight.grad is None


def test_student_only_skips_the_teacher():
    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    model = ReplacementModel(teacher, build_student(teacher, division), division)
    calls = []
    for block in teacher.blocks:
        block.register_forward_hook(lambda *a: calls.append(1))
    out = model(*inputs(), ReplacementPlan.all_student(4), need_teacher=False)
    assert out.teacher is None and out.features == [] and calls == []
    assert out.plan.student_stages == (0, 1, 2, 3)
    assert StageChoice.STUDENT in out.plan


def test_undrawn_student_stages_keep_stepping_with_their_momentum():
    """Gradients are zeroed, not dropped (the reference's torch 1.13 behaviour): once a stage has AdamW momentum, it
    moves on a step whose plan did not draw it; a stage that was never drawn has no gradient and stays."""
    from ct_ray.compress.losses import LossWeights, TrackingLoss
    from ct_ray.training.experiment import RunKind
    from ct_ray.training.step import TrainStep, parameter_groups, restore_zero_gradients

    teacher = tiny_teacher()
    division = StageDivision.uniform(12, 4)
    model = ReplacementModel(teacher, build_student(teacher, division), division).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1.0, 1.0), weight_decay=1e-4)
    template, search = inputs(batch=4)
    batch = {"template": template, "search": search, "search_box": torch.tensor([[0.5, 0.5, 0.3, 0.3]] * 4)}

    class Plans:  # step 0 draws stages 0 and 1, every later step stage 0 only
        def sample(self, step, p):
            return ReplacementPlan.from_bits([1, 1, 0, 0] if step == 0 else [1, 0, 0, 0])

    step = TrainStep(model, RunKind.COMPRESSTRACKER, TrackingLoss(LossWeights()), optimizer, Plans())
    stage = {i: f"blocks.{i}.mlp.fc1.weight" for i in range(4)}
    step(batch, 0, 0.5)
    before = {i: model.student.state_dict()[name].clone() for i, name in stage.items()}
    step(batch, 1, 0.5)
    after = model.student.state_dict()
    assert not torch.equal(after[stage[1]], before[1])  # not drawn at step 1, moved by its momentum
    assert not torch.equal(after[stage[0]], before[0])
    assert torch.equal(after[stage[2]], before[2]) and torch.equal(after[stage[3]], before[3])  # never drawn
    assert model.student.blocks[1].mlp.fc1.weight.grad is not None
    assert not model.student.blocks[1].mlp.fc1.weight.grad.any()
    # A resumed run gets back the zero gradients of every stepped parameter, so it steps the same way.
    fresh = ReplacementModel(tiny_teacher(), build_student(tiny_teacher(), division), division)
    resumed = torch.optim.AdamW(parameter_groups(fresh, 1e-3, 1.0, 1.0), weight_decay=1e-4)
    resumed.load_state_dict(optimizer.state_dict())
    restore_zero_gradients(resumed)
    assert fresh.student.blocks[1].mlp.fc1.weight.grad is not None and fresh.student.blocks[2].mlp.fc1.weight.grad is None
