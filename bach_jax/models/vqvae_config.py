"""The VQ-VAE family's config checks and evaluation summary (models/vqvae.py holds the model)."""

import math

import numpy as np

from bach_jax.models import codebook as vq
from bach_jax.models import heads
from bach_jax.models import vae_config

_ENUMS = {
    'encoder': ('bilstm', 'conv'),
    'codebook_update': ('ema', 'gradient'),
    'output': ('frame_heads', 'bernoulli'),
    'decoder_input': ('previous_frame', 'none'),
    'dtype': ('float32', 'bfloat16'),
}

check_corpus = vae_config.check_corpus


def validate(config):
  """Checks config.model; raises ConfigError naming the key."""
  m = config.model
  req = heads.require
  for key, allowed in _ENUMS.items():
    req(m[key] in allowed, key, f'must be one of {allowed}, got {m[key]!r}')
  for key in ('segment_steps', 'pattern_steps', 'codebook_size', 'code_dim', 'encoder_hidden',
              'context_hidden', 'decoder_hidden', 'decoder_layers'):
    req(int(m[key]) >= 1, key, f'must be >= 1, got {m[key]!r}')
  req(m.segment_steps % m.pattern_steps == 0, 'pattern_steps',
      f'{m.pattern_steps} must divide model.segment_steps ({m.segment_steps})')
  req(m.codebook_size >= 2, 'codebook_size', f'must be >= 2, got {m.codebook_size}')
  req(m.commitment >= 0, 'commitment', f'must be >= 0, got {m.commitment}')
  req(0 < m.ema_decay < 1, 'ema_decay', f'must be in (0, 1), got {m.ema_decay}')
  req(m.dead_code_threshold >= 0, 'dead_code_threshold', 'must be >= 0')
  req(0 <= m.dropout_rate < 1, 'dropout_rate', f'must be in [0, 1), got {m.dropout_rate}')
  if m.output == 'frame_heads':
    heads.validate(config)


def summarize(config, totals, code_nll_key='code_nll_sum'):
  """Summed eval_step outputs -> the bound and the codebook's health.

  code_bound_frame_nll = (decoder NLL + codes' NLL under the prior) per frame (the
  selection metric); recon_frame_nll (-log p(x | c(x)) per frame); code_nll_per_frame;
  key_accuracy (teacher-forced most likely keys vs the data, all 88 keys of every
  frame); perplexity (exp of the entropy of code usage) and codes_used on the split.
  """
  frames = max(float(totals['frames']), 1.0)
  recon, codes = float(totals['recon_sum']), float(totals[code_nll_key])
  counts = np.asarray(totals['code_counts'])
  out = {
      'code_bound_frame_nll': (recon + codes) / frames,
      'recon_frame_nll': recon / frames,
      'code_nll_per_frame': codes / frames,
      'key_accuracy': float(totals['keys_right']) / (frames * 88),
      'perplexity': vq.perplexity(counts),
      'codes_used': int(np.sum(counts > 0)),
      'frames': int(frames),
      'settings': {'segment_steps': int(config.model.segment_steps),
                   'pattern_steps': int(config.model.pattern_steps),
                   'codebook_size': int(config.model.codebook_size),
                   'uniform_code_nll_per_pattern': math.log(config.model.codebook_size),
                   'scoring': 'whole pieces as consecutive segments; code_bound = decoder NLL '
                              '+ codes NLL, an upper bound on the frame NLL'},
      'warnings': [],
  }
  if out['codes_used'] <= max(1, config.model.codebook_size // 8):
    out['warnings'].append(f'codebook collapse: {out["codes_used"]} of '
                           f'{config.model.codebook_size} codes used on this split')
  return out
