"""The harmonizer: a masked conditional model that sees the whole given line.

Some cells of a piece are given (any voices over any frames: the soprano throughout to
harmonize a melody, the bass to realize a bass line, everything but a span of one
voice to rewrite that span); the others, the missing cells, are generated. Per frame t:

  e_t   = a bidirectional LSTM over every frame's given cells and the mask (each slot's
          class, or a `missing` token): it reads the given line before AND after t
  z_t   = LSTM + attention over the previous frames (all voices, given and generated)
          and e_t: lstm_attn's causal model, e_t appended to each step's input
  slots = lstm_attn's frame heads on [z_t, e_t], slot by slot; a given slot is clamped

so q(missing | given) = prod over frames, then slots, of p(missing slot | e_t, earlier
frames, earlier slots of this frame) is a normalized distribution over the missing
cells: its -log is the exact conditional NLL, the score here (nats per frame). Trained
with random masks, as Coconet is: a whole voice given (the soprano half the time), all
but a span of one voice, a voice plus random blocks of the others, or nothing given.
With nothing given it is a causal model of whole pieces. The causal part (params
['causal']) is lstm_attn's, with the same config keys; the encoder is params['given'].

Evaluation (eval_step, select_by 'harmonize_frame_nll'): the first slot given over the
whole piece (the soprano, voice_order='soprano_first'; in set mode, JSB, the top note),
-log q(the other slots | it) per frame. Sampling keeps every given cell, under
temperature / top-k / top-p and the voice-leading rules (models/rules.py) like
lstm_attn: request.given (int[N, T, V], MISSING = -2 where generated; a pitch or REST
-1 where given), request.melody (the soprano) or request.primer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import frame_decoder
from bach_jax.models import heads
from bach_jax.models import lstm_attn
from bach_jax.models import rules as rules_lib
from bach_jax.models.frame_slots import _info, voice_classes
from bach_jax.models.layers import LSTMStack

CAPABILITIES = family.Capabilities(likelihood='exact', select_by='harmonize_frame_nll',
                                   primer=True, melody=True, voices=True, rules=True,
                                   inpaint=True)
MISSING = -2  # request.given: a cell to generate.
MASK_KINDS = ('voice', 'span', 'mixed', 'none')  # config.model.mask_weights' order.


def validate(config):
  """lstm_attn's keys, the encoder's and the training masks'; ConfigError naming the key."""
  lstm_attn.validate(config)
  m = config.model
  heads.require(m.encoder_hidden >= 1, 'encoder_hidden', f'must be >= 1, got {m.encoder_hidden}')
  heads.require(m.given_embed_dim >= 1, 'given_embed_dim', 'must be >= 1')
  weights = [float(w) for w in str(m.mask_weights).split(',')]
  heads.require(len(weights) == len(MASK_KINDS) and min(weights) >= 0 and sum(weights) > 0,
                'mask_weights', f'must be {len(MASK_KINDS)} weights >= 0 ({", ".join(MASK_KINDS)})'
                f', got {m.mask_weights!r}')
  heads.require(0 <= m.mask_first_slot <= 1, 'mask_first_slot', 'must be in [0, 1]')
  heads.require(m.voice_order == 'soprano_first', 'voice_order',
                "must be 'soprano_first' (the first slot is the evaluated given line)")


check_corpus = heads.check_corpus


class GivenEncoder(nn.Module):
  """(slots int[B, T, S], given bool[B, T, S], lengths int[B]) -> float[B, T, 2H]: a
  bidirectional LSTM over each frame's given slots (their classes; a `missing` token
  elsewhere) and the mask, each row reversed within its length (frame_decoder)."""
  num_slots: int
  num_classes: int
  embed_dim: int
  hidden_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots, given, lengths):
    table = self.param('embed', nn.initializers.normal(0.1),
                       (self.num_slots, self.num_classes + 1, self.embed_dim))
    e = table[jnp.arange(self.num_slots), jnp.where(given, slots, self.num_classes)]
    x = jnp.concatenate([e.reshape(e.shape[:-2] + (-1,)), given.astype(jnp.float32)], -1)
    fwd = LSTMStack(self.hidden_size, 1, dtype=self.dtype, name='fwd')
    bwd = LSTMStack(self.hidden_size, 1, dtype=self.dtype, name='bwd')
    return frame_decoder.bidirectional(fwd, bwd, x, lengths)[0]


