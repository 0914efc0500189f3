"""The plots, in one package: which tokens each CoDA encoder layer routes (paper Figure 7) and
the experiments' summary figures (paper Figure 5).

The decisions come from coda_flax.analysis.routing_stats (routing_decisions: indices, lam,
weights, selected [L, b, n], valid [b, n]); image patches are placed with
coda_flax.frontends.patch_grid. This package draws them:

    tokens.py   plot_routing_heatmap(values [L, n], tokens, path)    layers x tokens heatmap
                render_token_highlights(tokens, values [L, n], path) text coloured by #layers
                                                                     (HTML + PNG)
    media.py    plot_patch_routing(selected [L, rows*cols], (rows, cols), path, image=None)
                                                          image patches, one panel per layer
                plot_image_routing(values [L, n], patches, path)    per-layer routing over
                                                                     the image
                audio_routing_strips(values [L, n], T) -> [L, T]     encoder token j -> frames
                                                                     4j..4j+3
                plot_audio_routing(values [L, n], frames, path)     log-mel spectrogram over
                                                          one strip per layer, one time axis
    figures.py  plot_speed_quality(points, path)     quality (± SE) against measured speedup
                plot_ink_share(stats, path)           routed patches' ink share per layer vs
                                                      the page's (one variant or several)
                plot_span_routing(selected [L, n], pieces, span, path)   routed tokens, one
                                                      span (the demo's needle) boxed
    draw.py     the pieces they share (colours, figure, titles, saving, labels)

Figures are drawn on matplotlib's Agg canvas (`matplotlib.figure.Figure`, never pyplot), so
nothing here touches the interactive backend or global pyplot state. No argv is read here
(`coda visualize` lives in coda_flax/cli/visualize.py).
"""

from coda_flax.inputs import SUBSAMPLING
from coda_flax.viz.draw import display_token
from coda_flax.viz.figures import (label_positions, plot_ink_share, plot_span_routing,
                                   plot_speed_quality)
from coda_flax.viz.media import (audio_routing_strips, plot_audio_routing, plot_image_routing,
                                 plot_patch_routing)
from coda_flax.viz.tokens import plot_routing_heatmap, render_token_highlights

__all__ = ["plot_routing_heatmap", "render_token_highlights", "plot_patch_routing",
           "display_token", "plot_image_routing", "plot_ink_share", "audio_routing_strips",
           "plot_audio_routing", "plot_speed_quality", "plot_span_routing", "label_positions",
           "SUBSAMPLING"]
