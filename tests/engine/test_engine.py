"""Unit tests of the engine's parts: losses (CE, OHEM), optimizer groups, poly/warm-up, EMA, RNG state,
AMP resolution, and the step function (accumulation, clipping, channels_last, bf16 on CPU)."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.engine.ema import ModelEMA
from segkit.engine.losses import OhemCrossEntropy, SegCrossEntropy, build_loss
from segkit.engine.optim import WarmupPolyLR, build_optimizer, build_scheduler, param_groups
from segkit.engine.rng import rng_state, set_rng_state
from segkit.engine.trainer import TrainStep, resolve_amp


def _logits_target(n: int = 2, c: int = 5, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(n, c, h, w, generator=g) * 2
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[:, 0, :] = 255
    return logits, target


def test_ce_ignores_255_and_weights() -> None:
    logits, target = _logits_target()
    valid = target != 255
    per_pixel = -F.log_softmax(logits, 1).gather(1, target.clamp(max=4).unsqueeze(1)).squeeze(1)
    assert SegCrossEntropy()(logits, target).item() == pytest.approx(per_pixel[valid].mean().item(), rel=1e-5)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0])
    expected = (per_pixel[valid] * w[target[valid]]).sum() / w[target[valid]].sum()
    got = build_loss("ce", class_weights=w.tolist())(logits, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # no labelled pixel: zero loss, not NaN
    assert SegCrossEntropy()(logits, torch.full_like(target, 255)).item() == 0.0
    # low-resolution logits are upsampled to the label size
    small = SegCrossEntropy()(logits[:, :, ::2, ::2], target)
    assert math.isfinite(small.item())


def _ohem_reference(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """PaddleSeg's OhemCrossEntropyLoss written out with numpy sorting (its argsort-based threshold)."""
    c = logits.shape[1]
    lab = target.reshape(-1).numpy().copy()
    valid = lab != 255
    prob = torch.softmax(logits, 1).permute(1, 0, 2, 3).reshape(c, -1).numpy()
    lab0 = np.where(valid, lab, 0)
    if 0 < min_kept < valid.sum():  # PaddleSeg mines only with min_kept > 0
        p = prob[lab0, np.arange(lab.size)] + (~valid)
        threshold = thresh
        order = np.argsort(p, kind="stable")
        kth = p[order[min(len(order), min_kept) - 1]]
        if kth > thresh:
            threshold = kth
        valid = valid & (p < threshold)
    per_pixel = -np.log(prob[lab0, np.arange(lab.size)])
    return torch.tensor(per_pixel[valid].mean() if valid.any() else 0.0)


@pytest.mark.parametrize("min_kept", [0, 10, 60, 120, 1000])
def test_ohem_matches_paddleseg_semantics(min_kept: int) -> None:
    logits, target = _logits_target()
    loss = OhemCrossEntropy(thresh=0.7, min_kept=min_kept)
    expected = _ohem_reference(logits, target, 0.7, min_kept)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    kept = loss.kept_mask(logits, target)
    assert not kept[target == 255].any()
    if min_kept == 0 or min_kept >= int((target != 255).sum()):
        assert torch.equal(kept, target != 255)  # no mining: all labelled pixels count
    else:
        # every kept pixel is "harder" (lower true-class probability) than every dropped labelled pixel
        p = torch.softmax(logits, 1).gather(1, target.clamp(max=4).unsqueeze(1)).squeeze(1)
        dropped = (target != 255) & ~kept
        if dropped.any() and kept.any():
            assert p[kept].max() <= p[dropped].min()
    with pytest.raises(ValueError, match="train.loss.name"):
        build_loss("focal")


