"""Loaded at start-up by every Python process that bench/as_avx2_host.py starts (this folder is
first on its PYTHONPATH): when torch.cpu is imported, its checks for AVX-512 and AMX answer
False, as they do on an AVX2-only CPU, so `precision: auto` (auglab.runtime.native_bf16) picks
fp32 there too. The kernels themselves are held to AVX2 by the environment the script sets."""

from __future__ import annotations

import importlib.abc
import sys

AVX512_AND_AMX = ("_is_avx512_supported", "_is_avx512_vnni_supported", "_is_avx512_bf16_supported",
                  "_is_amx_tile_supported", "_is_amx_fp16_supported")


class _NoAvx512Checks(importlib.abc.MetaPathFinder):
    """Finds torch.cpu with the other finders, then answers False from its AVX-512/AMX checks."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_without_avx512(module):
            exec_module(module)
            for check in AVX512_AND_AMX:
                if hasattr(module, check):
                    setattr(module, check, lambda: False)

        spec.loader.exec_module = exec_without_avx512
        return spec


sys.meta_path.insert(0, _NoAvx512Checks())
