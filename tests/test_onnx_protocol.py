"""Export through the protocol (issue 28, item 3): a rescaler that gives no export graphs of its
own is exported through its ``downscale`` / ``upscale``; a stochastic one without graphs that take
``z`` is refused with one line; a class's ``export_refusal`` is read before a model is built."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import synthetic_image  # noqa: E402
from refscale import onnx as rs_onnx, pipeline  # noqa: E402
from refscale.errors import ModelError  # noqa: E402
from refscale.models.inter import InterFrame  # noqa: E402
from refscale.protocol import Rescaler  # noqa: E402

torch.set_num_threads(1)


class Box(Rescaler):
    """A deterministic toy rescaler, not in the catalogue: box filter + 1x1 conv, nearest up."""

    arch = "box"

    def __init__(self, scale: int = 2):
        super().__init__(scale)
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def downscale(self, hr, ref=None):
        return self.conv(F.avg_pool2d(hr, self.scale)).clamp(0, 1), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest")


class NoisyBox(Box):
    stochastic = True


def test_default_graphs_are_downscale_and_upscale(tmp_path):
    model = Box().eval()
    assert rs_onnx.unsupported_reason(model) is None
    paths = {part: tmp_path / f"box-{part}.onnx" for part in rs_onnx.PARTS}
    for part, path in paths.items():
        meta = rs_onnx.export_onnx(model, part, path)
        assert meta["check"]["max_abs_diff"]["float"] <= rs_onnx.TOLERANCE
        assert meta["min_side"] == model.alignment
    assert [i["name"] for i in rs_onnx.read_metadata(paths["decoder"])["inputs"]] == ["lr"]  # no z, no side
    diff = rs_onnx.check_graph(model, str(paths["encoder"]), "encoder", 36, 52, batch=2, seed=4)
    assert diff["float"] <= rs_onnx.TOLERANCE
    hr = synthetic_image(40, 50, seed=1)
    board = rs_onnx.onboard_encode(paths["encoder"], hr)
    packet = rs_onnx.wrap(board.lr, board.side, paths["encoder"], size=board.size)
    ground = pipeline.encode(model, hr, precision="fp32", verify=False)
    assert np.array_equal(packet.lr, ground.lr) and packet.padded_size == ground.padded_size


def test_stochastic_model_without_graphs_is_refused(tmp_path):
    model = NoisyBox().eval()
    reason = rs_onnx.unsupported_reason(model)
    assert reason and "cannot be exported to ONNX" in reason and "draws randomness" in reason
    with pytest.raises(ModelError, match="cannot be exported to ONNX"):
        rs_onnx.export_onnx(model, "encoder", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_refusal_is_read_from_the_class():
    assert rs_onnx.refusal(Box, "box-x2") is None
    assert rs_onnx.refusal(InterFrame, "inter-h264").startswith("inter-h264 cannot be exported to ONNX: the inter-* modes")
    with pytest.raises(ModelError, match="cannot be exported to ONNX"):
        InterFrame().export_graphs()
