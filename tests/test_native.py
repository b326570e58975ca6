"""layers/native.py: the compiled few-row kernel gives F.linear's values for any sizes, is built
once into its cache folder, and where it cannot be built says why and is never a decoding
candidate; decoding gives the same tokens on the native paths as on plain F.linear."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stratalm.layers import linear, native
from stratalm.layers.path_choice import PathChoice

needs_kernel = pytest.mark.skipif(not native.available(), reason=f"no kernel here: {native.unavailable_reason()}")


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 64])
@pytest.mark.parametrize("out_features, in_features", [(1152, 384), (384, 1536), (43, 48), (1155, 47), (7, 1),
                                                       (9, 17), (5, 24), (3, 8)])
def test_the_kernel_gives_f_linears_values(bias, rows, out_features, in_features):
    """Sizes of whole vectors and of every kind of tail: a row shorter than a vector, an odd
    chunk of 8 after the pairs of vectors, a masked last chunk; rows in the groups of 4 and not."""
    torch.manual_seed(0)
    x, weight = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    b = torch.randn(out_features) if bias else None
    out = native.few_rows_linear(x, weight, b)
    assert out.shape == (rows, out_features) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out, F.linear(x, weight, b), atol=1e-5 * max(1, in_features ** 0.5), rtol=1e-5)


@needs_kernel
def test_the_kernel_is_built_once_into_its_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(native.CACHE_ENVIRONMENT, str(tmp_path))
    compiler = native._compiler()
    library = native._build(compiler)
    assert library.parent == tmp_path and library.suffix == ".so"
    built = library.stat().st_mtime_ns
    assert native._build(compiler) == library and library.stat().st_mtime_ns == built  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [library.name]  # no partial file left behind


def test_without_a_compiler_it_says_why_and_decoding_keeps_torchs_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(native.CACHE_ENVIRONMENT, str(tmp_path))
    native._load.cache_clear()
    try:
        if native.unavailable_reason().startswith(("the kernel is for", "the CPU lacks", "torch does not")):
            pytest.skip(f"no kernel on this machine anyway: {native.unavailable_reason()}")
        assert not native.available()
        assert "no-such-compiler" in native.unavailable_reason()
        choice = PathChoice("linear", linear.STEP_CHOICE._all, available=linear.STEP_CHOICE._available)
        assert choice.candidates == ("plain", "transposed", "transposed_split", "columns", "columns_split")
    finally:
        native._load.cache_clear()


def test_candidates_that_cannot_run_are_never_timed(monkeypatch):
    monkeypatch.delenv("STRATALM_PATHS", raising=False)
    asked = []
    choice = PathChoice("test", ("plain", "kernel", "other"), trials=2,
                        available=lambda candidate: asked.append(candidate) or candidate != "kernel")
    ran = []
    for _ in range(6):
        choice.call_in_turn("step", {name: (lambda name=name: ran.append(name)) for name in ("plain", "kernel", "other")})
    assert "kernel" not in ran and choice.candidates == ("plain", "other")
    assert asked == ["plain", "kernel", "other"]  # asked once, on first use
