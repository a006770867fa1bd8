"""Transformer building blocks, written from scratch with basic tensor operations.

This file is the exercise bank of Question 1. Every exercise is a class or a
function whose body you complete. Test one exercise with, for example::

    python -m unittest test_functions.TestClass.test_self_attention -v

and all of them with ``python -m unittest test_functions -v``.

Rules for every exercise
------------------------
* Use basic tensor operations (matmul, sum, mean, exp, softmax, reshape, ...).
  Do not call torch's own version of what you are implementing
  (``F.layer_norm``/``nn.LayerNorm``, ``nn.MultiheadAttention``,
  ``F.scaled_dot_product_attention``, ``F.conv2d``/``nn.Conv2d``): the tests
  detect it and fail.
* Do not rename the parameters created in ``__init__``: the tests load
  reference weights into them by name.
* Shape comments use B = batch, T = tokens (sequence length), S = key/value
  tokens, C or E = channels / embedding size, H = heads, D = per-head size.

Solution markers (for instructors)
----------------------------------
The instructor's copy holds each reference solution between two whole comment
lines at the same indentation: a line ``# BEGIN SOLUTION <exercise_id>`` opens
the region and a line ``# END SOLUTION`` closes it (see any exercise below).
``<exercise_id>`` is one lower_snake_case id (for example ``self_attention``).
Several regions may share an id; regions never nest. The release command
replaces each region of a student exercise by a ``YOUR CODE START/END`` block
that raises ``NotImplementedError``; regions of exercises that stay "given"
are kept and only the two marker lines are removed. Code outside the markers
(for example every ``__init__`` that creates parameters) is shipped as is.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# 1.1 Self-attention (single head)
# ---------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention (Vaswani et al., 2017).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(query_dim)) V, with Q, K and V
    linear projections of the same input x. No mask.
    """

    def __init__(self, input_dim, query_dim, key_dim, value_dim):
        super().__init__()
        assert query_dim == key_dim, "queries and keys must have the same size"
        self.query_dim = query_dim
        self.W_query = nn.Linear(input_dim, query_dim)
        self.W_key = nn.Linear(input_dim, key_dim)
        self.W_value = nn.Linear(input_dim, value_dim)
        self.softmax = nn.Softmax(dim=2)

    def forward(self, x):
        """Attend from every token of x to every token of x.

        Inputs:
        - x: (B, T, input_dim) input token embeddings.

        Returns:
        - out: (B, T, value_dim) attention outputs.

        Hint: project x to Q (B, T, query_dim), K (B, T, key_dim) and
        V (B, T, value_dim); the scores Q K^T have shape (B, T, T). Scale them by
        sqrt(query_dim), apply self.softmax (over the keys, dim 2), multiply by V.
        """
        # BEGIN SOLUTION self_attention
        q = self.W_query(x)  # (B, T, Dq)
        k = self.W_key(x)  # (B, T, Dq)
        v = self.W_value(x)  # (B, T, Dv)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.query_dim)  # (B, T, T)
        weights = self.softmax(scores)  # (B, T, T), rows sum to 1
        return torch.bmm(weights, v)  # (B, T, Dv)
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.2 Layer normalisation
# ---------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """Layer normalisation over the last (channel) dimension (Ba et al., 2016).

    LN(x) = w * (x - mean) / sqrt(var + eps) + b, with mean and var taken over
    the C channels of each token (biased variance, as torch.nn.LayerNorm).
    """

    def __init__(self, input_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(input_dim))
        self.b = nn.Parameter(torch.zeros(input_dim))

    def forward(self, x):
        """Normalise every token of x over its channels.

        Inputs:
        - x: (B, T, C) input embeddings (any number of leading dims works).

        Returns:
        - out: (B, T, C) normalised embeddings, scaled by self.w and shifted by self.b.

        Hint: compute the mean and the BIASED variance (divide by C, i.e.
        unbiased=False) over the last dim with keepdim=True, so they broadcast
        as (B, T, 1). eps goes inside the square root.
        """
        # BEGIN SOLUTION layer_norm
        mean = x.mean(dim=-1, keepdim=True)  # (B, T, 1)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (B, T, 1), biased
        x_hat = (x - mean) / torch.sqrt(var + self.eps)  # (B, T, C)
        return x_hat * self.w + self.b  # (B, T, C)
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.3 Multi-head attention
# ---------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention with a boolean mask and an output projection.

    Works as self-attention (query = key = value) and as cross-attention
    (keys/values from another sequence, e.g. a decoder attending to an encoder).

    Mask polarity: ``attn_mask[..., i, j] == True`` means query i MAY attend
    to key j; False means it may not. Every query must be allowed at least one key.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)  # applied to the attention weights

    def forward(self, query, key, value, attn_mask=None, return_attention=False):
        """Multi-head scaled dot-product attention.

        Inputs:
        - query: (B, T, E) tokens that ask.
        - key: (B, S, E) tokens that are looked at.
        - value: (B, S, E) what each key token contributes.
        - attn_mask: None, or a bool tensor of shape (T, S) or (B, T, S).
          True = query may attend to that key; False = blocked.
        - return_attention: if True, also return the attention weights.

        Returns:
        - out: (B, T, E) after the output projection.
        - attn: (B, H, T, S) attention weights (after softmax, before dropout),
          only when return_attention is True.

        Hint: project, then split E into H heads of size D = E / H:
        (B, T, E) -> (B, T, H, D) -> (B, H, T, D). Scores are (B, H, T, S) scaled by
        sqrt(D); blocked entries become -inf before the softmax over S.
        """
        # BEGIN SOLUTION multi_head_attention
        B, T, E = query.shape
        S = key.shape[1]
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(query).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(key).view(B, S, H, D).transpose(1, 2)  # (B, H, S, D)
        v = self.v_proj(value).view(B, S, H, D).transpose(1, 2)  # (B, H, S, D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask[:, None]  # (B, 1, T, S), same mask for all heads
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        attn = scores.softmax(dim=-1)  # (B, H, T, S)
        out = self.dropout(attn) @ v  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, E)  # (B, T, E), heads concatenated
        out = self.out_proj(out)  # (B, T, E)
        if return_attention:
            return out, attn
        return out
        # END SOLUTION


def causal_mask(num_tokens, device=None):
    """Mask for autoregressive attention: token i may attend to tokens 0..i.

    Inputs:
    - num_tokens: T.

    Returns:
    - mask: (T, T) bool, True on and below the diagonal (True = may attend).
    """
    return torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device).tril()


# ---------------------------------------------------------------------------
# 1.4 Positional encodings
# ---------------------------------------------------------------------------


def sinusoidal_encoding_1d(num_positions, dim):
    """Sinusoidal positional encoding of the original transformer.

    PE[p, 2i] = sin(p / 10000^(2i / dim)) and PE[p, 2i + 1] = cos(p / 10000^(2i / dim)).

    Inputs:
    - num_positions: N, the number of positions (0, 1, ..., N - 1).
    - dim: C, the embedding size (even).

    Returns:
    - pe: (N, C) float32 encoding; row p encodes position p.

    Hint: build positions (N, 1) and frequencies 1 / 10000^(2i / dim) for
    i = 0 .. C/2 - 1, shape (1, C/2); their product is (N, C/2). Even columns
    get the sine, odd columns the cosine.
    """
    # BEGIN SOLUTION positional_encoding
    assert dim % 2 == 0, "dim must be even"
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (N, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float32)  # (C/2,)
    inv_freq = torch.exp(-math.log(10000.0) * two_i / dim)[None, :]  # (1, C/2)
    angles = position * inv_freq  # (N, C/2)
    pe = torch.zeros(num_positions, dim)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe  # (N, C)
    # END SOLUTION


def sinusoidal_encoding_2d(height, width, dim):
    """2D sinusoidal encoding for a grid of patches, in row-major patch order.

    The first dim/2 channels are the 1D encoding of the patch's row, the last
    dim/2 channels the 1D encoding of its column.

    Inputs:
    - height, width: the patch grid size (h, w).
    - dim: C, the embedding size (divisible by 4).

    Returns:
    - pe: (h * w, C); row r * w + c encodes the patch in grid row r, column c.

    Hint: reuse sinusoidal_encoding_1d(h, C/2) and (w, C/2), expand both to
    (h, w, C/2), concatenate on the channel dim and flatten to (h * w, C).
    """
    # BEGIN SOLUTION positional_encoding
    assert dim % 4 == 0, "dim must be divisible by 4"
    row = sinusoidal_encoding_1d(height, dim // 2)  # (h, C/2)
    col = sinusoidal_encoding_1d(width, dim // 2)  # (w, C/2)
    row = row[:, None, :].expand(height, width, dim // 2)  # (h, w, C/2)
    col = col[None, :, :].expand(height, width, dim // 2)  # (h, w, C/2)
    return torch.cat([row, col], dim=-1).reshape(height * width, dim)  # (h*w, C)
    # END SOLUTION


class LearnedPositionalEncoding1D(nn.Module):
    """One learned vector per token position, added to the tokens."""

    def __init__(self, num_positions, dim):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.zeros(1, num_positions, dim))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)

    def forward(self, x):
        """Inputs:
        - x: (B, N, C) tokens, N == num_positions.

        Returns:
        - out: (B, N, C), x plus the embedding of each position.

        Hint: self.pos_embedding is (1, N, C) and broadcasts over the batch.
        """
        # BEGIN SOLUTION positional_encoding
        return x + self.pos_embedding  # (B, N, C)
        # END SOLUTION


class LearnedPositionalEncoding2D(nn.Module):
    """Learned row and column embeddings; patch (r, c) gets row[r] + col[c]."""

    def __init__(self, height, width, dim):
        super().__init__()
        self.height, self.width = height, width
        self.row_embedding = nn.Parameter(torch.zeros(height, dim))
        self.col_embedding = nn.Parameter(torch.zeros(width, dim))
        nn.init.trunc_normal_(self.row_embedding, std=0.02)
        nn.init.trunc_normal_(self.col_embedding, std=0.02)

    def forward(self, x):
        """Inputs:
        - x: (B, h * w, C) patch tokens in row-major order.

        Returns:
        - out: (B, h * w, C), x plus row_embedding[r] + col_embedding[c] for
          the token of grid row r, column c.

        Hint: broadcast (h, 1, C) + (1, w, C) into (h, w, C), then flatten
        the grid to (h * w, C) so that token index = r * w + c.
        """
        # BEGIN SOLUTION positional_encoding
        grid = self.row_embedding[:, None, :] + self.col_embedding[None, :, :]  # (h, w, C)
        return x + grid.reshape(1, self.height * self.width, -1)  # (B, h*w, C)
        # END SOLUTION


class SinusoidalPositionalEncoding1D(nn.Module):
    """Fixed 1D sinusoidal encoding added to the tokens (no parameters)."""

    def forward(self, x):
        """Inputs:
        - x: (B, N, C) tokens.

        Returns:
        - out: (B, N, C), x plus sinusoidal_encoding_1d(N, C).

        Hint: the table has no batch dim; index it with None to broadcast,
        and move it to x's device and dtype.
        """
        # BEGIN SOLUTION positional_encoding
        B, N, C = x.shape
        return x + sinusoidal_encoding_1d(N, C).to(x)[None]  # (B, N, C)
        # END SOLUTION


class SinusoidalPositionalEncoding2D(nn.Module):
    """Fixed 2D sinusoidal encoding for an h x w patch grid (no parameters)."""

    def __init__(self, height, width):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x):
        """Inputs:
        - x: (B, h * w, C) patch tokens in row-major order.

        Returns:
        - out: (B, h * w, C), x plus sinusoidal_encoding_2d(h, w, C).

        Hint: same as the 1D module, with the 2D table.
        """
        # BEGIN SOLUTION positional_encoding
        C = x.shape[-1]
        return x + sinusoidal_encoding_2d(self.height, self.width, C).to(x)[None]  # (B, N, C)
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.5 Patch embedding
# ---------------------------------------------------------------------------


def img_to_patch(x, patch_size, flatten_channels=True):
    """Cut images into non-overlapping square patches.

    Inputs:
    - x: (B, C, H, W) images; H and W divisible by patch_size p.
    - patch_size: p.
    - flatten_channels: if True, flatten each patch to a vector.

    Returns:
    - patches: (B, N, C * p * p) if flatten_channels, else (B, N, C, p, p), where
      N = (H / p) * (W / p) in row-major order (left to right, then top to
      bottom). A flattened patch is ordered (channel, row in patch, column in
      patch), the same order as an nn.Conv2d weight of shape (E, C, p, p).

    Hint: view as (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, C, p, p),
    then reshape.
    """
    # BEGIN SOLUTION patch_embedding
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    x = x.reshape(B, (H // p) * (W // p), C, p, p)  # (B, N, C, p, p)
    if flatten_channels:
        x = x.flatten(2)  # (B, N, C*p*p)
    return x
    # END SOLUTION


class PatchEmbedding(nn.Module):
    """Split an image into patches and project each patch linearly to embed_dim."""

    def __init__(self, img_size, patch_size, in_channels, embed_dim):
        super().__init__()
        assert img_size % patch_size == 0, "img_size must be divisible by patch_size"
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Linear(in_channels * patch_size * patch_size, embed_dim)

    def forward(self, x):
        """Inputs:
        - x: (B, C, H, W) images, H = W = img_size.

        Returns:
        - tokens: (B, N, E), one embedding per patch, N = num_patches.

        Hint: img_to_patch then self.proj (a Linear acts on the last dim).
        """
        # BEGIN SOLUTION patch_embedding
        patches = img_to_patch(x, self.patch_size)  # (B, N, C*p*p)
        return self.proj(patches)  # (B, N, E)
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.6 / 1.7 Transformer encoder and decoder layers (pre-LayerNorm)
# ---------------------------------------------------------------------------


def _mlp(embed_dim, mlp_ratio, dropout):
    hidden = int(embed_dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(embed_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, embed_dim),
        nn.Dropout(dropout),
    )


class TransformerEncoderLayer(nn.Module):
    """Pre-LN encoder layer: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        self.norm1 = LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.dropout = nn.Dropout(dropout)  # on the attention branch
        self.norm2 = LayerNorm(embed_dim)
        self.mlp = _mlp(embed_dim, mlp_ratio, dropout)

    def forward(self, x, attn_mask=None, return_attention=False):
        """Inputs:
        - x: (B, T, E) tokens.
        - attn_mask: None or bool (T, T) / (B, T, T), True = may attend.
        - return_attention: also return the attention weights.

        Returns:
        - out: (B, T, E).
        - attn: (B, H, T, T), only when return_attention is True.

        Hint: normalise BEFORE each sub-layer and add the sub-layer's output to
        the un-normalised input (residual). Call self.attn with
        return_attention=True to get the weights; dropout the attention branch.
        """
        # BEGIN SOLUTION encoder_layer
        h = self.norm1(x)  # (B, T, E)
        h, attn = self.attn(h, h, h, attn_mask=attn_mask, return_attention=True)
        x = x + self.dropout(h)  # (B, T, E)
        x = x + self.mlp(self.norm2(x))  # (B, T, E)
        if return_attention:
            return x, attn
        return x
        # END SOLUTION


