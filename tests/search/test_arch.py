"""Shrinking MobileNetV3 blocks: specs, exact weight transplant, and the result as an ordinary block table."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segkit.formats.checkpoint import model_metadata, save_checkpoint
from segkit.inference import Predictor
from segkit.models import architecture_config, build_model, build_model_from_checkpoint, create_model
from segkit.models.encoders.mobilenetv3 import block_layers, block_spec
from segkit.search.arch import (
    apply_expansions,
    encoder_blocks,
    expanded_channels,
    load_adapted,
    shrink_block,
    shrink_model,
)

SMALL_035 = {"encoder_params": {"width_mult": 0.35}}


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return _with_batchnorm_statistics(create_model("lraspp_mobilenetv3_small", **SMALL_035).eval())


def _parts(block):
    from types import SimpleNamespace

    expand, depthwise, se, project = block_layers(block)
    return SimpleNamespace(expand=expand, depthwise=depthwise, se=se, project=project)


def rebuild(model: torch.nn.Module) -> torch.nn.Module:
    """The model its own ``model_config`` builds, with its weights loaded strictly (same names, shapes)."""
    config = {k: v for k, v in model.model_config.items() if k != "_target_"}
    rebuilt = build_model(**config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()


def _with_batchnorm_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random non-trivial BatchNorm statistics and affine parameters (in place), so the
    transplant checks cover running_mean/var too."""
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


def test_a_shrunk_model_is_an_ordinary_block_table_and_checkpoint(tiny, tmp_path) -> None:
    shrunk, _ = shrink_model(tiny, 4, 48)
    shrunk, _ = shrink_model(shrunk, 9, 56)
    assert expanded_channels(shrunk) == [8, 24, 32, 32, 48, 88, 40, 48, 104, 56, 104]
    table = shrunk.model_config["encoder_params"]
    assert table["blocks"][4] == [5, 48, 16, True, "HS", 1]  # 40 x 0.35 -> 16
    assert table["blocks"][9][1] == 56 and (table["width_mult"], table["reduced_tail"]) == (1.0, False)
    assert shrunk.model_config == architecture_config(shrunk)
    assert tiny.model_config["encoder_params"].get("blocks") is None  # the original is left as it was
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        ref = shrunk.eval()(x)
        torch.testing.assert_close(rebuild(shrunk)(x), ref)
    path = save_checkpoint(
        tmp_path / "adapted.pt", {**model_metadata(shrunk.model_config), "model": shrunk.state_dict()}
    )
    with torch.no_grad():  # any loader rebuilds the table: models, the search's compat name, the Predictor
        torch.testing.assert_close(build_model_from_checkpoint(path)(x), ref)
        torch.testing.assert_close(load_adapted(path)(x), ref)
    assert ref.shape == (1, 19, 64, 128)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    pred = Predictor.from_file(path)
    assert pred.backend == "pytorch"
    np.testing.assert_array_equal(pred.predict(rgb), Predictor.from_model(shrunk).predict(rgb))
    onnx_path = tmp_path / "adapted.onnx"
    with torch.no_grad():
        torch.onnx.export(shrunk, (x,), str(onnx_path), dynamo=False, opset_version=17, input_names=["image"])
    out = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )
    torch.testing.assert_close(torch.from_numpy(out[0]), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="11 blocks"):
        apply_expansions(rebuild(shrunk), [8, 24])
    with pytest.raises(ValueError, match=r"block 0: widths 8->16->8 would change its layout"):
        apply_expansions(rebuild(shrunk), [16] + expanded_channels(shrunk)[1:])


@pytest.fixture(scope="module")
def small_x1() -> torch.nn.Module:
    torch.manual_seed(1)
    return _with_batchnorm_statistics(create_model("lraspp_mobilenetv3_small").eval())


def test_residual_groups_skip_decoder_inputs(small_x1) -> None:
    from segkit.search.arch import residual_groups

    groups = residual_groups(small_x1)
    # MobileNetV3-Small: 24-group (blocks 1-2) is the low-level decoder input and the 48-group (6-7) a
    # feature tap: only the 40-group (read by block 6 = features[7]) and the tail (read by the last conv)
    assert [(g.blocks, g.channels, g.consumer) for g in groups] == [((3, 4, 5), 40, 7), ((8, 9, 10), 48, 12)]
    large = create_model("lraspp_mobilenetv3_large", encoder_params={"width_mult": 0.35})
    assert [(g.blocks, g.channels) for g in residual_groups(large)] == [
        ((6, 7, 8, 9), 32),
        ((12, 13, 14), 32),
    ]


@pytest.mark.parametrize("group_index", [0, 1])
@torch.no_grad()
def test_group_shrink_equals_original_with_removed_channels_zeroed(small_x1, group_index) -> None:
    import copy

    from segkit.search.arch import out_channels, residual_groups, shrink_group

    group = residual_groups(small_x1)[group_index]
    original = copy.deepcopy(small_x1)
    narrow, keep = shrink_group(original, group, group.channels - 16)
    outs = out_channels(narrow)
    assert [outs[b] for b in group.blocks] == [group.channels - 16] * len(group.blocks)
    assert len(keep) == group.channels - 16
    x = torch.randn(2, 3, 64, 128)
    if group_index == 1:
        assert not torch.allclose(narrow(x), original(x), atol=1e-3)
    removed = torch.tensor(
        [c for c in range(group.channels) if c not in set(keep.tolist())], dtype=torch.long
    )
    for b in group.blocks:  # silence the removed bottleneck channels at every write into the residual stream
        project = _parts(encoder_blocks(original)[b][1]).project
        project[0].weight[removed] = 0
        project[1].weight[removed] = 0
        project[1].bias[removed] = 0
    torch.testing.assert_close(narrow(x), original(x), rtol=1e-5, atol=1e-5)
    # its model_config is its block table: it rebuilds, strict load
    torch.testing.assert_close(rebuild(narrow)(x), narrow(x))


def test_group_and_width_errors(small_x1) -> None:
    from segkit.search.arch import out_channels, residual_groups, shrink_group

    group = residual_groups(small_x1)[0]
    with pytest.raises(ValueError, match="multiple of 8 in 8..32"):
        shrink_group(small_x1, group, 36)
    # a width equal to a reader's expansion would make torchvision drop that block's expansion conv
    tail = residual_groups(small_x1)[1]
    assert tail.channels == 48
    model = create_model("lraspp_mobilenetv3_small")
    exp = expanded_channels(model)
    exp[9] = 40
    apply_expansions(model, exp)
    with pytest.raises(ValueError, match="equals the expansion of a block reading it"):
        shrink_group(model, residual_groups(model)[1], 40)
    outs = out_channels(small_x1)
    outs[2] = 16  # the low-level decoder input (and a residual group)
    with pytest.raises(ValueError, match="would change its layout|decoder input"):
        apply_expansions(copy_of(small_x1), expanded_channels(small_x1), outs)
    outs = out_channels(small_x1)
    outs[1], outs[2] = 16, 16  # the whole 24-group: layout fine, but block 2 is the decoder's low-level input
    with pytest.raises(ValueError, match="decoder input"):
        apply_expansions(copy_of(small_x1), expanded_channels(small_x1), outs)


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)
