"""The case generators, one per exercise, in the order that fixes their seeds.

``MAKERS[exercise_id](seed, hidden)`` returns ``(cases, mistakes)``: the cases
``{"input": {...}, "target": ...}`` computed with the reference solution, and per case a
dict ``{"description of a known mistake": output}`` of what typical wrong implementations
(written here, never shipped) return on it. ``generate`` seeds the n-th exercise with
``SEEDS[split] + 100 * n``, so a new exercise goes at the end.
"""

from .attention import (
    make_differential_attention,
    make_multi_head_attention,
    make_self_attention,
)
from .captioning import make_captioning
from .convolution import make_conv2d
from .embeddings import make_patch_embedding, make_positional_encoding
from .layer_norm import make_layer_norm
from .transformer_layers import make_decoder_layer, make_encoder_layer
from .vision_transformer import make_attention_rollout, make_vision_transformer
from .window_attention import make_window_attention

MAKERS = {
    "self_attention": make_self_attention,
    "layer_norm": make_layer_norm,
    "multi_head_attention": make_multi_head_attention,
    "positional_encoding": make_positional_encoding,
    "patch_embedding": make_patch_embedding,
    "encoder_layer": make_encoder_layer,
    "decoder_layer": make_decoder_layer,
    "differential_attention": make_differential_attention,
    "conv2d": make_conv2d,
    "attention_rollout": make_attention_rollout,
    "vision_transformer": make_vision_transformer,
    "window_attention": make_window_attention,
    "captioning": make_captioning,
}
