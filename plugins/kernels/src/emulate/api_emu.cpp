// api.cu compiled as C++ for the host emulation (see emulate.h).
#include "../api.cu"
