"""Params and MAdds: the paper's LR-ASPP numbers, torchvision's parameter count, the CLI output."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from segkit.models import create_model
from segkit.models.summary import count_madds, count_params, main, summarize


@pytest.mark.parametrize(
    ("name", "paper_madds"),
    [("lraspp_mobilenetv3_large", 2.48e9), ("lraspp_mobilenetv3_small", 0.74e9)],
)
def test_lraspp_madds_match_the_paper(name, paper_madds):
    summary = summarize(name, [512, 1024])
    assert abs(summary["madds"] - paper_madds) / paper_madds < 0.05
    assert summary["madds"] == sum(summary["madds_by_part"].values())


def test_madds_by_hand_for_one_conv():
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.Conv2d(8, 8, 3, groups=8)
    )
    madds = count_madds(conv, (32, 32))
    assert madds["total"] == 8 * 16 * 16 * 3 * 9 + 8 * 14 * 14 * 9


def test_params_equal_torchvision_lraspp():
    model = create_model(
        "lraspp_mobilenetv3_large",
        encoder_params={"reduced_tail": False},
        decoder_params={"pooling": "global"},
    )
    tv = torchvision.models.segmentation.lraspp_mobilenet_v3_large(num_classes=19, weights_backbone=None)
    assert count_params(model) == count_params(tv) == 3_221_198


def test_cli_prints_table_and_json(capsys):
    assert main(["model=lraspp_mobilenetv3_small", "input_size=[256,512]", "model.num_classes=5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "lraspp_mobilenetv3_small at 256x512"
    assert any(line.startswith("encoder") for line in out)
    result = json.loads(out[-1])
    assert result["model"] == "lraspp_mobilenetv3_small"
    assert result["input_size"] == [256, 512]
    expected = summarize("lraspp_mobilenetv3_small", [256, 512], num_classes=5)
    assert result["params"] == expected["params"] and result["madds"] == expected["madds"]
    # 5 classes instead of 19: fewer head parameters than the file's default
    assert result["params"] < summarize("lraspp_mobilenetv3_small", [256, 512])["params"]


def test_cli_rejects_unknown_arguments(capsys):
    assert main(["model=nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'model/nonexistent'" in err and "lraspp_mobilenetv3_small" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["model=lraspp_mobilenetv3_small", "size=[1,2]"]) == 2
    assert "unknown key 'size'" in capsys.readouterr().err
