"""Training data: dataset folders (DAVIS 2016/2017, YouTube-VOS) and the samplers of both families.

- :class:`VideoFolder`: reads frames and annotations of a dataset folder exactly as stored.
- :class:`VOSTripletDataset`: STCN main training (three ordered frames, at most two objects,
  frame-gap curriculum :func:`max_skip_at`).
- :class:`GeneratedTripletDataset`: the same triplets from clips generated on the fly (no two alike).
- :class:`StaticSequenceDataset`: STCN static-image pre-training (pseudo videos from one image).
- :class:`ForegroundClipDataset`: 3DC-Seg clips with foreground masks.

Generated data for all of them comes from :mod:`vosrt.sdk.synthetic` (DAVIS 2017 layout).
"""
from vosrt.training.data.clips import ForegroundClipDataset, sample_clip_indices
from vosrt.training.data.folders import VideoFolder
from vosrt.training.data.generated import GeneratedTripletDataset
from vosrt.training.data.static import StaticSequenceDataset, find_image_mask_pairs
from vosrt.training.data.vos import SKIP_CURRICULUM, VOSTripletDataset, max_skip_at, sample_frame_indices

__all__ = ["VideoFolder", "GeneratedTripletDataset", "VOSTripletDataset", "StaticSequenceDataset", "ForegroundClipDataset",
           "SKIP_CURRICULUM", "max_skip_at", "sample_frame_indices", "sample_clip_indices",
           "find_image_mask_pairs"]
