"""The model table: counts checked against an independent hook-based count, and the tool's output columns."""
from pathlib import Path

import pytest
from conftest import load_tool
import torch
from torch import nn

from resnet_backbone.modeling import create_model
from resnet_backbone.paper_tables import TABLE1_FLOPS, TABLE6_PARAMS, Reference, reference_for
from resnet_backbone.report import (HEADERS, count_multiply_adds, format_model_table, model_row, paper_family,
                                    torchvision_parameter_count)

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]




def _hook_multiply_adds(model, size):
    """Multiply-adds of the conv and linear layers, from their output sizes: an independent count."""
    total = []

    def conv(m, _, out):
        total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, _, out):
        total.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("name, size", [("cifar_resnet20", 32), ("resnet18", 64), ("resnext50_32x4d", 64),
                                        ("vgg16", 32)])
def test_fvcore_count_equals_hook_count(name, size):
    model = create_model(name)
    assert count_multiply_adds(model, size) == _hook_multiply_adds(model, size)


def test_paper_references():
    assert paper_family("resnet50", create_model("resnet50")) == ("imagenet", 50)
    assert paper_family("cifar_plain56", create_model("cifar_plain56")) == ("cifar", 56)
    assert paper_family("resnext50_32x4d", create_model("resnext50_32x4d")) is None  # not in the ResNet paper
    assert reference_for("imagenet", 152, "flops") is TABLE1_FLOPS[152]
    assert reference_for("cifar", 110, "params") is TABLE6_PARAMS[110]
    assert reference_for("imagenet", 50, "params") is None
    assert Reference(1.7e6, 0.1e6, "Table 6").agrees(1.74e6) and not Reference(1.7e6, 0.1e6, "").agrees(1.76e6)
    with pytest.raises(ValueError, match="'speed'"):
        reference_for("imagenet", 50, "speed")
    assert torchvision_parameter_count("cifar_resnet20") is None


def test_rows_and_table():
    row = model_row("cifar_resnet20")
    assert row.input_size == 32 and row.paper_params is TABLE6_PARAMS[20] and row.torchvision_params is None
    text = format_model_table([row])
    for header in HEADERS:
        assert header in text
    assert "0.27M (Table 6)" in text and f"{row.params:,}" in text


def test_tool_prints_the_expected_columns(capsys, tmp_path):
    tool = load_tool("model_report")
    out_file = tmp_path / "table.md"
    rows = tool.main(["--models", "cifar_resnet20", "resnet18", "--markdown", "--output", str(out_file)])
    captured = capsys.readouterr()
    assert [r.name for r in rows] == ["cifar_resnet20", "resnet18"]
    assert "[1/2] cifar_resnet20" in captured.err and "[2/2] resnet18" in captured.err  # progress
    header = captured.out.splitlines()[0]
    assert header.startswith("|") and [h.strip() for h in header.strip("|").split("|")] == list(HEADERS)
    resnet18 = next(line for line in captured.out.splitlines() if line.startswith("| resnet18"))
    cells = [c.strip() for c in resnet18.strip("|").split("|")]
    assert cells[1] == "224x224" and cells[5] == f"{torchvision_parameter_count('resnet18'):,}"
    assert cells[6] == "1.000" and cells[8] == "1.8 (Table 1)"
    assert abs(float(cells[9]) - 1.0) < 0.05  # GMACs / Table 1
    assert out_file.read_text().startswith(header)
