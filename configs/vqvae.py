"""VQ-VAE over 4-step patterns (models/vqvae.py), stage 1; configs/vqvae_prior.py is stage 2.

Usage:
  --config=configs/vqvae.py        embedded Bach chorales: 64 patterns of 4 steps (256 steps,
                                   16 bars) per segment, K = 64 codes, EMA codebook with
                                   dead-code restarts, voice heads
  --config=configs/vqvae.py:test   tiny, trains end to end in seconds on CPU
  --config=configs/vqvae.py:jsb    JSB quarter-note benchmark (set-mode heads): 16 patterns
                                   of 4 quarters (a bar) per segment

The paper's K = 32 / 64 / 128: --config.model.codebook_size; the plain codebook:
--config.model.codebook_update=gradient --config.model.restart_dead_codes=False.
"""

from bach_jax import config_base


def model_defaults(m):
  """Stage 1's model keys (configs/vqvae_prior.py reads the trained run's instead)."""
  m.segment_steps = 256  # Target frames per segment (each scored with its own codes).
  m.pattern_steps = 4  # Frames per pattern: one code each.
  m.codebook_size = 64  # K codes (the paper: 32, 64, 128).
  m.code_dim = 64  # Dimensions of each code vector.
  m.encoder = 'bilstm'  # Context over the pattern sequence: 'bilstm' | 'conv' (2 x width 3).
  m.encoder_hidden = 256
  m.context_hidden = 128  # Decoder side: bidirectional LSTM over the codes, per direction.
  m.decoder_hidden = 256  # Frame decoder LSTM units per layer (reset at every pattern).
  m.decoder_layers = 1
  m.decoder_input = 'previous_frame'  # 'previous_frame' (teacher-forced) | 'none'.
  m.output = 'frame_heads'  # 'frame_heads' (exact slot heads) | 'bernoulli'.
  m.commitment = 0.25  # Weight of the commitment loss |e - sg(q)|^2.
  m.codebook_update = 'ema'  # 'ema' (moving averages, decay ema_decay) | 'gradient'.
  m.ema_decay = 0.99
  m.restart_dead_codes = True  # Move codes used < dead_code_threshold times per step on
  m.dead_code_threshold = 1.0  #   average onto random encoder outputs of the batch.
  m.dropout_rate = 0.2
  m.dtype = 'float32'  # Matmul inputs (float32 accumulation): 'bfloat16' is faster on TPU/GPU.
  m.heads = 'autoregressive'  # Frame heads, as in configs/lstm_attn.py.
  m.voice_order = 'soprano_first'
  m.num_voices = -1  # -1: from the corpus; 0: sorted-set mode.
  m.max_notes = 4
  m.min_pitch = 21
  m.max_pitch = 108
  m.embed_dim = 8
  m.head_hidden = 128


VARIANTS = ('test', 'jsb')


def get_config(arg=''):
  config_base.check_variant('vqvae.py', arg, VARIANTS)
  config = config_base.base_config()
  m = config.model
  m.name = 'vqvae'  # Registry key (bach_jax/models/__init__.py).
  model_defaults(m)
  d, t = config.data, config.train
  d.window_steps = m.segment_steps + 1  # A start/previous frame and one segment of targets.
  d.hop_steps = 16
  d.pad_short = True  # Pieces shorter than a segment still train (padded, masked).
  t.num_steps = 3000
  t.learning_rate = 2e-3
  t.batch_size = 32
  config.sample.num_steps = 256
  if arg == 'test':
    config_base.test_training(config)
    m.segment_steps, m.codebook_size, m.code_dim = 16, 8, 8
    m.encoder_hidden = m.context_hidden = m.decoder_hidden = m.head_hidden = 16
    m.embed_dim = 4
    d.window_steps, d.hop_steps = 17, 8
  elif arg == 'jsb':
    d.source = 'jsb:' + config_base.jsb_quarter()
    m.num_voices = 0  # Set mode: the 88-key frame's exact probability.
    m.segment_steps = 64  # 16 patterns of 4 quarters (a bar each).
    m.encoder_hidden = m.decoder_hidden = m.head_hidden = 128
    d.window_steps, d.hop_steps = m.segment_steps + 1, 4
    d.augment_transpose = 3
    t.num_steps = 4000
    t.eval_every = t.checkpoint_every = 500
    t.num_final_samples = 0
  return config
