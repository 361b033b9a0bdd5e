"""The shared core: attention, masks, positions, feed-forwards, norms and blocks."""
from .attention import AdditiveAttention, KVCache, MultiHeadAttention, attention, capture_attention, merge_heads
from .blocks import (
    BlockConfig,
    TransformerBlock,
    TransformerStack,
    feed_forward,
    find_blocks,
    multi_head_attention,
    set_grad_checkpointing,
)
from .layers import DropPath, Dropout, FeedForward, LayerScale, QuickGELU, RMSNorm, dropout, make_activation, make_norm, trunc_normal_init
from .masks import causal_mask, combine_masks, decoder_padding_mask, fold_mask_into_bias, padding_mask
from .position import (
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
    RotaryEmbedding2D,
    SinusoidalPositionalEmbedding,
    check_length,
    check_pad_token,
    relative_position_bucket,
    resample_pos_state,
    resize_pos_grid,
    sinusoidal_table,
)

__all__ = [
    "AdditiveAttention", "KVCache", "MultiHeadAttention", "attention", "capture_attention", "merge_heads", "BlockConfig",
    "TransformerBlock", "TransformerStack", "feed_forward", "find_blocks", "multi_head_attention", "set_grad_checkpointing",
    "DropPath", "Dropout", "FeedForward", "LayerScale", "QuickGELU", "RMSNorm", "dropout", "make_activation", "make_norm",
    "trunc_normal_init",
    "causal_mask", "combine_masks", "decoder_padding_mask", "fold_mask_into_bias", "padding_mask", "LearnedPositionalEmbedding", "RelativePositionBias",
    "RotaryEmbedding", "SinusoidalPositionalEmbedding", "check_length", "check_pad_token", "relative_position_bucket",
    "resample_pos_state", "resize_pos_grid", "sinusoidal_table",
]
from .qv_bias import QVBiasAttention, QVBiasLinear  # noqa: E402
__all__ += ["RotaryEmbedding2D", "QVBiasAttention", "QVBiasLinear"]
from .talking_heads import HeadMixer, TalkingHeadsAttention, talking_heads_attention  # noqa: E402
__all__ += ["HeadMixer", "TalkingHeadsAttention", "talking_heads_attention"]
from .window import WindowAttention, shift_mask, window_attention, window_geometry  # noqa: E402
__all__ += ["WindowAttention", "shift_mask", "window_attention", "window_geometry"]
from .layers import glu_hidden  # noqa: E402
from .position import AxialRotaryTable, sincos_table_2d  # noqa: E402
__all__ += ["glu_hidden", "AxialRotaryTable", "sincos_table_2d"]
