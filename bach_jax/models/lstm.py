"""The paper's baseline: a 2-layer LSTM that predicts the next frame.

Each frame is 88 independent Bernoullis given the LSTM state (sigmoid outputs,
binary cross-entropy summed over the keys). Frame NLL is therefore exact for
this model: -log p(frame_t | frames_<t) = sum over keys of the BCE.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bach_jax.errors import ConfigError
from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS
from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import layers
from bach_jax.models.layers import LSTMStack

CAPABILITIES = family.Capabilities(likelihood='exact', select_by='frame_nll', primer=True,
                                   melody=True)
# Keys added after runs were written, with the values those runs trained with.
MODEL_DEFAULTS = {'input_dropout_rate': 0.0, 'weight_dropout_rate': 0.0}


class NextFrameLSTM(nn.Module):
  """(inputs float[B, T, 89] (common.frame_features), carry) -> (logits float[B, T, 88], carry)."""
  hidden_size: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.5
  dtype: jnp.dtype = jnp.float32
  input_dropout_rate: float = 0.0
  weight_dropout_rate: float = 0.0

  def setup(self):
    self.stack = LSTMStack(self.hidden_size, self.num_layers, self.dropout_rate, self.dtype,
                           self.weight_dropout_rate)
    self.input_dropout = nn.Dropout(self.input_dropout_rate)
    self.out = layers.dense(NUM_KEYS, self.dtype)

  def __call__(self, inputs, carry=None, *, deterministic=True):
    x = self.input_dropout(inputs.astype(jnp.float32), deterministic=deterministic)
    h, carry = self.stack(x, carry, deterministic=deterministic)
    return self.out(h), carry


def validate(config):
  """Model keys that would otherwise fail late or silently."""
  m = config.model
  for key, ok in (('hidden_size', m.hidden_size >= 1), ('num_layers', m.num_layers >= 1),
                  ('dropout_rate', 0.0 <= m.dropout_rate < 1.0),
                  ('input_dropout_rate', 0.0 <= m.input_dropout_rate < 1.0),
                  ('weight_dropout_rate', 0.0 <= m.weight_dropout_rate < 1.0),
                  ('dtype', m.dtype in ('float32', 'bfloat16'))):
    if not ok:
      raise ConfigError(f'config.model.{key}: invalid value {m[key]!r}')


def check_corpus(config, corpus):
  """Any corpus fits: the model reads and writes the 88-key roll only."""
  del config, corpus


def make_model(config):
  m = config.model
  return NextFrameLSTM(m.hidden_size, m.num_layers, m.dropout_rate, jnp.dtype(m.dtype),
                       m.input_dropout_rate, m.weight_dropout_rate)


def init(config, rng, example_batch):
  """-> TrainState with freshly initialized params and optimizer state."""
  inputs, _ = common.next_frame_targets(example_batch)
  params = make_model(config).init(rng, inputs)['params']
  return common.create_state(params, config.train)


def _nll(config, params, batch, rng=None):
  """Per-frame NLL float[B, T-1] (every frame; common.target_mask says which count)."""
  inputs, targets = common.next_frame_targets(batch)
  logits, _ = make_model(config).apply(
      {'params': params}, inputs, deterministic=rng is None,
      rngs=None if rng is None else {'dropout': rng})
  return common.bernoulli_nll(logits, targets)


def train_step(config, state, batch, rng):
  """batch: roll bool[B, T, 88], mask bool[B]. -> (state, metrics)."""
  return common.nll_train_step(_nll, config, state, batch, rng)


def eval_step(config, params, batch, rng=None):
  """batch: roll bool[B, T, 88], frame_mask bool[B, T] -> summed NLL and frame count."""
  del rng  # Exact and deterministic.
  return common.nll_eval_sums(_nll(config, params, batch), batch)


summarize = common.summarize_frame_nll


def sample(config, params, rng, request):
  """-> {'roll': bool[N, P + num_steps, 88]}; P = primer length (0 if none).

  One lax.scan over steps. Temperature divides the logits; top-k / top-p do
  not apply to independent Bernoullis and are ignored by this family.
  request.melody int[N, P + num_steps] (REST -1) harmonizes: at every sampled
  step the melody's key is on and every key above it off (a rest: all off),
  the keys below sampled. The keys are independent given the state, so this
  is exact conditioning on "the top note is the melody".
  """
  model = make_model(config)
  n = request.num_pieces
  carry = LSTMStack(config.model.hidden_size, config.model.num_layers).zero_carry(n)
  features = lambda frames, start: common.frame_features(
      frames, jnp.full(frames.shape[:-1], start))
  x = features(jnp.zeros((n, NUM_KEYS), bool), True)  # The start frame.
  if request.primer is not None:
    # Teacher-force the start frame and all primer frames but the last.
    primer = request.primer.astype(bool)
    seq = jnp.concatenate([x[:, None], features(primer[:, :-1], False)], axis=1)
    _, carry = model.apply({'params': params}, seq, carry)
    x = features(primer[:, -1], False)

  p = 0 if request.primer is None else request.primer.shape[1]
  if request.melody is None:
    melody = jnp.full((request.num_steps, n), -2, jnp.int32)  # -2: not clamped.
  else:
    melody = jnp.swapaxes(jnp.asarray(request.melody, jnp.int32)[:, p:p + request.num_steps], 0, 1)
  keys = jnp.arange(NUM_KEYS) + LOWEST_PITCH

  def step(state, inputs):
    carry, x = state
    key, mel = inputs
    logits, carry = model.apply({'params': params}, x[:, None], carry)
    frame = jax.random.bernoulli(key, jax.nn.sigmoid(logits[:, 0] / request.temperature))
    mel = mel[:, None]
    clamped = (keys < mel) & frame | (keys == mel)  # A rest (-1) clears every key.
    frame = jnp.where(mel >= -1, clamped, frame)
    return (carry, features(frame, False)), frame

  _, frames = jax.lax.scan(step, (carry, x), (jax.random.split(rng, request.num_steps), melody))
  roll = jnp.swapaxes(frames, 0, 1)
  if request.primer is not None:
    roll = jnp.concatenate([request.primer.astype(bool), roll], axis=1)
  return {'roll': roll}
