// isa_target.h -- the target pragma regions that compile one copy of a kernel for an
// instruction set without -march (attention.cpp, rowops.cpp):
//   FASTFT_TARGET_PUSH("avx2,fma")  ... the copy ...  FASTFT_TARGET_POP()
// GCC's push_options / target, clang's attribute push; x86 GCC-compatible compilers only.
#pragma once

#define FASTFT_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FASTFT_TARGET_PUSH(t) FASTFT_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define FASTFT_TARGET_POP() FASTFT_PRAGMA(clang attribute pop)
#else
#define FASTFT_TARGET_PUSH(t) FASTFT_PRAGMA(GCC push_options) FASTFT_PRAGMA(GCC target(t))
#define FASTFT_TARGET_POP() FASTFT_PRAGMA(GCC pop_options)
#endif
