"""Issue 32 (1): doctor says which of torch's CUDA build, the driver and the GPU does not fit, and what to install
(a CUDA 13 torch on an R535-R570 driver saw no GPU; on a V100 it has no kernels)."""

from training_core.cuda_compat import arch_problem, driver_problem

H100_CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def test_a_driver_older_than_the_build_is_named_with_both_fixes():
    said = driver_problem("13.0", 12020)  # torch cu130 on an R535 driver
    assert said.fix.startswith("install torch built for CUDA 12") and said.why.endswith("torch sees no GPU")
    assert str(said) == ("torch is built for CUDA 13.0, but the driver supports CUDA up to 12.2: torch sees no GPU; "
                    "install torch built for CUDA 12 (make setup CUDA=cu126), or update the driver to R580 or newer")
    assert driver_problem("13.0", 13000) is None and driver_problem("12.6", 12020) is None  # minor compatibility
    assert driver_problem("12.6", 13010) is None and driver_problem(None, 12020) is None
    assert driver_problem("13.0", None) is None  # not known: nothing claimed


def test_a_gpu_without_kernels_in_the_build_is_named():
    assert arch_problem((9, 0), H100_CU130, "13.0") is None
    assert arch_problem((8, 9), H100_CU130, "13.0") is None  # sm_86 cubins run on sm_89
    assert arch_problem((7, 0), CU126, "12.6") is None
    v100 = str(arch_problem((7, 0), H100_CU130, "13.0"))
    assert v100.startswith("this GPU is sm_70, but torch (CUDA 13.0) carries code only for sm_75, sm_80")
    assert "CUDA 13 builds dropped Volta: make setup CUDA=cu126" in v100
    assert arch_problem((12, 1), ["sm_90", "compute_90"], "12.6") is None  # PTX of a lower architecture: JIT
    assert str(arch_problem((8, 0), ["sm_90"], "12.6")) == ("this GPU is sm_80, but torch (CUDA 12.6) carries code "
                                                             "only for sm_90: install a torch build that includes sm_80")
    assert arch_problem((8, 0), [], None) is None
