// Element types the kernels are instantiated for, named without torch types so that kernel
// files stay free of torch headers (the bindings map at::ScalarType to these).
#pragma once

namespace fasttx {

enum class DType { kFloat16, kBFloat16, kFloat32 };

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
  }
  return "unknown";
}

}  // namespace fasttx