class TransformerDecoderLayer(nn.Module):
    """Pre-LN decoder layer: masked self-attention, cross-attention, MLP."""

    def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        self.norm1 = LayerNorm(embed_dim)
        self.self_attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.norm2 = LayerNorm(embed_dim)
        self.cross_attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.norm3 = LayerNorm(embed_dim)
        self.mlp = _mlp(embed_dim, mlp_ratio, dropout)
        self.dropout = nn.Dropout(dropout)  # on both attention branches

    def forward(self, x, memory, self_attn_mask=None, memory_mask=None):
        """Inputs:
        - x: (B, T, E) decoder tokens.
        - memory: (B, S, E) encoder output that the decoder reads.
        - self_attn_mask: None or bool (T, T) / (B, T, T); for autoregressive
          decoding pass causal_mask(T). True = may attend.
        - memory_mask: None or bool (T, S) / (B, T, S), True = may attend.

        Returns:
        - out: (B, T, E).

        Hint: three residual blocks, each starting with its own LayerNorm:
        self-attention on LN(x); cross-attention with queries from LN(x) and
        keys/values from memory (not normalised here); MLP.
        """
        # BEGIN SOLUTION decoder_layer
        h = self.norm1(x)  # (B, T, E)
        x = x + self.dropout(self.self_attn(h, h, h, attn_mask=self_attn_mask))
        h = self.norm2(x)  # (B, T, E)
        x = x + self.dropout(self.cross_attn(h, memory, memory, attn_mask=memory_mask))
        x = x + self.mlp(self.norm3(x))  # (B, T, E)
        return x
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.8 Differential attention (Ye et al., 2024, arXiv 2410.05258)
# ---------------------------------------------------------------------------


