"""Run a command as a 2-core AVX2-only host would, on an AVX-512 one: for the timings the
README gives for such hosts (`make test` <= 25 min there) when none is at hand.

What it sets, for the command and every process it starts: ATen's kernels at AVX2
(ATEN_CPU_CAPABILITY=avx2), MKL and oneDNN held to AVX2 (so convolutions and matmuls lose
AVX-512 and native bf16), and bench/avx2_site first on PYTHONPATH, whose sitecustomize makes
torch's AVX-512/AMX checks answer False, so `precision: auto` trains in fp32 as it does there.
It is an emulation: the caches, clock and memory are still this machine's. On 2026-12-04 it
made S4's Kaggle CNN 2.7x slower in `bench/train_speed.py` (621 vs 1,669 img/s), in the 2-3x
that real AVX2-only hosts showed (docs/benchmarks.md).

    python bench/as_avx2_host.py --check          # what torch sees under it, then natively
    python bench/as_avx2_host.py make test        # any command; its exit status is passed on
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "avx2_site"
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROBE = ("import torch; from auglab import runtime; "
         "print(f'capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {runtime.native_bf16()}, '"
         "f'precision auto -> {runtime.autocast_dtype(torch.device(\"cpu\"), \"auto\")}')")


def avx2_environ(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with the AVX2-only settings added (PYTHONPATH keeps what it had, after SITE)."""
    path = os.pathsep.join(filter(None, [str(SITE), environ.get("PYTHONPATH")]))
    return {**environ, **AVX2_ENV, "PYTHONPATH": path}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv == ["--check"]:
        for label, environ in (("as AVX2-only", avx2_environ(dict(os.environ))), ("native", dict(os.environ))):
            seen = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=False)
            if seen.returncode:
                print(f"error: the torch probe failed {label}:\n{seen.stderr}", file=sys.stderr)
                return 1
            print(f"{label:>13}: {seen.stdout.strip()}")
        return 0
    try:
        return subprocess.run(argv, env=avx2_environ(dict(os.environ)), check=False).returncode
    except FileNotFoundError:
        print(f"error: command {argv[0]!r} not found; expected a program on PATH", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
