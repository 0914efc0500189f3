"""One encoder layer: CoDA (paper equations 2-8) and the dense layer it reduces to.

    Xn        = LN_att(X)
    Z_adapter = W_up act(W_down Xn)                                   (2)
    idx, m    = Router(Xn)                                            (3), (9)-(11)
    Zt        = Att(Xn[idx] -> Xn (k-to-all) or Xn[idx] (k-to-k))     (4), (5)
    Zr        = FFN(LN_ffn(X[idx] + Zt))                              (6)
    X'        = X + Z_adapter + scatter(idx, m * (Zt + Zr))           (7), (8)

The residual inside (6) is the un-normalised X (docs/design.md section 2), so the conditional
branch is exactly the frozen dense layer on the selected tokens: with k = n the layer is the
Parallel Adapter layer, and with W_up = 0 it is the dense layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from coda_flax.config import ModelConfig
from coda_flax.kplan import layer_k, routes
from coda_flax.layers import Attention, GatedMlp, ParallelAdapter, RMSNorm
from coda_flax.routing import Router, gather, scatter_add


def attention_mask(kv_valid, q_segments=None, kv_segments=None):
    """[b, 1 or q, kv] bool: real keys, and (when packed) keys of the query's own segment.

    Args:
        kv_valid: [b, kv] bool, the real key tokens.
        q_segments, kv_segments: [b, q] / [b, kv] segment ids of packed examples (None:
            unpacked; then the mask is [b, 1, kv]).
    """
    mask = kv_valid[:, None, :]
    if q_segments is not None:
        mask = mask & (q_segments[:, :, None] == kv_segments[:, None, :])
    return mask


class DenseEncoderLayer(nn.Module):
    """The frozen pretrained T5 encoder layer: X + Att(LN X) + FFN(LN(X + Att(LN X)))."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.pre_attention_layer_norm = RMSNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype)
        self.attention = Attention(num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                                   head_dim=c.head_dim, dropout_rate=c.dropout_rate,
                                   lora=c.lora, dtype=c.jnp_dtype)
        self.pre_mlp_layer_norm = RMSNorm(epsilon=c.layer_norm_epsilon, dtype=c.jnp_dtype)
        self.mlp = GatedMlp(d_ff=c.d_ff, activations=c.mlp_activations,
                            dropout_rate=c.dropout_rate, lora=c.lora, dtype=c.jnp_dtype)
        self.dropout = nn.Dropout(c.dropout_rate)

    def branch(self, x_q, xn_q, xn_kv, q_pos, kv_pos, mask, relpos, deterministic):
        """Zt + Zr (equations 5, 6) for the queries x_q attending to xn_kv."""
        zt = self.attention(xn_q, xn_kv, q_pos, kv_pos, mask, relpos, deterministic=deterministic)
        zt = self.dropout(zt, deterministic=deterministic)
        zr = self.mlp(self.pre_mlp_layer_norm(x_q + zt), deterministic=deterministic)
        return zt + self.dropout(zr, deterministic=deterministic)

    def __call__(self, x, valid, positions, relpos, segment_ids=None, deterministic=True):
        """The dense layer on every token.

        Args:
            x: [b, n, d] the layer input X.
            valid: [b, n] bool, the real tokens.
            positions: [b, n] token positions (for the relative bias).
            relpos: the encoder's RelativePositionBias, or None.
            segment_ids: [b, n] segment ids of packed examples, or None.
            deterministic: no dropout.
        Returns:
            X' [b, n, d].
        """
        xn = self.pre_attention_layer_norm(x)
        mask = attention_mask(valid, segment_ids, segment_ids)
        return x + self.branch(x, xn, xn, positions, positions, mask, relpos, deterministic)


class CodaEncoderLayer(DenseEncoderLayer):
    """The CoDA layer: a parallel adapter on every token, the frozen layer on k routed tokens.

    k: the tokens routed (a k plan stage's, coda_flax.kplan; static: one compilation per
      value); None: config.coda.k(n).
    """

    k: int | None = None

    def setup(self):
        super().setup()
        c = self.config.coda
        self.adapter = ParallelAdapter(adapter_dim=c.adapter_dim, activation=c.adapter_activation,
                                       dtype=self.config.jnp_dtype)
        self.routes = routes(c)
        if self.routes:
            self.router = Router(kind=c.router, soft_topk=c.soft_topk, init_std=c.router_init_std)

    def __call__(self, x, valid, positions, relpos, segment_ids=None, deterministic=True):
        """Equations (2)-(8) on X; arguments and result as DenseEncoderLayer.__call__.

        The router's indices and lam are sown into "intermediates" (router_indices,
        router_lam) whenever k < n.
        """
        c = self.config.coda
        xn = self.pre_attention_layer_norm(x)
        x_out = x + self.adapter(xn)                                           # (2)
        n = x.shape[1]
        k = layer_k(c, n, self.k)
        if k == n:                                        # every token routed, m = 1: (8) as PA
            if self.routes and self.is_initializing():   # same parameter tree at any init length
                self.router(xn, k, valid)
            mask = attention_mask(valid, segment_ids, segment_ids)
            return x_out + self.branch(x, xn, xn, positions, positions, mask, relpos,
                                       deterministic)
        route = self.router(xn, k, valid)                                      # (3)
        self.sow("intermediates", "router_indices", route.indices)
        self.sow("intermediates", "router_lam", route.lam)
        idx = route.indices
        q_pos, q_seg = gather(positions, idx), _gather_opt(segment_ids, idx)
        if c.attention == "k_to_all":
            xn_kv, kv_pos, kv_valid, kv_seg = xn, positions, valid, segment_ids
        else:
            xn_kv, kv_pos, kv_valid, kv_seg = (gather(xn, idx), q_pos, gather(valid, idx), q_seg)
        xn_q = gather(xn, idx) if c.attention == "k_to_all" else xn_kv         # (4)
        mask = attention_mask(kv_valid, q_seg, kv_seg)
        delta = self.branch(gather(x, idx), xn_q, xn_kv, q_pos, kv_pos, mask, relpos,
                            deterministic)                                     # (5), (6)
        return scatter_add(x_out, idx, route.weights[..., None] * delta)       # (7), (8)


def _gather_opt(x, idx):
    return None if x is None else gather(x, idx)
