"""Input front ends: raw images and audio -> the float rows the encoder embeds.

    patches   Pix2Struct variable-resolution patching, ink masks, question headers (vision)
    audio     audio files -> 16 kHz waveforms -> log-mel frames (speech; SAMPLE_RATE lives here)
    patch_grid  the way back: patches placed on their grid cells, the page rebuilt, ink patches

Pure numpy / PIL / scipy (jax only for log_mel_spectrogram): nothing here imports TensorFlow or
coda_flax.tasks; the tf.data wrappers live with the seqio tasks. The embedders that turn these
rows into encoder tokens are model code: coda_flax.inputs.
"""
