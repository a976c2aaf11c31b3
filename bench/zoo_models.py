"""The architecture zoo of ``bench/cleanup_zoo.py``: torchvision and timm models, exported to ONNX.

Random weights (``weights=None`` / ``pretrained=False``, nothing is downloaded), perturbed so that
no bias is all zeros and no scale all ones: clean-up tools fold ``x + 0`` / ``x * 1`` away, which a
fresh init is full of and a trained model is not. Static shapes, batch 1, eval mode. Each model is exported with both of
torch's exporters, ``dynamo`` (``torch.onnx.export(dynamo=True)``) and ``torchscript``
(``dynamo=False``), at opset 18.

The torchvision wheel on the index is built against a CUDA torch: with the CPU torch its C++
extension does not load and ``import torchvision`` (and ``import timm``) fails in
``_meta_registrations.py`` on ``torchvision::nms``. :func:`install_torchvision_shim` defines the
``nms``/``qnms`` schemas with plain-torch kernels first; the architectures here use no other
torchvision C++ op.

One export, in its own process (the benchmark does this, with a timeout)::

    python bench/zoo_models.py resnet18 dynamo /tmp/edgeopt_zoo/resnet18-dynamo.onnx
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

EXPORTERS = ("dynamo", "torchscript")
OPSET = 18
_SHIM: list[torch.library.Library] = []  # kept alive: dropping a Library unregisters its ops


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression in plain torch (torchvision::nms's contract)."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    suppressed = torch.zeros(len(dets), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(dets[i, :2], dets[:, :2])
        rb = torch.minimum(dets[i, 2:], dets[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        suppressed |= inter / (area[i] + area - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def install_torchvision_shim() -> None:
    """Register ``torchvision::nms``/``qnms`` unless torchvision's own extension provides them."""
    if _SHIM or "torchvision" in sys.modules or torch._C._dispatch_has_kernel("torchvision::nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(op, _nms, "CompositeExplicitAutograd")
    _SHIM.append(lib)


@dataclass(frozen=True)
class ZooModel:
    name: str
    source: str  # "torchvision" or "timm"
    arch: str
    size: int  # input is 1x3xSIZExSIZE
    kwargs: tuple[tuple[str, Any], ...] = ()


def _tv(arch: str, size: int = 224, **kwargs: Any) -> ZooModel:
    return ZooModel(arch, "torchvision", arch, size, tuple(kwargs.items()))


def _timm(arch: str, size: int) -> ZooModel:
    return ZooModel(arch, "timm", arch, size)


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    _tv("resnet18"), _tv("mobilenet_v2"), _tv("mobilenet_v3_small"), _tv("efficientnet_b0"),
    _tv("shufflenet_v2_x0_5"), _tv("squeezenet1_0"), _tv("mnasnet0_5"), _tv("regnet_x_400mf"),
    _tv("densenet121"), _tv("googlenet", aux_logits=False, init_weights=True), _tv("convnext_tiny"),
    _tv("swin_t"), _tv("maxvit_t"), _tv("deeplabv3_mobilenet_v3_large", weights_backbone=None),
    _tv("lraspp_mobilenet_v3_large", weights_backbone=None),
    _timm("tf_efficientnet_lite0", 224), _timm("tf_mobilenetv3_small_100", 224),
    _timm("tf_efficientnetv2_b0", 192), _timm("tinynet_e", 106), _timm("mobilevit_xxs", 256),
    _timm("mobilevitv2_050", 256), _timm("levit_128s", 224), _timm("deit_tiny_patch16_224", 224),
    _timm("resnet18d", 224), _timm("ghostnet_100", 224), _timm("regnety_002", 224),
    _timm("poolformer_s12", 224), _timm("edgenext_xx_small", 256), _timm("efficientformer_l1", 224),
    _timm("mixer_s16_224", 224), _timm("coat_lite_tiny", 224), _timm("mobileone_s0", 224),
    _timm("fastvit_t8", 256), _timm("efficientvit_b0", 224), _timm("efficientvit_m0", 224),
    _timm("lcnet_050", 224), _timm("mobilenetv4_conv_small", 224), _timm("convnextv2_atto", 224),
    _timm("rexnet_100", 224), _timm("hrnet_w18_small", 224), _timm("pit_ti_224", 224),
    _timm("resnest14d", 224), _timm("repvit_m0_9", 224), _timm("inception_next_atto", 224),
    _timm("crossvit_tiny_240", 240),
]}


class _Flat(nn.Module):
    """Return a tuple of tensors whatever the model returns (segmentation models return dicts)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        return tuple(out.values()) if isinstance(out, dict) else out


def _perturb(model: nn.Module) -> None:
    """Make the weights look trained: no all-zero biases, all-one norm scales, identical tensors.

    A fresh init has them, and onnxsim/onnxslim then delete ``x + 0`` and ``x * 1`` (and the dynamo
    exporter merges the equal tensors): differences that vanish on a trained model.
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.add_(0.02 * torch.randn(param.shape, generator=gen))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.add_(0.1 * torch.randn(buf.shape, generator=gen))
            elif name.endswith("running_var"):
                buf.mul_(0.5 + torch.rand(buf.shape, generator=gen))


def build(spec: ZooModel) -> nn.Module:
    """The eval-mode module, randomly initialised (seeded) and perturbed (see :func:`_perturb`)."""
    install_torchvision_shim()
    torch.manual_seed(0)
    if spec.source == "timm":
        import timm

        model = timm.create_model(spec.arch, pretrained=False)
    else:
        import torchvision

        model = torchvision.models.get_model(spec.arch, weights=None, **dict(spec.kwargs))
    _perturb(model)
    return _Flat(model).eval()


def export(spec: ZooModel, exporter: str, out: Path) -> None:
    """Write ``spec`` exported with ``exporter`` to ``out`` (a single file, no external data)."""
    model = build(spec)
    x = torch.randn(1, 3, spec.size, spec.size)
    out.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "dynamo":
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET,
                                    input_names=["input"])
        assert program is not None
        program.save(str(out), external_data=False)
    elif exporter == "torchscript":  # outside no_grad: nn.TransformerEncoder's fast path can't export
        torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=OPSET,
                          input_names=["input"])
    else:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")


if __name__ == "__main__":
    name, exporter_name, path = sys.argv[1:4]
    export(ZOO[name], exporter_name, Path(path))