def test_param_groups_exclude_norm_and_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False))
    groups = param_groups(model, 1e-4, no_decay_norm_bias=True)
    assert [len(g["params"]) for g in groups] == [2, 3]  # two conv weights | conv bias + BN weight/bias
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert len(param_groups(model, 1e-4, no_decay_norm_bias=False)[0]["params"]) == 5
    cfg = {
        "no_decay_norm_bias": True,
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.1, "weight_decay": 0.05, "betas": [0.9, 0.99]},
    }
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) or list(opt.param_groups[0]["betas"]) == [0.9, 0.99]
    with pytest.raises(ValueError, match="optim.optimizer"):
        build_optimizer({"optimizer": {"lr": 0.1}}, model)


def test_poly_with_warmup_and_resume() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = WarmupPolyLR(opt, total_iters=100, power=0.9, warmup_iters=10, warmup_start_factor=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(100):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1 * 0.1)  # warm-up starts at 10 %
    assert lrs[5] == pytest.approx(0.1 * (1 - 5 / 100) ** 0.9 * (0.1 + 0.9 * 0.5))
    assert lrs[10] == pytest.approx(0.1 * (1 - 10 / 100) ** 0.9)  # warm-up over: plain poly
    assert lrs[50] == pytest.approx(0.1 * 0.5**0.9)
    assert lrs[100] == 0.0
    assert max(lrs) == lrs[10]
    # a new scheduler loaded from a state dict continues identically
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_scheduler(opt2, {"power": 0.9, "warmup_iters": 10, "warmup_start_factor": 0.1}, 100)
    state = WarmupPolyLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 100, 0.9, 10, 0.1)
    for _ in range(37):
        state.optimizer.step()
        state.step()
    sched2.load_state_dict(state.state_dict())
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[38])
    with pytest.raises(ValueError, match="optim.scheduler: unknown keys"):
        build_scheduler(opt2, {"powr": 0.9}, 100)
    with pytest.raises(ValueError, match="warmup_iters"):
        build_scheduler(opt2, {"warmup_iters": 100}, 100)


def test_ema_follows_formula() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, step=5)
    assert torch.allclose(ema.weights()["weight"], torch.full((1, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    warm = ModelEMA(model, decay=0.9999, warmup=True)
    assert warm.get_decay(2) < 0.5 < warm.get_decay(1000) < 0.9999
    with pytest.raises(ValueError, match="train.ema.decay"):
        ModelEMA(model, decay=1.5)


def test_rng_state_roundtrip_weights_only() -> None:
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_resolve_amp() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="train.amp"):
        resolve_amp("int8", cpu)


class _Tiny(nn.Module):
    """A 2-layer conv net without batch norm, so that micro-batching does not change the maths."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.b(torch.relu(self.a(x)))}  # torchvision-style dict output


def _step(accum: int, **kw) -> tuple[nn.Module, float]:
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    step = TrainStep(model, SegCrossEntropy(), opt, torch.device("cpu"), **kw)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (4, 16, 16), generator=g)
    batches = [(x[i : i + 4 // accum], y[i : i + 4 // accum]) for i in range(0, 4, 4 // accum)]
    loss = float(step(batches))
    assert step.step == 1
    return model, loss


def test_step_accumulation_clipping_channels_last_bf16() -> None:
    full, loss_full = _step(1)
    acc, loss_acc = _step(2)
    assert loss_acc == pytest.approx(loss_full, rel=1e-5)
    for p, q in zip(full.parameters(), acc.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    cl, loss_cl = _step(1, channels_last=True)
    assert loss_cl == pytest.approx(loss_full, rel=1e-5)
    for p, q in zip(full.parameters(), cl.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    start = _Tiny()
    clipped, _ = _step(1, grad_clip=1e-3)
    # with lr 0.5 and a gradient norm of at most 1e-3 no weight moves by more than 5e-4
    moved = max((p - q).abs().max().item() for p, q in zip(clipped.parameters(), start.parameters()))
    assert 0 < moved <= 0.5 * 1e-3 + 1e-7
    bf, loss_bf = _step(1, amp_dtype=torch.bfloat16)
    assert loss_bf == pytest.approx(loss_full, rel=0.05)  # bf16 autocast: close, not equal
    assert any(not torch.equal(p, q) for p, q in zip(bf.parameters(), full.parameters()))
