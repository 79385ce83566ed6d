"""The GAN family's config checks and evaluation summary (models/gan.py holds the model)."""

from bach_jax.errors import ConfigError
from bach_jax.models import heads

_ENUMS = {
    'objective': ('wgan_gp', 'wgan_clip'),
    'critic': ('conv', 'bilstm'),
    'binarize': ('none', 'threshold', 'bernoulli'),
    'tracks': (1, 2, 4),
    'dtype': ('float32', 'bfloat16'),
}


def validate(config):
  """Checks config.model; raises ConfigError naming the key."""
  m = config.model
  req = heads.require
  for key, allowed in _ENUMS.items():
    req(m[key] in allowed, key, f'must be one of {allowed}, got {m[key]!r}')
  for key in ('generator_hidden', 'generator_layers', 'critic_hidden', 'noise_dim', 'n_critic'):
    req(int(m[key]) >= 1, key, f'must be >= 1, got {m[key]!r}')
  req(m.step_noise_dim >= 0, 'step_noise_dim', 'must be >= 0')
  req(m.clip > 0, 'clip', f'must be > 0, got {m.clip}')
  req(m.gp_weight >= 0, 'gp_weight', f'must be >= 0, got {m.gp_weight}')
  # The two networks have their own optimizers (models/gan.py: RMSProp or Adam at
  # train.learning_rate, constant): the shared optimizer's options would be ignored.
  t = config.train
  for key, neutral in (('ema_decay', 0.0), ('weight_decay', 0.0), ('grad_clip_norm', 0.0),
                       ('warmup_steps', 0), ('lr_schedule', 'constant'), ('frozen', '')):
    if t[key] != neutral:
      raise ConfigError(
          f'config.train.{key}={t[key]!r}: not used by the gan family (its two optimizers '
          f'are set by model.objective); set it to {neutral!r}')


def check_corpus(config, corpus):
  """Four tracks are the corpus's S, A, T, B: it must have exactly 4 voices."""
  if config.model.tracks == 4 and corpus.num_voices != 4:
    raise ConfigError(
        f'config.model.tracks=4 needs a corpus with 4 voices; data.source='
        f'{config.data.source!r} has {corpus.num_voices}')


def summarize(config, totals):
  """The critic's mean score of the split's real pieces. The selection metric
  (metric_distance: the samples' musical metrics against the split) is added by
  evaluate.py for every family without a likelihood."""
  del config
  pieces = max(float(totals['pieces']), 1.0)
  return {'critic_real': float(totals['critic_real_sum']) / pieces,
          'frames': int(totals['frames']), 'warnings': []}
