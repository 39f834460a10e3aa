"""vosrt.training: PyTorch models (STCN, 3DC-Seg with D²Conv3D), reference operators, data and training."""
