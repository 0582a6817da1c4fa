"""Transposed convolutions in the form litert-torch converts.

litert-torch (0.10) cannot legalise a transposed convolution with `padding` or `output_padding`
(MONAI's U-Net up-sampling: kernel 3, stride 2, padding 1, output_padding 1): "failed to legalize
operation 'mhlo.convolution'". The same layer without padding followed by a crop computes exactly
the same values: padding p drops p rows at each end of the unpadded output, output_padding q keeps
q of the dropped rows at the far end, so the result is `full[p : len - p + q]` (needs q <= p)."""

from __future__ import annotations


def _cropped(conv):
    import torch

    class CroppedConvTranspose(torch.nn.Module):
        """`conv` with padding 0 and no output_padding, then the crop the original padding made."""

        def __init__(self, inner, crops):
            super().__init__()
            self.inner, self.crops = inner, crops

        def forward(self, x):
            y = self.inner(x)
            index = [slice(None), slice(None)] + [slice(lo, y.shape[2 + i] - hi) for i, (lo, hi) in enumerate(self.crops)]
            return y[tuple(index)]

    dims = len(conv.padding)
    pads, extra = tuple(conv.padding), tuple(conv.output_padding)
    crops = tuple((p, p - q) for p, q in zip(pads, extra, strict=True))
    inner = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=0,
                       output_padding=0, groups=conv.groups, bias=conv.bias is not None, dilation=conv.dilation)
    inner.load_state_dict(conv.state_dict())
    assert len(crops) == dims
    return CroppedConvTranspose(inner, crops)


def crop_transposed_convs(model) -> tuple[object, list[str]]:
    """`model` with every padded ConvTranspose1d/2d/3d (string padding excluded, output_padding <=
    padding) replaced in place by the unpadded layer + crop; returns (model, names replaced)."""
    import torch

    kinds = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, kinds) or not isinstance(module.padding, tuple):
            continue
        if not any(module.padding) and not any(module.output_padding):
            continue
        if any(q > p for p, q in zip(module.padding, module.output_padding, strict=True)) or module.padding_mode != "zeros":
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _cropped(module))
        replaced.append(name)
    return model, replaced
