"""Every attention backend equals the naive reference, forward and backward (docs/CORRESPONDENCE.md section 1)."""

import pytest
import torch

from coat_model.model.attention import (
    attend, attention_dtype, chunked_argmax, chunked_topk, naive_argmax, resolve_backend, xformers_available,
)

BACKENDS = ["chunked", "sdpa", pytest.param("xformers", marks=pytest.mark.skipif(
    not xformers_available("cuda"), reason="xformers needs CUDA and a working install"))]


def _qkv(seed, b=2, lq=37, lk=29, c=12, cv=5, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, d, generator=g) for n, d in ((lq, c), (lk, c), (lk, cv)))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_forward_matches_naive(backend, scale):
    device = "cuda" if backend == "xformers" else "cpu"
    q, k, v = (t.to(device) for t in _qkv(0))
    ref = attend(q, k, v, scale=scale, backend="naive")
    out = attend(q, k, v, scale=scale, backend=backend, chunk=8)
    assert out.shape == (2, 37, 5)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_naive(backend):
    device = "cuda" if backend == "xformers" else "cpu"
    grads = {}
    for name in ("naive", backend):
        q, k, v = (t.to(device).detach().requires_grad_() for t in _qkv(1))
        out = attend(q, k, v, scale=20.0, backend=name, chunk=8)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        grads[name] = [q.grad, k.grad, v.grad]
    for ours, ref in zip(grads[backend], grads["naive"]):
        torch.testing.assert_close(ours, ref, atol=5e-5, rtol=1e-4)


def test_sdpa_pads_to_a_fused_kernel_on_cpu():
    q, k, v = _qkv(2, c=12, cv=66)
    width = 72
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[-1])).unsqueeze(1) for t in (q, k, v)]
    choice = torch._fused_sdp_choice(*padded, None, 0.0, False, scale=1.0)
    assert choice != 0, "with equal padded widths the math fallback must not be chosen"


def test_chunked_topk_and_argmax_match_naive():
    q, k, _ = _qkv(3, lq=50, lk=40)
    values, index = chunked_argmax(q, k, chunk=7)
    ref_values, ref_index = naive_argmax(q, k)
    torch.testing.assert_close(values, ref_values)
    assert torch.equal(index, ref_index)
    top_values, top_index = chunked_topk(q, k, top=3, chunk=16)
    full = torch.bmm(q, k.transpose(1, 2)).topk(3, dim=-1)
    torch.testing.assert_close(top_values, full.values)
    assert torch.equal(top_index, full.indices)


def test_chunked_argmax_respects_restriction():
    q, k, _ = _qkv(4, lq=10, lk=10)
    allowed = lambda rows: torch.eye(10, dtype=torch.bool)[None, rows].expand(2, -1, -1)  # noqa: E731
    _, index = chunked_argmax(q, k, allowed=allowed, chunk=4)
    assert torch.equal(index, torch.arange(10).expand(2, -1))


def test_precision_never_bf16():
    assert attention_dtype(torch.bfloat16, torch.device("cpu")) == torch.float32
    assert attention_dtype(torch.bfloat16, torch.device("cuda")) == torch.float32
    assert attention_dtype(torch.float16, torch.device("cuda")) == torch.float16
    q, k, v = (t.bfloat16() for t in _qkv(5))
    assert attend(q, k, v, scale=10.0, backend="sdpa").dtype == torch.bfloat16  # computed in fp32, returned as given


def test_backend_errors_are_clear():
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash9", torch.device("cpu"))
    if not xformers_available("cuda"):
        with pytest.raises(RuntimeError, match="backend='sdpa'"):
            resolve_backend("xformers", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match="incompatible shapes"):
        attend(q, k[:, :, :5], v, scale=1.0)


def test_chunked_backward_recomputes_blocks_instead_of_keeping_them():
    """Autograd keeps q, k, v, the output and one log-sum-exp per row: nothing of size Lq x Lk."""
    q, k, v = _qkv(6, lq=64, lk=48, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = attend(q, k, v, scale=10.0, backend="chunked", chunk=16)
    assert sum(saved) == q.numel() + k.numel() + v.numel() + out.numel() + 2 * 64  # no [2, 16, 48] block kept
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
