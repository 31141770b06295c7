"""Triton LayerNorm against a float64 reference: ragged row counts, odd widths, grads, dtypes."""

import pytest
import torch

from kernels.layernorm import layer_norm, layer_norm_reference


def _inputs(shape, dtype, device, scale=3.0, shift=1.5):
    dim = shape[-1]
    # An offset and scale per row, so the mean and variance really have to be removed.
    x = (torch.randn(shape) * scale + shift * torch.randn(*shape[:-1], 1)).to(dtype).to(device)
    w = (1.0 + 0.5 * torch.randn(dim)).to(device)
    b = (0.3 * torch.randn(dim)).to(device)
    return x, w, b


@pytest.mark.parametrize("rows", [1, 7, 65, 300])
@pytest.mark.parametrize("dim", [16, 72, 384])
def test_layer_norm_forward_backward_fp32(rows, dim, device):
    x, w, b = _inputs((rows, dim), torch.float32, device)
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    y = layer_norm(xs, ws, bs, 1e-5, backend="triton")
    grad = torch.randn_like(y)
    y.backward(grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = layer_norm_reference(x64, w64, b64, 1e-5)
    y64.backward(grad.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(xs.grad.double(), x64.grad, atol=5e-5, rtol=5e-5)
    torch.testing.assert_close(ws.grad.double(), w64.grad, atol=2e-4, rtol=2e-5)
    torch.testing.assert_close(bs.grad.double(), b64.grad, atol=2e-4, rtol=2e-5)


def test_layer_norm_3d_strided_input_and_out_dtype(device):
    # [B, N, D] with a non-contiguous row stride (a slice of a wider tensor); fp16 output from
    # fp32 input (what a block's norm hands its linear layer under autocast); fp16 grads back.
    wide = torch.randn(3, 11, 100).to(device)
    x = wide[..., :48]
    w = (1.0 + 0.5 * torch.randn(48)).to(device)
    b = torch.randn(48).to(device)
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    y = layer_norm(xs, ws, bs, 1e-6, out_dtype=torch.float16, backend="triton")
    assert y.dtype == torch.float16 and y.shape == x.shape
    grad = torch.randn(y.shape).to(device).half()
    y.backward(grad)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = layer_norm_reference(x64, w64, b64, 1e-6)
    y64.backward(grad.double())
    torch.testing.assert_close(y.double(), y64, atol=2e-3, rtol=2e-3)
    assert xs.grad.dtype == torch.float32
    torch.testing.assert_close(xs.grad.double(), x64.grad, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ws.grad.double(), w64.grad, atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(bs.grad.double(), b64.grad, atol=1e-2, rtol=1e-3)


def test_layer_norm_half_input_matches_torch(device):
    x, w, b = _inputs((37, 96), torch.float16, device)
    want = layer_norm_reference(x.float(), w, b).half()
    got = layer_norm(x, w.half(), b.half(), backend="triton")
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want.float(), atol=4e-3, rtol=4e-3)


def test_layer_norm_rejects_bad_affine_shapes(device):
    x = torch.randn(4, 8).to(device)
    with pytest.raises(ValueError, match="weight and bias must be"):
        layer_norm(x, torch.ones(7).to(device), torch.zeros(8).to(device), backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 at ViT widths on GPU only")
@pytest.mark.parametrize("dim", [384, 768, 1280])
def test_layer_norm_gpu_bf16_at_vit_widths(dim):
    x, w, b = _inputs((4099, dim), torch.bfloat16, torch.device("cuda"))
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w.bfloat16(), b.bfloat16()))
    y = layer_norm(xs, ws, bs)
    grad = torch.randn_like(y)
    y.backward(grad)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    y32 = layer_norm_reference(x32, w32.bfloat16().float(), b32.bfloat16().float())
    y32.backward(grad.float())
    torch.testing.assert_close(y.float(), y32, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(xs.grad.float(), x32.grad, atol=5e-2, rtol=3e-2)
    torch.testing.assert_close(ws.grad.float(), w32.grad, atol=0.5, rtol=2e-2)
