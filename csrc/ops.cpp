// Registers the CUDA implementations of the sageattention ops. The schemas (and the
// CPU and fake implementations) are defined in sageattention/_ops.py, which imports
// this module afterwards. No pybind11: the module exports nothing to Python, which
// keeps it buildable against the stable ABI (one cp39-abi3 wheel per torch x CUDA).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(sageattention, CUDA, m) {
  m.impl("quant_int8", &sage::quant_int8);
  m.impl("quant_int8_smooth", &sage::quant_int8_smooth);
  m.impl("quant_v_fp8", &sage::quant_v_fp8);
  m.impl("attn_fp16pv", &sage::attn_fp16pv);
  m.impl("attn_fp8pv", &sage::attn_fp8pv);
}

// attn_sm90 registers itself from sm90/attn_sm90.cu when the build targets sm_90a.

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "CUDA kernels of sageattention", -1, nullptr};
  return PyModule_Create(&module);
}