def _encoder(config, info):
  m = config.model
  return GivenEncoder(info.num_slots, info.num_classes, m.given_embed_dim, m.encoder_hidden,
                      jnp.dtype(m.dtype))


def _info_of(config, batch=None, params=None):
  return _info(config, batch, None if params is None else params['causal'])


def context(config, params, info, slots, given, lengths):
  """The encoder's e_t of every target frame: float[B, T, 2 encoder_hidden]."""
  return _encoder(config, info).apply({'params': params['given']}, slots, given, lengths)


def slot_nlls(config, params, batch, given, rng=None, rules=None):
  """-log q of every slot of every target frame, float[B, T-1, S], teacher-forced; given:
  bool[B, T-1, S], the target frames' given slots (their terms are not part of the score)."""
  info = _info_of(config, batch, params)
  _, _, _, target = heads.frame_inputs_targets(info, batch)
  lengths = jnp.sum(common.target_mask(batch), axis=1).astype(jnp.int32)
  e = context(config, params, info, target, given, lengths)
  logits, target = lstm_attn.frame_logits(config, params['causal'], batch, rng, rules, e)
  return heads.slot_nlls(logits, target)


def first_slot_given(shape):
  """The evaluation's mask: the first slot (the soprano / the top note) of every frame."""
  return jnp.broadcast_to(jnp.arange(shape[-1]) == 0, shape)


