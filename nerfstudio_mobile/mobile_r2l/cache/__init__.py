"""The sharded, resumable on-disk store of a teacher's pseudo-view renders, by idea:

identity   CacheMeta: what identifies the views (teacher checkpoint digest, sampler, intrinsics, near/far)
store      PseudoViewCache: the directory of view files (missing / complete / verify / shards / adopt_views)
codec      encode_view / decode_view: one view as a byte-deterministic zip of PNG + npy members
generate   generate_views: the resumable, shardable generation loop with its progress bar
dataset    PseudoViewDataset / collate_views: the views as training batches
"""

from nerfstudio_mobile.mobile_r2l.cache.codec import PseudoView, decode_view, encode_view
from nerfstudio_mobile.mobile_r2l.cache.dataset import PseudoViewBatch, PseudoViewDataset, collate_views
from nerfstudio_mobile.mobile_r2l.cache.generate import RenderOutput, generate_views
from nerfstudio_mobile.mobile_r2l.cache.identity import CACHE_FORMAT_VERSION, CacheMeta, teacher_identity
from nerfstudio_mobile.mobile_r2l.cache.store import (
    CacheMismatchError,
    CorruptViewError,
    PseudoViewCache,
    caches_beside,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheMeta",
    "CacheMismatchError",
    "CorruptViewError",
    "PseudoView",
    "PseudoViewBatch",
    "PseudoViewCache",
    "PseudoViewDataset",
    "RenderOutput",
    "caches_beside",
    "collate_views",
    "decode_view",
    "encode_view",
    "generate_views",
    "teacher_identity",
]
