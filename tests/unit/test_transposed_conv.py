"""Padded transposed convolutions (MONAI's U-Net up-sampling) become the unpadded layer + a crop
for litert-torch, computing the same values (to float rounding: other kernels run)."""

import pytest
import torch

from toolkit.convert.transposed_conv import crop_transposed_convs


@pytest.mark.parametrize("kind, shape, kwargs", [
    (torch.nn.ConvTranspose2d, (2, 8, 9, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
    (torch.nn.ConvTranspose2d, (1, 8, 5, 5), {"kernel_size": 4, "stride": 2, "padding": 1}),
    (torch.nn.ConvTranspose2d, (1, 8, 6, 6), {"kernel_size": 3, "stride": 3, "padding": (2, 1), "output_padding": (1, 0),
                                              "dilation": 2, "groups": 2}),
    (torch.nn.ConvTranspose3d, (1, 8, 4, 5, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1}),
    (torch.nn.ConvTranspose1d, (1, 8, 11), {"kernel_size": 5, "stride": 2, "padding": 2, "output_padding": 1}),
])
def test_the_cropped_form_computes_the_same_values(kind, shape, kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(kind(8, 4, **kwargs), torch.nn.ReLU()).eval()
    x = torch.randn(*shape)
    expected = model(x)
    rewritten, names = crop_transposed_convs(model)
    assert names == ["0"]
    torch.testing.assert_close(rewritten(x), expected, rtol=1e-5, atol=1e-5)  # other kernels: rounding only


def test_unpadded_and_unsupported_layers_are_left_alone():
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 2, 2),
                                torch.nn.ConvTranspose2d(4, 4, 3, 2, padding=0, output_padding=1))
    _, names = crop_transposed_convs(model)
    assert names == []
