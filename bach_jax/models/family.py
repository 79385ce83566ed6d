"""The family contract: everything the runtime relies on, and all a new family must meet.

A model family is one module, registered by name in `models/__init__.py`. The
trainer, the evaluator, the sampler and the report call only the functions below
and read only `CAPABILITIES`; they never test a family by name. A family that
lacks one of the functions is refused when it is looked up (`check_family`), and
tests/test_family_contract.py runs every registered family through the same
checks, so a new family is tested the day it is registered.

Functions (all pure; `config` is the run's ConfigDict, bound with partial):

  validate(config)                          ConfigError naming a bad config.model key
  check_corpus(config, corpus)              resolve / check corpus-dependent keys (voices,
                                            pitch range); may fill in config.model values
  init(config, rng, example_batch)          -> state (see "The state" below)
  train_step(config, state, batch, rng)     -> (state, metrics: dict of scalars, 'loss'
                                            first); jitted with the state donated
  eval_step(config, params, batch, rng)     -> dict of sums over the batch, additive over
                                            batches (e.g. nll_sum, frames); whole pieces
  summarize(config, totals)                 -> dict of metrics from the summed eval_step
                                            outputs (NumPy floats); holds the key
                                            CAPABILITIES.select_by, except for a family
                                            without a likelihood, whose selection metric
                                            (metric_distance of its samples) evaluate.py adds
  sample(config, params, rng, request)      -> {'roll': bool[N, T, 88], 'voices'?:
                                            int32[N, T, V], 'rule_fallbacks'?: int32[N]};
                                            request: common.SampleRequest

A family with CAPABILITIES.rules applies config.sample.rules (the voice-leading rules
of models/rules.py) in sample() and scores under them in eval_step; the others are
refused by `check_rules` wherever the option is set (setup, generate).

Latent families (CAPABILITIES.latent) also provide
  encode(config, params, batch, rng)        -> {'z': [B, n, ...] the latent of each segment of
                                            each piece (its posterior mean, or its codes),
                                            'segment_mask': bool[B, n]} (plus what else the
                                            family knows, e.g. 'std')
  decode(config, params, z, rng, request)   -> like sample, from z [N, n, ...] (n segments)
  interpolate_latents(config, a, b, num_points)
                                            -> [num_points, n, ...] from z of piece a to b
                                            (NumPy; the VAE: spherical interpolation)

The state. init() returns a flax.struct pytree with `.step` (int32 scalar),
`.params` (counted in the log) and `.eval_params()`: what evaluation, the best
checkpoint, sampling, load_model and fine-tuning use (the moving average where
train.ema_decay keeps one). Nothing outside the family reads a field of it but
those three: a checkpoint is restored into the family's own abstract state
(jax.eval_shape of init), never read as a raw dict. `common.create_state` /
`common.TrainState` give every family so far its state (EMA, frozen params,
`model_state` for what a family updates outside the optimizer); fine-tuning
(train.init_from) also sets `params`, `ema_params` and `model_state` of a
TrainState, so a family with another state type does not fine-tune.

Optional attribute: MODEL_DEFAULTS, {key: value} of config.model keys added after
runs were written, with the value those runs trained with; an older config.json
gets them (models.fill_model_defaults), so the family reads every key directly.

The config. configs/<name>.py: `get_config(arg='')` starting from
`config_base.base_config()`, setting `model.name` (the registry key), commenting
every new key, with `VARIANTS` (a tuple of its variants, checked by
`config_base.check_variant`) holding `'test'`: tiny, a few seconds of CPU
(`config_base.test_training` sets its training block). `model.dtype` ('float32'
or 'bfloat16') sets the matmul inputs of every layer: build dense layers with
`layers.dense(features, dtype)`, attention with `layers.einsum`, LSTMs with
`layers.LSTMStack` (tests/test_bf16.py checks that 80% of the step's matmuls
follow it).
"""

import dataclasses
import functools
import json

import jax
import ml_collections

from bach_jax.errors import ConfigError

LIKELIHOODS = ('exact', 'bound', 'none')

REQUIRED = ('validate', 'check_corpus', 'init', 'train_step', 'eval_step', 'summarize',
            'sample')
LATENT = ('encode', 'decode', 'interpolate_latents')


