// fastft._C: the native CPU side of fastft.
// Build information is exposed so `fastft env` can say what was compiled and how.
#include <pybind11/pybind11.h>

#ifdef FASTFT_HAVE_OPENMP
#include <omp.h>
#endif

#include <string>
#include <vector>

namespace py = pybind11;

#include "attention.h"

// attention_py.cpp
void register_attention(py::module_& m);

static py::dict build_info() {
  py::dict info;
  info["compiler"] = FASTFT_COMPILER;
  info["build_type"] = FASTFT_BUILD_TYPE;
#ifdef FASTFT_HAVE_OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
#endif
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  info["cpu_avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
  info["cpu_fma"] = static_cast<bool>(__builtin_cpu_supports("fma"));
  info["cpu_avx512f"] = static_cast<bool>(__builtin_cpu_supports("avx512f"));
#endif
  // SIMD copy of the fused-attention kernel used at run time (override: FASTFT_ATTN_ISA).
  info["attention_isa"] = fastft::attention_isa();
  py::list isas;
  for (const auto& s : fastft::attention_isas()) isas.append(s);
  info["attention_isas"] = isas;
  return info;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastft native CPU kernels";
  m.def("build_info", &build_info, "Compiler, OpenMP and CPU-feature information of this build");
  register_attention(m);
}
