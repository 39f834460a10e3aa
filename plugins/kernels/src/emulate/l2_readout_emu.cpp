// l2_readout.cu compiled as C++ for the host emulation (see emulate.h).
#include "../l2_readout.cu"
