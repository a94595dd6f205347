"""What the benchmarks share: one line naming the machine they ran on (CPU model, cores,
AVX-512, JAX devices), and the writer of their sections of ``RESULTS.md``."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    """E.g. ``x86_64 CPU (Intel(R) Xeon(R) Processor), 2 cores, AVX-512 present, 1 cpu device(s);
    jax 0.10.2``. Reads ``/proc/cpuinfo`` where it exists (the CPU model is not in ``platform``
    on Linux)."""
    import jax

    cpu, avx512 = platform.processor() or platform.machine(), None
    try:
        info = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
        avx512 = " avx512f" in info
    except OSError:
        pass
    isa = "" if avx512 is None else f", AVX-512 {'present' if avx512 else 'absent'}"
    devices = jax.devices()
    return (f"{platform.machine()} CPU ({cpu}), {os.cpu_count()} cores{isa}, {len(devices)} "
            f"{devices[0].platform} device(s) ({devices[0].device_kind}); jax {jax.__version__}")


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section that starts with ``heading`` (e.g. ``"## bo_step"``) in ``path``
    by ``text`` (appended at the end; the file is created with a title if missing), leaving
    the other sections as they are."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(heading)
    if start >= 0:
        end = old.find("\n## ", start + 1)
        old = old[:start] + (old[end + 1 :] if end >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)
