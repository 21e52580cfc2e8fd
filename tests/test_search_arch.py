"""Shrinking MobileNetV3 blocks: specs, exact weight transplant, rebuild from expansions, save/load/export."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from segkit.models import create_model
from segkit.search.arch import (
    _parts,
    adapted_config,
    block_spec,
    build_adapted_model,
    encoder_blocks,
    expanded_channels,
    load_adapted,
    save_adapted,
    shrink_block,
    shrink_model,
)

SMALL_035 = {"encoder_params": {"width_mult": 0.35}}


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenetv3_small", **SMALL_035).eval()
    # non-trivial BatchNorm statistics, so the transplant check covers running_mean/var too
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_block_specs_match_the_paper_table_times_width(tiny) -> None:
    specs = [block_spec(b) for _, b in encoder_blocks(tiny)]
    assert len(specs) == 11  # MobileNetV3-Small has 11 bnecks
    # width 0.35: 16 -> 8, 72 -> 24 (make_divisible), 96 -> 32, 240 -> 88; reduced tail: 576/2*0.35 -> 104
    assert [s.expanded_channels for s in specs] == [8, 24, 32, 32, 88, 88, 40, 48, 104, 104, 104]
    assert expanded_channels(tiny) == [s.expanded_channels for s in specs]
    first, c3, tail = specs[0], specs[3], specs[8]
    assert (first.use_se, first.activation, first.stride, first.shrinkable) == (True, "RE", 2, False)
    assert (c3.kernel, c3.use_se, c3.activation, c3.stride) == (5, True, "HS", 2)
    assert (tail.stride, tail.dilation) == (2, 2)  # output stride 16: last stage dilated


def _zero_removed(block, keep) -> None:
    """Silence the removed channels in the original block: projection and SE inputs, removed SE units."""
    p = _parts(block)
    exp = p.depthwise[0].out_channels
    removed = torch.tensor(
        [c for c in range(exp) if c not in set(keep["expanded"].tolist())], dtype=torch.long
    )
    p.project[0].weight[:, removed] = 0
    if p.se is not None:
        p.se.fc1.weight[:, removed] = 0
        sq = p.se.fc1.out_channels
        gone = torch.tensor(
            [c for c in range(sq) if c not in set(keep["squeeze"].tolist())], dtype=torch.long
        )
        p.se.fc2.weight[:, gone] = 0


@pytest.mark.parametrize(
    ("pos", "new_exp", "squeeze_shrinks"),
    [(2, 16, False), (4, 40, True), (9, 56, True)],  # no SE; SE 24 -> 16; dilated tail block SE 32 -> 16
)
@torch.no_grad()
def test_shrunk_model_equals_original_with_removed_channels_zeroed(
    tiny, pos, new_exp, squeeze_shrinks
) -> None:
    import copy

    original = copy.deepcopy(tiny)
    shrunk, keep = shrink_model(original, pos, new_exp)
    assert expanded_channels(shrunk)[pos] == new_exp
    assert len(keep["expanded"]) == new_exp
    if squeeze_shrinks:
        assert 0 < len(keep["squeeze"]) < _parts(encoder_blocks(original)[pos][1]).se.fc1.out_channels
    x = torch.randn(2, 3, 64, 128)
    before = original(x)
    assert not torch.allclose(shrunk(x), before, atol=1e-4)  # removing live channels changes the output
    _zero_removed(encoder_blocks(original)[pos][1], keep)
    torch.testing.assert_close(shrunk(x), original(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_kept_filters_are_the_largest_norm_ones_and_keep_bn_stats(tiny) -> None:
    _, block = encoder_blocks(tiny)[5]
    w = _parts(block).expand[0].weight
    new, keep = shrink_block(block, 48, norm="l2")
    norms = w.reshape(w.shape[0], -1).norm(dim=1)
    assert set(keep["expanded"].tolist()) == set(norms.topk(48).indices.tolist())
    assert torch.equal(_parts(new).expand[0].weight, w[keep["expanded"]])
    bn_old, bn_new = _parts(block).depthwise[1], _parts(new).depthwise[1]
    assert torch.equal(bn_new.running_var, bn_old.running_var[keep["expanded"]])
    assert torch.equal(_parts(new).project[1].running_mean, _parts(block).project[1].running_mean)


def test_shrink_rejects_bad_sizes(tiny) -> None:
    blocks = encoder_blocks(tiny)
    with pytest.raises(ValueError, match="no expansion conv"):
        shrink_block(blocks[0][1], 8)
    with pytest.raises(ValueError, match="equals the block's input channels"):
        shrink_block(blocks[1][1], 8)  # 8 in -> would lose its expansion conv
    with pytest.raises(ValueError, match=r"expanded must be in 8\.\.88"):
        shrink_block(blocks[4][1], 96)
    with pytest.raises(ValueError, match="block must be in 0..10"):
        shrink_model(tiny, 11, 16)


def test_rebuild_save_load_and_export(tiny, tmp_path) -> None:
    shrunk, _ = shrink_model(tiny, 4, 40)
    shrunk, _ = shrink_model(shrunk, 9, 56)
    cfg = adapted_config(shrunk)
    assert cfg["expanded_channels"] == [8, 24, 32, 32, 40, 88, 40, 48, 104, 56, 104]
    assert cfg["blocks"][9]["expanded_channels"] == 56
    rebuilt = build_adapted_model(cfg["model_config"], cfg["expanded_channels"])
    rebuilt.load_state_dict(shrunk.state_dict())  # strict: same names and shapes
    path = save_adapted(tmp_path / "adapted.pt", shrunk, input_size=[64, 128])
    loaded = load_adapted(path)
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        ref = shrunk.eval()(x)
        torch.testing.assert_close(loaded(x), ref)
    assert ref.shape == (1, 19, 64, 128)
    onnx_path = tmp_path / "adapted.onnx"
    with torch.no_grad():
        torch.onnx.export(loaded, (x,), str(onnx_path), dynamo=False, opset_version=17, input_names=["image"])
    out = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )
    torch.testing.assert_close(torch.from_numpy(out[0]), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="11 blocks"):
        build_adapted_model(cfg["model_config"], [8, 24])
    with pytest.raises(ValueError, match=r"expanded_channels\[0\]=16"):
        build_adapted_model(cfg["model_config"], [16] + cfg["expanded_channels"][1:])