def lambda_init_fn(layer_idx):
    """Initial lambda of the layer at depth layer_idx (counted from 1, the first layer).

    Inputs:
    - layer_idx: int >= 1.

    Returns:
    - lambda_init: float, 0.8 - 0.6 * exp(-0.3 * (layer_idx - 1)).

    Hint: the first layer gets 0.2; deeper layers approach 0.8.
    """
    # BEGIN SOLUTION differential_attention
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_idx - 1))
    # END SOLUTION


class DifferentialAttention(nn.Module):
    """Multi-head differential attention.

    Each head computes two softmax attention maps from two halves of its
    queries and keys and subtracts them, which cancels attention "noise":
        A = softmax(Q1 K1^T / sqrt(D)) - lambda * softmax(Q2 K2^T / sqrt(D))
        head = (1 - lambda_init) * RMSNorm(A V)
    with the learnable scalar
        lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init
    and lambda_init = 0.8 - 0.6 * exp(-0.3 * (layer_idx - 1)).

    Channel layout (as in the paper's code): the projected queries (and keys)
    of one token, (E,), are viewed as (2H, D) with D = E / (2H); rows 2h and
    2h + 1 are Q1 and Q2 of head h. Values are viewed as (H, 2D).
    """

    def __init__(self, embed_dim, num_heads, layer_idx=1, eps=1e-5):
        super().__init__()
        assert embed_dim % (2 * num_heads) == 0, "embed_dim must be divisible by 2 * num_heads"
        assert layer_idx >= 1, "layer_idx counts from 1"
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads // 2  # D, the size of Q1 (and of Q2)
        self.eps = eps
        self.lambda_init = lambda_init_fn(layer_idx)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        self.lambda_q1 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(self.head_dim) * 0.1)
        # RMSNorm weight applied to each head's output, shared by the heads.
        self.norm_weight = nn.Parameter(torch.ones(2 * self.head_dim))

    def forward(self, x, attn_mask=None, return_attention=False):
        """Inputs:
        - x: (B, T, E) tokens (self-attention).
        - attn_mask: None or bool (T, T) / (B, T, T), True = may attend.
        - return_attention: also return the differential attention maps.

        Returns:
        - out: (B, T, E).
        - attn: (B, H, T, T), the difference map A of each head, only when
          return_attention is True.

        Hint: q and k become (B, 2H, T, D), v becomes (B, H, T, 2D); the 2H
        softmax maps (B, 2H, T, T) view as (B, H, 2, T, T). RMSNorm of each
        head's output y (B, H, T, 2D): y / sqrt(mean(y^2 over 2D) + eps) * norm_weight.
        """
        # BEGIN SOLUTION differential_attention
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, T, 2 * H, D).transpose(1, 2)  # (B, 2H, T, D)
        k = self.k_proj(x).view(B, T, 2 * H, D).transpose(1, 2)  # (B, 2H, T, D)
        v = self.v_proj(x).view(B, T, H, 2 * D).transpose(1, 2)  # (B, H, T, 2D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, 2H, T, T)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask[:, None]  # (B, 1, T, T)
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        maps = scores.softmax(dim=-1).view(B, H, 2, T, T)  # (B, H, 2, T, T)
        lam1 = torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
        lam2 = torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
        lam = lam1 - lam2 + self.lambda_init  # scalar
        attn = maps[:, :, 0] - lam * maps[:, :, 1]  # (B, H, T, T)
        y = attn @ v  # (B, H, T, 2D)
        rms = torch.sqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (B, H, T, 1)
        y = y / rms * self.norm_weight * (1 - self.lambda_init)  # (B, H, T, 2D)
        y = y.transpose(1, 2).reshape(B, T, E)  # (B, T, E), heads concatenated
        out = self.out_proj(y)  # (B, T, E)
        if return_attention:
            return out, attn
        return out
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.9 Convolution from scratch: forward and backward
# ---------------------------------------------------------------------------


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv2dFunction(torch.autograd.Function):
    """2D cross-correlation (what nn.Conv2d computes) with a hand-written backward.

    Use it as ``Conv2dFunction.apply(x, weight, bias, stride, padding)``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride=1, padding=0):
        """Inputs:
        - x: (B, C, H, W) input.
        - weight: (C_out, C, kh, kw) filters.
        - bias: (C_out,) or None.
        - stride, padding: int or (int, int).

        Returns:
        - out: (B, C_out, H_out, W_out) with H_out = (H + 2 * pad_h - kh) // stride_h + 1
          (same for W).

        Hint: F.unfold(x, (kh, kw), padding=..., stride=...) gives the patches
        as columns (B, C*kh*kw, L), L = H_out * W_out; then one matmul with the
        weight viewed as (C_out, C*kh*kw). Save what backward needs with ctx.
        """
        # BEGIN SOLUTION conv2d
        stride, padding = _pair(stride), _pair(padding)
        B, C, H, W = x.shape
        C_out, _, kh, kw = weight.shape
        H_out = (H + 2 * padding[0] - kh) // stride[0] + 1
        W_out = (W + 2 * padding[1] - kw) // stride[1] + 1
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (B, C*kh*kw, L)
        out = weight.reshape(C_out, -1) @ cols  # (B, C_out, L)
        if bias is not None:
            out = out + bias[None, :, None]
        ctx.save_for_backward(cols, weight)
        ctx.conv_args = (x.shape, stride, padding, bias is not None)
        return out.reshape(B, C_out, H_out, W_out)  # (B, C_out, H_out, W_out)
        # END SOLUTION

    @staticmethod
    def backward(ctx, grad_out):
        """Inputs:
        - grad_out: (B, C_out, H_out, W_out), dLoss/dout.

        Returns:
        - grad_x: (B, C, H, W); grad_weight: (C_out, C, kh, kw); grad_bias: (C_out,) or
          None; then None, None for stride and padding.

        Hint: with out = W_mat @ cols, dW_mat = sum over batch of grad @ cols^T
        and dcols = W_mat^T @ grad; F.fold sums dcols back into image positions
        (overlapping patches add up). The bias gradient sums over B, H_out, W_out.
        """
        # BEGIN SOLUTION conv2d
        cols, weight = ctx.saved_tensors
        x_shape, stride, padding, has_bias = ctx.conv_args
        C_out, C, kh, kw = weight.shape
        B = grad_out.shape[0]
        g = grad_out.reshape(B, C_out, -1)  # (B, C_out, L)
        grad_w = (
            (g @ cols.transpose(1, 2)).sum(dim=0).reshape(C_out, C, kh, kw)
        )  # (C_out, C, kh, kw)
        grad_cols = weight.reshape(C_out, -1).t() @ g  # (B, C*kh*kw, L)
        grad_x = F.fold(grad_cols, x_shape[2:], (kh, kw), padding=padding, stride=stride)
        grad_b = g.sum(dim=(0, 2)) if has_bias else None  # (C_out,)
        return grad_x, grad_w, grad_b, None, None
        # END SOLUTION


class CustomConv2d(nn.Module):
    """Drop-in replacement for nn.Conv2d (groups=1, dilation=1) using Conv2dFunction.

    Same parameter names, shapes and initialisation as nn.Conv2d: ``weight``
    (out_channels, in_channels, kh, kw) and ``bias`` (out_channels,) or None.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Conv2d's default initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """Inputs:
        - x: (B, C, H, W).

        Returns:
        - out: (B, C_out, H_out, W_out).

        Hint: one call to Conv2dFunction.apply.
        """
        # BEGIN SOLUTION conv2d
        return Conv2dFunction.apply(x, self.weight, self.bias, self.stride, self.padding)
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.10 Attention rollout (Abnar & Zuidema, 2020)
# ---------------------------------------------------------------------------


def attention_rollout(attentions):
    """Track how much each input token contributes to each output token.

    Inputs:
    - attentions: list of L tensors (B, H, T, T), the attention weights of
      layers 1..L (token 0 is the CLS token); or one tensor (L, B, H, T, T).

    Returns:
    - rollout: (B, T, T), rollout[b, i, j] = share of input token j in output token i.
    - cls_map: (B, T - 1), the CLS row of the rollout without the CLS column:
      how much each patch contributes to the CLS token.

    Hint: per layer, average over heads, add the identity (the residual path)
    and renormalise each row to sum 1. Then multiply: R = A_L @ ... @ A_2 @ A_1.
    """
    # BEGIN SOLUTION attention_rollout
    rollout = None
    for attn in attentions:
        a = attn.mean(dim=1)  # (B, T, T), heads averaged
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # residual
        a = a / a.sum(dim=-1, keepdim=True)  # (B, T, T), rows sum to 1
        rollout = a if rollout is None else a @ rollout  # later layers on the left
    return rollout, rollout[:, 0, 1:]  # (B, T, T), (B, T-1)
    # END SOLUTION


# ---------------------------------------------------------------------------
# 1.11 A small Vision Transformer for 32x32 images
# ---------------------------------------------------------------------------

POS_EMBEDDINGS = ("none", "learned1d", "learned2d", "sinusoidal")
POOLS = ("cls", "mean")


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al., 2021) assembled from the pieces above.

    Patch embedding -> positional encoding of the patch tokens -> prepend a
    learned CLS token -> pre-LN encoder layers -> final LayerNorm -> linear head
    on the CLS token (``pool="cls"``) or on the mean of the patch tokens
    (``pool="mean"``, as XCS231N's ViT does). The CLS token gets no positional
    encoding (it is learned anyway and has no place in the image grid).
    """

    def __init__(
        self,
        img_size=32,
        patch_size=4,
        in_channels=3,
        num_classes=10,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        dropout=0.0,
        pos_embedding="learned1d",
        pool="cls",
    ):
        super().__init__()
        if pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(
                f"pos_embedding={pos_embedding!r} is unknown; use one of {POS_EMBEDDINGS}"
            )
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is unknown; use one of {POOLS}")
        self.pool = pool
        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if pos_embedding == "learned1d":
            self.pos_embed = LearnedPositionalEncoding1D(grid * grid, embed_dim)
        elif pos_embedding == "learned2d":
            self.pos_embed = LearnedPositionalEncoding2D(grid, grid, embed_dim)
        elif pos_embedding == "sinusoidal":
            self.pos_embed = SinusoidalPositionalEncoding2D(grid, grid)
        else:
            self.pos_embed = None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [
                TransformerEncoderLayer(embed_dim, num_heads, mlp_ratio, dropout)
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x, return_attention=False):
        """Inputs:
        - x: (B, C, H, W) images.
        - return_attention: also return every layer's attention weights.

        Returns:
        - logits: (B, num_classes).
        - attentions: list of `depth` tensors (B, H, T, T) with T = N + 1 (CLS
          first), only when return_attention is True (feed them to
          attention_rollout).

        Hint: tokens (B, N, E) from self.patch_embed; add self.pos_embed (if not
        None); prepend self.cls_token expanded to (B, 1, E); dropout; run the
        blocks with return_attention=True; self.norm; self.head on token 0, or,
        with self.pool == "mean", on the mean of the N patch tokens (not the CLS).
        """
        # BEGIN SOLUTION vision_transformer
        tokens = self.patch_embed(x)  # (B, N, E)
        if self.pos_embed is not None:
            tokens = self.pos_embed(tokens)  # (B, N, E)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, E)
        tokens = self.dropout(torch.cat([cls, tokens], dim=1))  # (B, T, E), T = N + 1
        attentions = []
        for block in self.blocks:
            tokens, attn = block(tokens, return_attention=True)  # attn (B, H, T, T)
            attentions.append(attn)
        tokens = self.norm(tokens)  # (B, T, E)
        pooled = tokens[:, 1:].mean(dim=1) if self.pool == "mean" else tokens[:, 0]  # (B, E)
        logits = self.head(pooled)  # (B, num_classes)
        if return_attention:
            return logits, attentions
        return logits
        # END SOLUTION


