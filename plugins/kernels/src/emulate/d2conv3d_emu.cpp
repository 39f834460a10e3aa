// d2conv3d.cu compiled as C++ for the host emulation (see emulate.h).
#include "../d2conv3d.cu"