@dataclasses.dataclass(frozen=True)
class Capabilities:
  """What a family declares about itself, read by the code that uses it.

  Attributes:
    likelihood: 'exact' (the selection metric is -log p per frame), 'bound' (an
      upper bound on it: negative ELBO / IWAE / code bound) or 'none' (compared by
      its samples' musical statistics).
    select_by: the key of summarize()'s output that chooses the best checkpoint
      (lower is better) and heads the evaluation's log line.
    primer: sample() continues request.primer.
    melody: sample() clamps request.melody (harmonization).
    inpaint: sample() generates the cells of request.given marked MISSING (-2) given all
      the others, before and after them (any voices over any frames: harmonizing any
      voice, rewriting a span).
    voices: the model uses the corpus's voices; sampling on a corpus with another
      voice count is refused.
    latent: encode / decode exist (reconstruction, interpolation).
    rules: sample() constrains its slot heads by config.sample.rules (voice-leading
      rules, models/rules.py) and eval_step scores the constrained model.
    builds_on: '' or the family whose trained run this one starts from (its params
      through train.init_from / init_from_into, e.g. a prior over a frozen VQ-VAE);
      its configs set those keys, and the tests train the base family first.
    learns_by: the train metric that falls as the model learns; a leading '-' for one
      that rises. 'loss' for a likelihood or a bound; not a critic's loss, which
      tracks the generator and spikes with its gradient penalty: a GAN's critic
      learns to tell real from generated, '-wasserstein'.
  """
  likelihood: str
  select_by: str
  primer: bool = False
  melody: bool = False
  inpaint: bool = False
  voices: bool = False
  latent: bool = False
  rules: bool = False
  builds_on: str = ''
  learns_by: str = 'loss'

  def describe(self, metric=None):
    """'exact' / 'bound' / 'no likelihood' for a metric of the family's (default select_by)."""
    if (metric or self.select_by) != self.select_by:
      return ''
    return {'exact': 'exact', 'bound': 'bound', 'none': 'no likelihood'}[self.likelihood]


def check_family(name, module):
  """Raises ConfigError naming what `module` lacks of the contract; returns it."""
  caps = getattr(module, 'CAPABILITIES', None)
  if not isinstance(caps, Capabilities):
    raise ConfigError(f'model family {name!r} ({module.__name__}) has no CAPABILITIES')
  if caps.likelihood not in LIKELIHOODS:
    raise ConfigError(f'model family {name!r}: CAPABILITIES.likelihood must be one of '
                      f'{LIKELIHOODS}, got {caps.likelihood!r}')
  wanted = REQUIRED + (LATENT if caps.latent else ())
  missing = [f for f in wanted if not callable(getattr(module, f, None))]
  if missing:
    raise ConfigError(f'model family {name!r} ({module.__name__}) lacks {missing}')
  return module


def name_of(module):
  """A family module's registry name (its module name), for messages."""
  return module.__name__.rsplit('.', 1)[-1]


def _per_row(fn):
  """fn(params, batch, rng) applied to every row of the batch as a batch of its own (its
  key: the row's of split(rng)) -> fn's outputs with a leading row axis."""
  def per_row(params, batch, rng):
    rows = jax.tree.map(lambda x: x[:, None], batch)
    keys = jax.random.split(rng, batch['roll'].shape[0])
    return jax.vmap(fn, in_axes=(None, 0, 0))(params, rows, keys)
  return per_row


@functools.lru_cache(maxsize=32)
def _jitted(module, fn_name, config_json, per_row):
  config = ml_collections.ConfigDict(json.loads(config_json))
  fn = functools.partial(getattr(module, fn_name), config)
  return jax.jit(_per_row(fn) if per_row else fn)


def jitted(module, fn_name, config, per_row=False):
  """jit(module.<fn_name>) with `config` bound: one compiled function per (family,
  function, config), kept for the process (the config's JSON is the cache key).
  per_row: for eval_step, its sums for every row of a batch on its own (per piece)."""
  return _jitted(module, fn_name, config.to_json(), per_row)


def check_rules(module, rules):
  """ConfigError naming config.sample.rules when `rules` (its value) is set and the
  family cannot apply voice-leading rules (CAPABILITIES.rules)."""
  if str(rules or '').strip(',').strip() and not module.CAPABILITIES.rules:
    name = name_of(module)
    raise ConfigError(f'config.sample.rules={rules!r}: the {name} family does not apply '
                      'voice-leading rules (its sampler has no slot heads choosing a '
                      "frame's voices one by one under them); leave config.sample.rules empty")
