import pytest

from kvmlite.errors import ConfigError
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.vmm.cpuid import FEATURES, apply_features, parse_feature_spec


def entries() -> list[CpuidEntry]:
    all_ones = 0xFFFF_FFFF
    return [
        CpuidEntry(1, 0, 0, 0x306A9, 0x800, all_ones, all_ones),
        CpuidEntry(7, 0, 1, 0, all_ones, all_ones, 0),
        CpuidEntry(0xD, 0, 1, 0xE7, 0x988, 0x988, 0),
        CpuidEntry(0xD, 1, 1, 0xF, 0, 0, 0),
    ]


def bit(es: list[CpuidEntry], name: str) -> bool:
    f = FEATURES[name]
    e = next(e for e in es if (e.function, e.index) == (f.leaf, f.subleaf))
    return bool(getattr(e, f.reg.name.lower()) >> f.bit & 1)


def test_hiding_xsave_hides_what_depends_on_it():
    out = apply_features(entries(), "-xsave")
    for name in ("xsave", "osxsave", "avx", "avx2", "avx512f", "avx512bw", "xsaves", "xsaveopt"):
        assert not bit(out, name), name
    assert bit(out, "sse4_2") and bit(out, "bmi2")  # unrelated features stay
    leaf_d0 = next(e for e in out if (e.function, e.index) == (0xD, 0))
    assert (leaf_d0.eax, leaf_d0.ebx, leaf_d0.ecx) == (0, 0, 0)


def test_hiding_avx512f_clears_its_xcr0_components_only():
    out = apply_features(entries(), "-avx512f")
    assert not bit(out, "avx512vl") and bit(out, "avx2")
    leaf_d0 = next(e for e in out if (e.function, e.index) == (0xD, 0))
    assert leaf_d0.eax == 0x07  # x87, SSE, AVX remain


def test_set_and_clear_in_one_spec():
    out = apply_features([CpuidEntry(1, 0, 0, 0, 0, 0, 0)], "+x2apic, -fpu")
    assert bit(out, "x2apic") and not bit(out, "fpu")


def test_vendor_replaces_the_vendor_string_of_leaves_0_and_0x80000000():
    base = [CpuidEntry(0, 0, 0, 0xD, 0, 0, 0), CpuidEntry(0x8000_0000, 0, 0, 0x8000_0021, 1, 2, 3)]
    out = apply_features([*base, *entries()], "vendor=GenuineIntel,-fpu")
    for e in out[:2]:
        assert (e.ebx, e.edx, e.ecx) == (0x756E6547, 0x49656E69, 0x6C65746E)  # "Genu" "ineI" "ntel"
    assert (out[0].eax, out[1].eax) == (0xD, 0x8000_0021) and not bit(out, "fpu")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("xsave", "must start with"), ("-warpdrive", "unknown feature"), ("vendor=Intel", "12 ASCII")],
)
def test_bad_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_feature_spec(spec)
