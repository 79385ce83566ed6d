"""Wasserstein GAN (models/gan.py): LSTM generator, convolutional critic, over piano-rolls.

Usage:
  --config=configs/gan.py          WGAN-GP (gradient penalty 10, Adam 1e-4, betas 0.5 / 0.9),
                                   embedded Bach chorales, 2 tracks (bass and treble)
  --config=configs/gan.py:clip     WGAN with weight clipping (clip 0.01, RMSProp 5e-5)
  --config=configs/gan.py:test     tiny, trains end to end in seconds on CPU

No likelihood: checkpoints are chosen by the distance of 64 samples' musical metrics to
the valid split's pieces (evaluate.py, metrics.py).
"""

from bach_jax import config_base


VARIANTS = ('clip', 'test', 'clip_test')


def get_config(arg=''):
  config_base.check_variant('gan.py', arg, VARIANTS)
  config = config_base.base_config()
  m = config.model
  m.name = 'gan'  # Registry key (bach_jax/models/__init__.py).
  m.objective = 'wgan_gp'  # 'wgan_gp' | 'wgan_clip'.
  m.tracks = 2  # 1 (one roll), 2 (bass and treble, as the paper's GAN) or 4 (S, A, T, B).
  m.noise_dim = 64  # Noise vector per piece.
  m.step_noise_dim = 16  # Noise vector per step (0 = none).
  m.generator_hidden = 256  # Generator LSTM units per layer.
  m.generator_layers = 2
  m.critic = 'conv'  # 'conv' (strided temporal convolutions, layer norm) | 'bilstm'.
  m.critic_hidden = 128
  m.binarize = 'threshold'  # Generator output fed to the critic: 'none' (probabilities),
  #   'threshold' (p > 0.5) or 'bernoulli' (drawn), straight-through gradients.
  m.n_critic = 5  # Critic updates per generator update (one train_step does both).
  m.gp_weight = 10.0  # WGAN-GP: weight of the gradient penalty.
  m.clip = 0.01  # WGAN-clip: critic weights kept in [-clip, clip].
  m.adam_b1, m.adam_b2 = 0.5, 0.9  # WGAN-GP's Adam betas.
  m.dtype = 'float32'  # Matmul inputs (float32 accumulation): 'bfloat16' is faster on TPU/GPU.

  d, t = config.data, config.train
  d.window_steps = 65  # A start frame and 64 generated steps (4 bars at 4 per quarter).
  d.hop_steps = 16
  t.batch_size = 64
  t.num_steps = 3000  # Generator updates (each with n_critic critic updates).
  t.learning_rate = 1e-4
  t.warmup_steps = 0
  t.lr_schedule = 'constant'
  t.grad_clip_norm = 0.0
  t.eval_every = t.checkpoint_every = 250
  config.sample.num_steps = 64
  if arg in ('clip', 'clip_test'):
    m.objective = 'wgan_clip'
    t.learning_rate = 5e-5
  if arg in ('test', 'clip_test'):
    m.noise_dim, m.step_noise_dim = 8, 4
    m.generator_hidden = m.critic_hidden = 16
    m.n_critic = 2
    m.tracks = 4  # The voice path end to end (sampling, load_model); test_gan covers 1 and 2.
    d.window_steps, d.hop_steps = 17, 8
    config_base.test_training(config)
    t.warmup_steps = 0  # The GAN's optimizers have no warmup (gan_config.validate).
    t.learning_rate = 1e-3
    t.eval_samples = 8
  return config
