"""The CPU's integer-dot-product features, read from /proc/cpuinfo (Linux; x86 and Arm).

They decide how onnxruntime's int8 kernels accumulate: with VNNI (avx512_vnni / avx_vnni) a u8 x s8
product is added straight into int32; on AVX2 without VNNI (e.g. AMD Zen 2/3, older Intel) the
VPMADDUBSW instruction first adds two products into a *saturating* int16, so a model whose int8
weights are large can compute different (clamped) sums there. Arm (sdot/udot) does not saturate."""

from __future__ import annotations

from pathlib import Path

_X86 = ("sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
        "amx_int8", "avx_vnni_int8")
_ARM = ("asimd", "asimddp", "i8mm", "sve", "sve2")


def cpu_isa_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """{vendor, model, flags: {name: bool} for the int8-relevant ISA extensions, vnni: bool,
    u8s8_may_saturate: bool}. `u8s8_may_saturate` is True on x86 with AVX2 but no VNNI, where
    onnxruntime's u8s8 kernels clamp pair sums to int16. Unknown fields are "" / False."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    present = set((fields.get("flags") or fields.get("features") or "").split())
    names = _X86 if "flags" in fields else _ARM
    flags = {n: n in present for n in names}
    vnni = bool(present & {"avx512_vnni", "avx_vnni"})
    return {"vendor": fields.get("vendor_id", fields.get("cpu implementer", "")),
            "model": fields.get("model name", fields.get("cpu part", "")),
            "flags": flags, "vnni": vnni, "u8s8_may_saturate": "avx2" in present and not vnni}
