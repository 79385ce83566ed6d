"""Recurrent VAE (models/vae.py): bidirectional LSTM encoder, hierarchical or flat decoder.

Usage:
  --config=configs/vae.py         embedded Bach chorales: 64-frame (4-bar) segments, one
                                  latent each; hierarchical decoder (one conductor step per
                                  bar), voice heads, previous frame fed to the decoder
  --config=configs/vae.py:test    tiny, trains end to end in seconds on CPU
  --config=configs/vae.py:jsb     JSB quarter-note benchmark (set-mode heads), whole pieces

The paper's two VAEs are one key apart: --config.model.decoder=flat (baseline) or
hierarchical; --config.model.output=bernoulli gives the paper's per-key output,
--config.model.decoder_input=none a decoder that sees only z.
"""

from bach_jax import config_base


VARIANTS = ('test', 'jsb')


def get_config(arg=''):
  config_base.check_variant('vae.py', arg, VARIANTS)
  config = config_base.base_config()
  m = config.model
  m.name = 'vae'  # Registry key (bach_jax/models/__init__.py).
  m.segment_steps = 64  # Target frames per latent: a piece is scored as consecutive segments.
  m.latent_dim = 128  # Dimensions of each segment's z.
  m.encoder_hidden = 256  # Units per direction of the 1-layer bidirectional LSTM encoder.
  m.decoder = 'hierarchical'  # 'hierarchical' (conductor + bottom LSTM) | 'flat'.
  m.subsequence_steps = 16  # Hierarchical: frames per conductor step (a 4/4 bar at 4/quarter).
  m.conductor_hidden = 256  # Hierarchical: conductor LSTM units.
  m.decoder_hidden = 256  # Bottom (or flat) decoder LSTM units per layer.
  m.decoder_layers = 2
  m.decoder_input = 'previous_frame'  # 'previous_frame' (teacher-forced) | 'none' (only z).
  m.output = 'frame_heads'  # 'frame_heads' (exact slot heads, as lstm_attn) | 'bernoulli'.
  m.dropout_rate = 0.3  # After each decoder LSTM layer and in the heads, training only.
  m.dtype = 'float32'  # Matmul inputs (float32 accumulation): 'bfloat16' is faster on TPU/GPU.
  # Frame heads (output = 'frame_heads'), as in configs/lstm_attn.py:
  m.heads = 'autoregressive'  # 'autoregressive' | 'independent'.
  m.voice_order = 'soprano_first'  # Slot order: S,A,T,B (set mode: highest note first).
  m.num_voices = -1  # -1: from the corpus; 0: sorted-set mode; V: require V voices.
  m.max_notes = 4  # Set mode: most notes in a frame.
  m.min_pitch = 21  # Heads' vocabulary: MIDI pitches min..max plus REST / end-of-frame.
  m.max_pitch = 108
  m.embed_dim = 8  # Voice mode: embedding of each voice's pitch in the inputs.
  m.head_hidden = 128  # Hidden units of each output head's MLP.
  # Posterior collapse: KL weight schedule, cap and free bits.
  m.kl_schedule = 'linear'  # 'constant' | 'linear' (0 -> beta over kl_warmup_steps) | 'cyclical'.
  m.kl_warmup_steps = 1000
  m.kl_cycle_steps = 1000  # Cyclical: cycle length (ramp over its first half, then beta).
  m.beta = 1.0  # Cap of the KL weight (1 = the ELBO; evaluation always uses 1).
  m.free_bits = 8.0  # Nats of KL not penalized in training (0 = off).
  m.free_bits_mode = 'total'  # 'total': per segment's whole KL (MusicVAE); 'per_dim'.
  m.iwae_samples = 64  # Importance samples of the evaluation's IWAE bound (K).

  d, t = config.data, config.train
  d.window_steps = m.segment_steps + 1  # A start/previous frame and one segment of targets.
  d.hop_steps = 16
  t.num_steps = 3000
  t.learning_rate = 2e-3
  t.batch_size = 64
  config.sample.num_steps = 256
  if arg == 'test':
    config_base.test_training(config)
    m.segment_steps, m.subsequence_steps = 8, 4
    m.latent_dim, m.encoder_hidden, m.conductor_hidden, m.decoder_hidden = 8, 16, 16, 16
    m.head_hidden, m.embed_dim = 16, 4
    m.free_bits, m.kl_warmup_steps = 0.5, 20
    m.iwae_samples = 4
    d.window_steps, d.hop_steps = 9, 8
  elif arg == 'jsb':
    d.source = 'jsb:' + config_base.jsb_quarter()
    m.num_voices = 0  # Set mode: the 88-key frame's exact probability.
    m.segment_steps, m.subsequence_steps = 16, 4  # 4 bars of 4 quarters; a bar per conductor step.
    d.window_steps, d.hop_steps = m.segment_steps + 1, 4
    d.augment_transpose = 3
    m.latent_dim = 32
    m.encoder_hidden = m.conductor_hidden = m.decoder_hidden = m.head_hidden = 128  # JSB
    #   (13.8k frames) overfits: 128 is what suited lstm_attn there.
    m.free_bits = 2.0
    t.batch_size = 32
    t.num_steps = 4000
    t.eval_every = t.checkpoint_every = 500
    t.num_final_samples = 0
  return config