def random_given(config, rng, shape):
  """A training mask bool[B, T, S] per row, of a kind drawn by config.model.mask_weights:
  'voice' (one slot given throughout: the first with probability model.mask_first_slot,
  else another), 'span' (all given but
  one slot over 4 frames to half the window), 'mixed' (one slot throughout and each
  other slot's 4-frame blocks at random), 'none' (nothing given)."""
  b, t, s = shape
  k = jax.random.split(rng, 7)
  w = jnp.array([float(x) for x in str(config.model.mask_weights).split(',')])
  kind = jax.random.choice(k[0], len(MASK_KINDS), (b,), p=w / w.sum())
  slot = jnp.arange(s)[None, None]
  voice = jnp.where(jax.random.uniform(k[1], (b,)) < config.model.mask_first_slot, 0,
                    jax.random.randint(k[2], (b,), 1, max(s, 2)) % s)
  whole = jnp.broadcast_to(slot == voice[:, None, None], shape)
  length = jax.random.randint(k[3], (b,), 4, max(5, t // 2 + 1))
  begin = jax.random.randint(k[4], (b,), 0, t)
  frames = jnp.arange(t)[None]
  span = (frames >= begin[:, None]) & (frames < (begin + length)[:, None])
  gap = span[..., None] & (slot == jax.random.randint(k[5], (b,), 0, s)[:, None, None])
  blocks = jax.random.bernoulli(k[6], 0.5, (b, -(-t // 4), s)).repeat(4, axis=1)[:, :t]
  choices = jnp.stack([whole, ~gap, whole | blocks, jnp.zeros(shape, bool)])
  return jnp.take_along_axis(choices, kind[None, :, None, None], axis=0)[0]


def init(config, rng, example_batch):
  """-> TrainState, params {'causal': lstm_attn's, 'given': the encoder's}."""
  info = _info_of(config, example_batch)
  roll, _, _, target = heads.frame_inputs_targets(info, example_batch)
  b, t = target.shape[:2]
  given = first_slot_given(target.shape)
  encoder = _encoder(config, info)
  enc = encoder.init(jax.random.fold_in(rng, 1), target, given, jnp.full((b,), t, jnp.int32))
  e = encoder.apply(enc, target, given, jnp.full((b,), t, jnp.int32))
  x = jnp.zeros(roll.shape[:-1] + (lstm_attn.input_size(config, info) + e.shape[-1],))
  causal = lstm_attn.make_model(config, info).init(rng, x, target, head_context=e)['params']
  return common.create_state({'causal': causal, 'given': enc['params']}, config.train)


def train_step(config, state, batch, rng):
  """One update on -log q(missing | given) per missing cell, masks drawn per row."""
  info = _info_of(config, batch, state.params)
  mask = common.target_mask(batch)
  shape = batch['roll'][:, 1:].shape[:2] + (info.num_slots,)
  given = random_given(config, jax.random.fold_in(rng, 1), shape)
  counted = (~given) * mask[..., None]

  def loss_fn(params):
    nll = slot_nlls(config, params, batch, given, jax.random.fold_in(rng, 0))
    return jnp.sum(nll * counted) / jnp.maximum(jnp.sum(counted), 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  state, grad_norm = common.apply_gradients(state, grads, train_config=config.train)
  return state, {'loss': loss, 'grad_norm': grad_norm,
                 'given_share': jnp.sum(given * mask[..., None]) / jnp.maximum(
                     jnp.sum(mask) * info.num_slots, 1.0)}


def eval_step(config, params, batch, rng=None):
  """-log q(every slot but the first | the first slot throughout), summed; frames."""
  del rng  # Exact and deterministic.
  info = _info_of(config, batch, params)
  given = first_slot_given(batch['roll'][:, 1:].shape[:2] + (info.num_slots,))
  nll = slot_nlls(config, params, batch, given, rules=rules_lib.for_scoring(config))
  return common.nll_eval_sums(jnp.sum(nll * ~given, axis=-1), batch)


def summarize(config, totals):
  out = common.summarize_frame_nll(config, totals)
  return {'harmonize_frame_nll': out['frame_nll'], 'frames': out['frames']}


def sample(config, params, rng, request):
  """lstm_attn.sample with the given cells of request.given / melody / primer read by the
  encoder (both directions) and clamped -> {'roll', 'voices', 'rule_fallbacks'?}."""
  info = _info_of(config, params=params)
  rules = rules_lib.from_config(config)
  if rules is not None:
    rules_lib.check_layout(info)
  forced = lstm_attn.request_slots(info, request)
  n, total = forced.shape[:2]
  e = context(config, params, info, jnp.maximum(forced, 0), forced >= 0,
              jnp.full((n,), total, jnp.int32))
  return lstm_attn.run_sampler(
      config, params['causal'], info, rng, request, forced, rules,
      lookahead=request.melody is not None or request.given is not None, context=e)


def score_stepwise(config, params, batch, given, rules=None):
  """-log q(missing slots) of every target frame through the sampling path, one step at a
  time (every slot forced to the data, only the missing ones counted): float[B, T-1]."""
  info = _info_of(config, batch, params)
  roll, voices = batch['roll'], batch.get('voices') if info.num_voices else None
  _, _, _, target = heads.frame_inputs_targets(info, batch)
  b, t = target.shape[:2]
  e = context(config, params, info, target, given,
              jnp.sum(common.target_mask(batch), axis=1).astype(jnp.int32))
  state = lstm_attn._start_state(config, params['causal'], info, b, t)  # pylint: disable=protected-access
  first = None if voices is None else voice_classes(info, voices[:, 0])
  state = state[:2] + (roll[:, 0], first) + state[4:]
  step = lstm_attn.make_step_fn(config, params['causal'], info, rules=rules)
  xs = (jnp.swapaxes(target, 0, 1), jax.random.split(jax.random.key(0), t),
        jnp.swapaxes(e, 0, 1), jnp.swapaxes(~given, 0, 1))
  _, (_, logp, *_) = jax.lax.scan(step, state, xs)
  return -jnp.swapaxes(logp, 0, 1)