# ---------------------------------------------------------------------------
# 1.12 Local-window self-attention (ViTDet: Li et al., 2022; CS771 HW2 3.2.1)
# ---------------------------------------------------------------------------


def window_partition(x, window_size):
    """Cut a token grid into non-overlapping square windows, padding the grid first.

    Inputs:
    - x: (B, H, W, C) tokens on an H x W grid.
    - window_size: w.

    Returns:
    - windows: (B * nH * nW, w, w, C) with nH = ceil(H / w) and nW = ceil(W / w). The grid
      is padded with zeros at the bottom and at the right to (Hp, Wp) = (nH * w, nW * w),
      then cut into windows, listed image by image and, within an image, window row by
      window row (left to right, then top to bottom); inside a window, tokens keep their
      grid layout (w rows of w tokens).
    - pad_hw: (Hp, Wp), the padded grid size.

    Hint: F.pad pads the LAST dim first: F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) pads C by
    nothing, W at the right and H at the bottom. Then view the padded grid as
    (B, nH, w, nW, w, C) and permute it to (B, nH, nW, w, w, C) before the final reshape:
    a reshape alone would cut windows across rows of the grid.
    """
    # BEGIN SOLUTION window_attention
    B, H, W, C = x.shape
    w = window_size
    pad_h, pad_w = (-H) % w, (-W) % w
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C), zeros at the bottom/right
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // w, w, Wp // w, w, C)  # (B, nH, w, nW, w, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, C)  # (B*nH*nW, w, w, C)
    return windows, (Hp, Wp)
    # END SOLUTION


