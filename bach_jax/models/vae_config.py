"""The VAE family's config checks and evaluation summary (models/vae.py holds the model)."""

import numpy as np

from bach_jax.models import heads
from bach_jax.models import latent

MIN_ACTIVE_UNITS = 3  # Fewer active latent dimensions than this: a collapse warning.
_ENUMS = {
    'decoder': ('flat', 'hierarchical'),
    'output': ('frame_heads', 'bernoulli'),
    'decoder_input': ('previous_frame', 'none'),
    'kl_schedule': ('constant', 'linear', 'cyclical'),
    'free_bits_mode': ('total', 'per_dim'),
    'dtype': ('float32', 'bfloat16'),
}


def validate(config):
  """Checks config.model; raises ConfigError naming the key."""
  m = config.model
  req = heads.require
  for key, allowed in _ENUMS.items():
    req(m[key] in allowed, key, f'must be one of {allowed}, got {m[key]!r}')
  for key in ('segment_steps', 'latent_dim', 'encoder_hidden', 'decoder_hidden',
              'decoder_layers', 'iwae_samples'):
    req(int(m[key]) >= 1, key, f'must be >= 1, got {m[key]!r}')
  if m.decoder == 'hierarchical':
    req(m.subsequence_steps >= 1 and m.segment_steps % m.subsequence_steps == 0,
        'subsequence_steps', f'{m.subsequence_steps} must divide model.segment_steps '
        f'({m.segment_steps})')
    req(m.conductor_hidden >= 1, 'conductor_hidden', 'must be >= 1')
  req(0 <= m.dropout_rate < 1, 'dropout_rate', f'must be in [0, 1), got {m.dropout_rate}')
  req(m.beta > 0, 'beta', f'(the KL weight cap) must be > 0, got {m.beta}')
  req(m.free_bits >= 0, 'free_bits', f'must be >= 0 nats, got {m.free_bits}')
  req(m.kl_warmup_steps >= 0, 'kl_warmup_steps', 'must be >= 0')
  req(m.kl_schedule != 'cyclical' or m.kl_cycle_steps >= 2, 'kl_cycle_steps',
      'must be >= 2 with the cyclical schedule')
  if m.output == 'frame_heads':
    heads.validate(config)


def check_corpus(config, corpus):
  """Frame heads: resolve voices and check the pitch range (as lstm_attn does)."""
  if config.model.output == 'frame_heads':
    heads.check_corpus(config, corpus)
  elif config.model.num_voices == -1:
    config.model.num_voices = 0  # Bernoulli keys read and write the roll only.


def summarize(config, totals):
  """Summed eval_step outputs -> per-frame bounds and collapse diagnostics.

  Per frame (nats): iwae_frame_nll (the selection metric), nelbo_frame_nll,
  recon_frame_nll and kl_per_frame (its two parts), recon_frame_nll_at_mean
  (-log p(x | z = posterior mean)); kl_per_piece, kl_per_segment (nats);
  active_units (posterior-mean variance over the data > 0.01, Burda et al.);
  kl_per_dim (list); warnings (list of lines); settings (how it was scored).
  """
  m = config.model
  frames = max(float(totals['frames']), 1.0)
  segments, pieces = float(totals['segments']), max(float(totals['pieces']), 1.0)
  recon, kl = float(totals['recon_sum']), float(totals['kl_sum'])
  active, _ = latent.active_units(totals['mean_sum'], totals['mean_sq_sum'], segments)
  out = {
      'iwae_frame_nll': float(totals['iwae_sum']) / frames,
      'nelbo_frame_nll': (recon + kl) / frames,
      'recon_frame_nll': recon / frames,
      'kl_per_frame': kl / frames,
      'recon_frame_nll_at_mean': float(totals['recon_at_mean_sum']) / frames,
      'kl_per_piece': kl / pieces,
      'kl_per_segment': kl / max(segments, 1.0),
      'active_units': active,
      'frames': int(frames),
      'kl_per_dim': [round(float(x), 5) for x in
                     np.asarray(totals['kl_dim_sum']) / max(segments, 1.0)],
      'settings': {'segment_steps': int(m.segment_steps), 'latent_dim': int(m.latent_dim),
                   'iwae_samples': int(m.iwae_samples),
                   'scoring': f'whole pieces as consecutive {m.segment_steps}-frame segments, '
                              'one latent each (a proper distribution); iwae and nelbo are '
                              'upper bounds on the frame NLL'},
      'warnings': [],
  }
  if active < min(MIN_ACTIVE_UNITS, m.latent_dim):
    out['warnings'].append(
        f'posterior collapse: {active} of {m.latent_dim} latent units active (variance of '
        f'the posterior mean over the data > 0.01); KL {out["kl_per_piece"]:.2f} nats/piece')
  return out
