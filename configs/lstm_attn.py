"""The flagship: 2-layer LSTM + causal attention + autoregressive per-voice heads.

Usage:
  --config=configs/lstm_attn.py        embedded Bach chorales (voices S,A,T,B)
  --config=configs/lstm_attn.py:test   tiny, trains end to end in seconds on CPU
  --config=configs/lstm_attn.py:jsb    JSB quarter-note benchmark (set mode), exact frame NLL:
                                       whole pieces, transposition +-3, 4000 steps (test 4.98)
  --config=configs/lstm_attn.py:jsb_windows   the same model on the paper's 32-step windows,
                                       1600 steps (test 5.23; the ablations' base, ~5 min)
"""

from bach_jax import config_base


VARIANTS = ('test', 'jsb', 'jsb_windows')


def get_config(arg=''):
  config_base.check_variant('lstm_attn.py', arg, VARIANTS)
  config = config_base.base_config()
  m = config.model
  m.name = 'lstm_attn'  # Registry key (bach_jax/models/__init__.py).
  m.hidden_size = 256  # LSTM units per layer (the paper: 512; 256 is the CPU trade-off).
  m.num_layers = 2  # LSTM layers.
  m.dropout_rate = 0.5  # After each LSTM layer, on the attention context and head hidden.
  m.weight_dropout_rate = 0.0  # DropConnect on the LSTM's recurrent weights (AWD-LSTM).
  m.dtype = 'float32'  # Matmul inputs (float32 accumulation): 'bfloat16' is faster on TPU/GPU.
  m.attention = True  # False: heads see only the LSTM output (the ablation).
  m.attn_heads = 4  # Attention heads.
  m.attn_dim = 0  # Query/key/value width of all heads together; 0 = hidden_size.
  m.attn_window = 32  # Steps a position may attend back (itself included); 0 = no limit.
  #   = data.window_steps, so whole-piece evaluation sees the span training saw.
  m.attn_rel_bias = True  # Learned per-head bias by distance (clipped at attn_max_distance-1).
  m.attn_max_distance = 64  # Number of distance buckets of the relative bias.
  m.heads = 'autoregressive'  # 'autoregressive': head j sees slots < j; 'independent'.
  m.voice_order = 'soprano_first'  # 'soprano_first' (S,A,T,B; set mode: highest note
  #   first; what harmonization needs) or 'bass_first' (B,T,A,S; lowest note first).
  m.num_voices = -1  # -1: from the corpus (set by check_corpus); 0: sorted-set mode
  #   even on a voiced corpus (scores the 88-key roll); V: require V voices.
  m.max_notes = 4  # Set mode: heads = most notes in a frame (check_corpus checks).
  m.min_pitch = 21  # Lowest MIDI pitch of the heads' vocabulary (class 0).
  m.max_pitch = 108  # Highest; the classes are min..max plus REST / end-of-frame.
  m.embed_dim = 16  # Voice mode: input embedding of each voice's previous pitch.
  m.head_hidden = 256  # Hidden units of each output head's MLP.

  t = config.train
  t.num_steps = 3000
  t.learning_rate = 2e-3
  t.batch_size = 64
  if arg == 'test':
    config_base.test_training(config)
    m.hidden_size = 32
    m.head_hidden = 32
    m.embed_dim = 4
    m.attn_heads = 2
    config.data.window_steps = 16
    config.data.hop_steps = 8
    m.attn_window = 16
  elif arg in ('jsb', 'jsb_windows'):
    d = config.data
    d.source = 'jsb:' + config_base.jsb_quarter()
    m.max_notes = 4
    m.hidden_size = 128  # JSB (13.8k frames) overfits: 128 beat 256 and 512 on valid.
    m.head_hidden = 128
    t.eval_every = 200
    t.checkpoint_every = 200
    t.num_final_samples = 0
    if arg == 'jsb':
      # Whole pieces (training pieces have at most 129 frames + the start frame), the
      # way evaluation runs them, attention over the whole past, and random
      # transposition by up to 3 semitones: valid NLL still falls at step 4000.
      d.window_steps, d.hop_steps, d.pad_short = 130, 16, True
      d.augment_transpose = 3
      m.attn_window = 0
      t.batch_size = 16
      t.num_steps = 4000
    else:
      d.window_steps, d.hop_steps = 32, 8
      t.batch_size = 32
      t.num_steps = 1600  # Valid NLL is best near step 800-1000, then overfits (best kept).
  return config
