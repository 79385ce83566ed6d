"""Stage 2 of the VQ-VAE (models/vqvae_prior.py): a prior over a trained stage 1's codes.

Usage (stage 1 first; scripts/vqvae.sh runs both stages with one command):
  --config=configs/vqvae_prior.py --config.train.init_from=STAGE1_WORKDIR
  --config=configs/vqvae_prior.py:test --config.train.init_from=STAGE1_WORKDIR   (tiny)
  --config=configs/vqvae_prior.py:jsb --config.train.init_from=STAGE1_WORKDIR

The stage-1 run's params go under params['vqvae'] (train.init_from_into) and stay
frozen (train.frozen: out of the optimizer); its model config is copied into
config.model.vqvae. The data keys must match stage 1's run (same source and grid).
"""

from bach_jax import config_base

VARIANTS = ('test', 'jsb')


def get_config(arg=''):
  config_base.check_variant('vqvae_prior.py', arg, VARIANTS)
  config = config_base.sibling_config(__file__, 'vqvae', arg)  # Data, grid and schedule as
  #   stage 1's variant.
  m = config.model = config_base.base_config().model
  m.name = 'vqvae_prior'  # Registry key (bach_jax/models/__init__.py).
  m.prior_hidden = 256  # LSTM units per layer of the prior over codes.
  m.prior_layers = 2
  m.code_embed_dim = 64  # Embedding of the previous code (and of the start symbol).
  m.prior_dropout_rate = 0.2
  m.dtype = 'float32'  # The prior's matmul input dtype (stage 1 keeps its own).
  t = config.train
  t.init_from = ''  # The stage-1 (vqvae) workdir: required.
  t.init_from_into = 'vqvae'  # Its params become params['vqvae'] (and its model config
  #   config.model.vqvae).
  t.frozen = 'vqvae'  # Top-level params kept out of the optimizer.
  if arg == 'test':
    m.prior_hidden, m.code_embed_dim = 16, 8
  return config