def window_unpartition(windows, window_size, pad_hw, hw):
    """Put windows back on the grid and crop the padding: the inverse of window_partition.

    Inputs:
    - windows: (B * nH * nW, w, w, C), ordered as window_partition returns them.
    - window_size: w.
    - pad_hw: (Hp, Wp), the padded grid size (nH = Hp / w, nW = Wp / w).
    - hw: (H, W), the grid size before padding.

    Returns:
    - x: (B, H, W, C).

    Hint: window_partition's view and permute in reverse, (B, nH, nW, w, w, C) ->
    (B, nH, w, nW, w, C) -> (B, Hp, Wp, C), then keep the first H rows and W columns.
    """
    # BEGIN SOLUTION window_attention
    (Hp, Wp), (H, W), w = pad_hw, hw, window_size
    B = windows.shape[0] // ((Hp // w) * (Wp // w))
    x = windows.view(B, Hp // w, Wp // w, w, w, -1)  # (B, nH, nW, w, w, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)  # (B, Hp, Wp, C)
    return x[:, :H, :W]  # (B, H, W, C), padding cropped
    # END SOLUTION


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of a token grid.

    Each token attends only to the tokens of its own window_size x window_size window
    (ViTDet's local attention): for N = H * W tokens of C channels that costs O(w^2 N C)
    instead of the O(N^2 C) of global attention, and the attention weights of a window are
    (w^2 x w^2), never (N x N). A grid that is not a multiple of the window is padded at the
    bottom and at the right (window_partition); padded positions are never attended to (their
    scores are masked), so the output does not depend on the padding, and a window at least
    as large as the grid gives exactly MultiHeadAttention over the H * W tokens (row-major)
    with the same weights.

    Same parameters as MultiHeadAttention: q_proj, k_proj, v_proj, out_proj (with biases).
    """

    def __init__(self, embed_dim, num_heads, window_size):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}; change one"
            )
        if window_size < 1:
            raise ValueError(f"window_size {window_size} must be at least 1 (tokens per side)")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.window_size = window_size
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x):
        """Inputs:
        - x: (B, H, W, C) tokens on an H x W grid, C = embed_dim.

        Returns:
        - out: (B, H, W, C), after the output projection.

        Hint: project x to q, k and v (B, H, W, C); window_partition each into (B', w, w, C),
        B' = B * nH * nW windows; flatten a window to its N = w * w tokens and split the
        heads, (B', N, C) -> (B', N, heads, D) -> (B', heads, N, D) with D = C / heads. The
        scores (B', heads, N, N) are scaled by sqrt(D). To find the padded keys, partition a
        (1, H, W, 1) tensor of ones the same way: padding becomes 0, (nH * nW, N); set the
        scores of those keys to -inf before the softmax over the keys. Merge the heads back to
        (B', w, w, C), window_unpartition, then out_proj.
        """
        if x.dim() != 4 or x.shape[-1] != self.embed_dim:
            # (B, N, C) token lists are the usual slip: the windows need the grid layout
            raise ValueError(
                f"x has shape {tuple(x.shape)}; give tokens on their grid, (B, H, W, "
                f"{self.embed_dim}): reshape (B, H * W, C) tokens to (B, H, W, C) first"
            )
        # BEGIN SOLUTION window_attention
        B, H, W, C = x.shape
        w, heads, D = self.window_size, self.num_heads, self.head_dim
        N = w * w  # tokens per window

        def windows_of_heads(t):  # (B, H, W, C) -> (B', heads, N, D), B' = B * nH * nW
            windows, pad_hw = window_partition(t, w)  # (B', w, w, C)
            return windows.view(-1, N, heads, D).transpose(1, 2), pad_hw

        # Projecting before padding spends nothing on the padded positions.
        q, pad_hw = windows_of_heads(self.q_proj(x))  # (B', heads, N, D)
        k, _ = windows_of_heads(self.k_proj(x))  # (B', heads, N, D)
        v, _ = windows_of_heads(self.v_proj(x))  # (B', heads, N, D)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B', heads, N, N)
        if pad_hw != (H, W):
            # Padded keys get no weight: the same windows of a grid of ones (padding = 0).
            real = window_partition(x.new_ones(1, H, W, 1), w)[0].view(1, -1, 1, 1, N) > 0
            scores = scores.view(B, -1, heads, N, N)  # (B, nH*nW, heads, N, N)
            scores = scores.masked_fill(~real, float("-inf")).view(-1, heads, N, N)
        attn = scores.softmax(dim=-1)  # (B', heads, N, N); every window has a real token
        out = (attn @ v).transpose(1, 2).reshape(-1, w, w, C)  # (B', w, w, C), heads merged
        out = window_unpartition(out, w, pad_hw, (H, W))  # (B, H, W, C)
        return self.out_proj(out)  # (B, H, W, C)
        # END SOLUTION


# ---------------------------------------------------------------------------
# Given: a transformer block over a token grid, and SimpleViT (CS771 HW2 3.2.2)
# ---------------------------------------------------------------------------


class GridTransformerBlock(nn.Module):
    """Pre-LN block over a token grid: x + Attn(LN(x)), then x + MLP(LN(x)).

    The attention is local, WindowSelfAttention (1.12), when ``window_size`` is set, and
    global, MultiHeadAttention (1.3) over all H * W tokens, when it is None. With a window at
    least as large as the grid the two give the same output for the same weights.
    """

    def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, window_size=None, dropout=0.0):
        super().__init__()
        self.window_size = window_size
        self.norm1 = LayerNorm(embed_dim)
        if window_size is None:
            self.attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        else:
            self.attn = WindowSelfAttention(embed_dim, num_heads, window_size)
        self.dropout = nn.Dropout(dropout)  # on the attention branch
        self.norm2 = LayerNorm(embed_dim)
        self.mlp = _mlp(embed_dim, mlp_ratio, dropout)

    def forward(self, x):
        """Inputs:
        - x: (B, H, W, C) tokens on an H x W grid.

        Returns:
        - out: (B, H, W, C).
        """
        h = self.norm1(x)  # (B, H, W, C)
        if self.window_size is None:
            B, H, W, C = h.shape
            tokens = h.reshape(B, H * W, C)  # (B, N, C), row-major
            h = self.attn(tokens, tokens, tokens).view(B, H, W, C)  # (B, H, W, C)
        else:
            h = self.attn(h)  # (B, H, W, C)
        x = x + self.dropout(h)  # (B, H, W, C)
        return x + self.mlp(self.norm2(x))  # (B, H, W, C)


def vitdet_global_layers(depth):
    """The blocks that attend globally in a ViTDet-style stack: every third one, counted
    back from the last (depth 12: 2, 5, 8, 11, as ViTDet-B; depth 6: 2, 5; depth 4: 0, 3),
    so that the last block always sees the whole image."""
    return sorted(range(depth - 1, -1, -3))


class SimpleViT(nn.Module):
    """A plain ViT that keeps its tokens on the patch grid and mixes local and global attention.

    Patch embedding (1.5) -> position encoding of the patches (1.4) -> ``depth`` blocks
    (GridTransformerBlock) that attend inside window_size x window_size windows (1.12), except
    the ``global_layers``, which attend over the whole grid (1.3), as in ViTDet -> final
    LayerNorm -> mean of all the tokens -> linear head. No CLS token: the windows tile the grid,
    and the mean of the tokens classifies as well (Beyer et al., 2022, "Better plain ViT
    baselines for ImageNet-1k", whose SimpleViT also uses fixed 2D sin-cos positions).

    This is one design (CS771 asks you to design your own): try other depths, widths, windows,
    global layers and position encodings, and compare them in Question 4.
    """

    def __init__(
        self,
        img_size=32,
        patch_size=4,
        in_channels=3,
        num_classes=10,
        embed_dim=64,
        depth=6,
        num_heads=4,
        mlp_ratio=2.0,
        window_size=4,
        global_layers=None,
        pos_embedding="sinusoidal",
        dropout=0.0,
    ):
        super().__init__()
        if pos_embedding not in POS_EMBEDDINGS:
            raise ValueError(
                f"pos_embedding={pos_embedding!r} is unknown; use one of {POS_EMBEDDINGS}"
            )
        if global_layers is None:
            global_layers = vitdet_global_layers(depth)
        self.global_layers = sorted(set(global_layers))
        if any(not 0 <= i < depth for i in self.global_layers):
            raise ValueError(
                f"global_layers={list(global_layers)} must count blocks 0..{depth - 1}"
            )
        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, embed_dim)
        self.grid_size = grid = self.patch_embed.grid_size
        self.pos_embed = {
            "learned1d": lambda: LearnedPositionalEncoding1D(grid * grid, embed_dim),
            "learned2d": lambda: LearnedPositionalEncoding2D(grid, grid, embed_dim),
            "sinusoidal": lambda: SinusoidalPositionalEncoding2D(grid, grid),
            "none": lambda: None,
        }[pos_embedding]()
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            GridTransformerBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                None if i in self.global_layers else window_size,
                dropout,
            )
            for i in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        """Inputs:
        - x: (B, C, H, W) images, H = W = img_size.

        Returns:
        - logits: (B, num_classes).
        """
        tokens = self.patch_embed(x)  # (B, N, E), N = grid * grid, row-major
        if self.pos_embed is not None:
            tokens = self.pos_embed(tokens)  # (B, N, E), each patch told its place
        B, N, E = tokens.shape
        grid = self.dropout(tokens).view(B, self.grid_size, self.grid_size, E)  # (B, g, g, E)
        for block in self.blocks:
            grid = block(grid)  # (B, g, g, E)
        pooled = self.norm(grid).mean(dim=(1, 2))  # (B, E), the mean of all the tokens
        return self.head(pooled)  # (B, num_classes)


# ---------------------------------------------------------------------------
# 1.13 Image captioning with a transformer decoder (XCS231N)
# ---------------------------------------------------------------------------


class CaptioningTransformer(nn.Module):
    """A caption generator: pre-LN transformer decoder layers over the words of a caption,
    reading the image through cross-attention (Vaswani et al., 2017; XCS231N's interface).

    The image features are projected to ``wordvec_dim`` and are the decoder's memory: one
    memory token per image for features (N, D) (CS231n's VGG-16 fc7 / PCA vectors), or S
    memory tokens for region features (N, S, D) (a CNN's feature grid). Word embeddings get
    the sinusoidal positional encoding; masked self-attention lets word t see words 0..t
    only. A final LayerNorm and a linear layer give a score for every word of the
    vocabulary. Special tokens: ``<NULL>`` pads captions, ``<START>`` begins every caption,
    ``<END>`` ends it.
    """

    def __init__(
        self,
        word_to_idx,
        input_dim,
        wordvec_dim,
        num_heads=4,
        num_layers=2,
        max_length=50,
        mlp_ratio=4.0,
        dropout=0.0,
    ):
        super().__init__()
        vocab_size = len(word_to_idx)
        self.vocab_size = vocab_size
        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)
        self.max_length = max_length
        self.visual_projection = nn.Linear(input_dim, wordvec_dim)
        self.embedding = nn.Embedding(vocab_size, wordvec_dim, padding_idx=self._null)
        self.positional_encoding = SinusoidalPositionalEncoding1D()
        self.layers = nn.ModuleList(
            [
                TransformerDecoderLayer(wordvec_dim, num_heads, mlp_ratio, dropout)
                for _ in range(num_layers)
            ]
        )
        self.norm = LayerNorm(wordvec_dim)
        self.output = nn.Linear(wordvec_dim, vocab_size)
        self.apply(_caption_init)

    def forward(self, features, captions):
        """Scores of the next word at every position of the captions (teacher forcing).

        Inputs:
        - features: (N, D) one feature vector per image, or (N, S, D) S region features.
        - captions: (N, T) int64 word ids; captions[:, t] is the input at step t (the
          first one is <START>).

        Returns:
        - scores: (N, T, V) unnormalised scores (logits); scores[:, t] predicts the word
          that follows captions[:, t], seeing captions[:, :t + 1] and the image only.

        Hint: word vectors (N, T, W) from self.embedding, then self.positional_encoding
        (use these modules: the tests swap them). Memory: self.visual_projection(features),
        made (N, 1, W) when features are (N, D). Run every layer of self.layers with
        self_attn_mask=causal_mask(T) (True = may attend), then self.norm, then self.output.
        """
        # BEGIN SOLUTION captioning
        T = captions.shape[1]
        words = self.positional_encoding(self.embedding(captions))  # (N, T, W)
        memory = self.visual_projection(features)  # (N, W) or (N, S, W)
        if memory.dim() == 2:
            memory = memory[:, None, :]  # (N, 1, W): one memory token per image
        mask = causal_mask(T, device=captions.device)  # (T, T), word t sees words 0..t
        for layer in self.layers:
            words = layer(words, memory, self_attn_mask=mask)  # (N, T, W)
        return self.output(self.norm(words))  # (N, T, V)
        # END SOLUTION

    @torch.no_grad()
    def sample(self, features, max_length=30):
        """Greedy decoding: the most likely next word, one step at a time.

        Inputs:
        - features: (N, D) or (N, S, D) image features, as in forward.
        - max_length: L, the number of words to generate.

        Returns:
        - captions: (N, L) int64 generated word ids, <START> NOT included: captions[:, 0]
          is the first generated word. Once a caption has produced <END>, every later
          position of it is <NULL>.

        Hint: start from a partial caption (N, 1) of <START>. At each step run
        self.forward on the partial caption, take the argmax of the LAST position's scores
        (N, V), write it into captions[:, t] and append it to the partial caption (N, t + 2).
        Keep a (N,) bool "done" that turns True at <END>; write <NULL> where done.
        """
        # BEGIN SOLUTION captioning
        N = features.shape[0]
        device = features.device
        captions = torch.full((N, max_length), self._null, dtype=torch.long, device=device)
        partial = torch.full((N, 1), self._start, dtype=torch.long, device=device)  # (N, 1)
        done = torch.zeros(N, dtype=torch.bool, device=device)  # (N,) has produced <END>
        for t in range(max_length):
            scores = self.forward(features, partial)  # (N, t + 1, V)
            word = scores[:, -1].argmax(dim=-1)  # (N,), the next word after the last one
            word = word.masked_fill(done, self._null)  # (N,)
            captions[:, t] = word
            done = done | (word == self._end)
            partial = torch.cat([partial, word[:, None]], dim=1)  # (N, t + 2)
        return captions
        # END SOLUTION


def _caption_init(module):
    # Small weights (CS231n's captioning transformer, GPT-2): N(0, 0.02), zero biases.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
