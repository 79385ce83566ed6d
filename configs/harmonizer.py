"""The harmonizer (models/harmonizer.py): LSTM + attention + voice heads, conditioned by a
bidirectional encoder of the given cells: harmonize a melody (or a bass line), rewrite a
span, with the whole given line in view. Its score is the exact -log q(missing | given).

Usage:
  --config=configs/harmonizer.py        embedded Bach chorales (voices S,A,T,B)
  --config=configs/harmonizer.py:test   tiny, trains end to end in seconds on CPU
  --config=configs/harmonizer.py:jsb    JSB quarter-note benchmark (set mode: the top line)
"""

from bach_jax import config_base

VARIANTS = ('test', 'jsb')


def get_config(arg=''):
  config_base.check_variant('harmonizer.py', arg, VARIANTS)
  config = config_base.sibling_config(__file__, 'lstm_attn', arg)  # Every lstm_attn key, the
  #   same sizes and schedule (the causal part).
  m = config.model
  m.name = 'harmonizer'  # Registry key (bach_jax/models/__init__.py).
  m.encoder_hidden = 128  # Units per direction of the given cells' bidirectional LSTM.
  m.given_embed_dim = 16  # Embedding of each given slot's class (or `missing`).
  m.mask_weights = '0.75,0.1,0.1,0.05'  # Training masks: voice, span, mixed, none.
  m.mask_first_slot = 0.8  # A 'voice' mask gives the first slot (the soprano) this often.
  if arg == 'test':
    m.encoder_hidden, m.given_embed_dim = 16, 4
  return config
