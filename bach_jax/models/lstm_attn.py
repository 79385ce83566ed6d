"""The flagship model: LSTM + causal attention + autoregressive per-voice heads.

Structure, per time step t (input: the previous frame, its 88-key roll and the
start flag (common.frame_features) plus, in voice mode, an embedding of each
voice's pitch class):

  h_t   = LSTMStack(x_<=t)                         shared scan LSTM (layers.py)
  c_t   = causal multi-head attention of h_t over h_<=t (optional window limit,
          learned relative-position bias), projected back to the hidden size
  z_t   = [h_t, c_t]
  head j: logits_j = W_j relu(A_j z_t + sum_{i<j} E_{j,i}[slot_i])  (autoregressive)
          or W_j relu(A_j z_t)                                      (independent)

The heads give an exact probability of the whole frame: p(frame) = prod_j
p(slot_j | z_t, slot_<j). A slot's classes are the pitches min_pitch..max_pitch
(class k = pitch min_pitch + k) and one more class K = REST (voice mode) or
end-of-frame (set mode).

Two ways of cutting a frame into slots:
* voice mode (corpus with voices, e.g. S,A,T,B): slot j is voice
  `order[j]` ('soprano_first' = S,A,T,B; 'bass_first' = B,T,A,S), REST allowed.
  The NLL is -log p(voices of the frame).
* set mode (no voices: JSB quarter benchmark, arbitrary MIDI): the frame's notes
  sorted by pitch ('soprano_first' = highest first, 'bass_first' = lowest
  first), max_notes slots. A structural mask allows only strictly monotone
  pitches and, after end-of-frame, only end-of-frame (probability 1), so every
  set of at most max_notes notes has exactly one path and sum over sets = 1.
  The NLL is -log p(88-key frame), comparable with the published JSB numbers.
  With heads='independent' the heads see no learned embedding of the earlier
  slots, but the structural mask still depends on the previous slot, so the
  frame probability stays exact (the ablation removes only the learned
  conditioning).

Sampling is one lax.scan over steps with the LSTM carry and an attention cache
(keys/values in a fixed [N, T, heads, d] buffer) threaded through; `make_step_fn`
is shared with `score_stepwise`, which the tests compare with `eval_step`.

Voice-leading rules (config.sample.rules, models/rules.py) constrain the heads when
sampling; eval_step scores under the same rules (a finite penalty), so its frame
NLL is the constrained model's, exactly. Training never applies them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bach_jax.errors import ConfigError
from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import heads
from bach_jax.models import layers
from bach_jax.models import rules as rules_lib
from bach_jax.models.common import filter_logits  # pylint: disable=unused-import (tests)
from bach_jax.models.frame_slots import (NEG, NUM_KEYS, _info, frame_slots, slots_to_frame,
                                         voice_classes)
from bach_jax.models.layers import LSTMStack

CAPABILITIES = family.Capabilities(likelihood='exact', select_by='frame_nll', primer=True,
                                   melody=True, voices=True, rules=True)
# Keys added after runs were written, with the values those runs trained with.
MODEL_DEFAULTS = {'weight_dropout_rate': 0.0}


# ----------------------------------------------------------------- config

def validate(config):
  """Checks config.model; raises ConfigError naming the key."""
  m = config.model
  heads.validate(config)
  _require = heads.require
  _require(m.hidden_size > 0 and m.num_layers > 0, 'hidden_size', 'and num_layers must be > 0')
  _require(0 <= m.dropout_rate < 1, 'dropout_rate', 'must be in [0, 1)')
  _require(0 <= m.weight_dropout_rate < 1, 'weight_dropout_rate', 'must be in [0, 1)')
  _require(m.dtype in ('float32', 'bfloat16'), 'dtype', f"must be 'float32' or 'bfloat16', "
           f'got {m.dtype!r}')
  dim = m.attn_dim or m.hidden_size
  _require(m.attn_heads > 0 and dim % m.attn_heads == 0, 'attn_heads',
           f'{m.attn_heads} must divide attn_dim {dim}')
  _require(m.attn_window >= 0, 'attn_window', 'must be >= 0 (0 = no limit)')
  _require(m.attn_max_distance >= 1, 'attn_max_distance', 'must be >= 1')


check_corpus = heads.check_corpus


# ------------------------------------------------------------------ model

def _attend(q, k, v, q_pos, k_pos, window, rel_bias, dtype=jnp.float32):
  """Causal attention. q: [B, Tq, H, d]; k, v: [B, Tk, H, d] -> [B, Tq, H, d]; dtype:
  the two matmuls' input dtype (float32 accumulation)."""
  scores = layers.einsum('bqhd,bkhd->bhqk', q, k, dtype) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  dist = q_pos[:, None] - k_pos[None, :]  # [Tq, Tk]
  ok = dist >= 0
  if window:
    ok &= dist < window
  if rel_bias is not None:
    scores = scores + rel_bias[:, jnp.clip(dist, 0, rel_bias.shape[1] - 1)]
  scores = jnp.where(ok, scores, NEG)
  return layers.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v, dtype)


class LSTMAttn(heads.FrameHeads, nn.Module):
  """See the module docstring. All shapes: B batch, T steps, S slots, C classes."""
  num_classes: int
  num_slots: int
  num_voices: int
  hidden_size: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.5
  attention: bool = True
  attn_heads: int = 4
  attn_dim: int = 0
  attn_window: int = 0
  attn_rel_bias: bool = True
  attn_max_distance: int = 64
  embed_dim: int = 16
  head_hidden: int = 256
  autoregressive: bool = True
  dtype: jnp.dtype = jnp.float32
  weight_dropout_rate: float = 0.0

  def setup(self):
    self.stack = LSTMStack(self.hidden_size, self.num_layers, self.dropout_rate, self.dtype,
                           self.weight_dropout_rate)
    self.setup_input_embed()
    if self.attention:
      dim = self.attn_dim or self.hidden_size
      self.qkv = layers.dense(3 * dim, self.dtype, use_bias=False)
      self.attn_out = layers.dense(self.hidden_size, self.dtype)
      self.rel_bias = (self.param('rel_bias', nn.initializers.zeros,
                                  (self.attn_heads, self.attn_max_distance))
                       if self.attn_rel_bias else None)
    self.drop = nn.Dropout(self.dropout_rate)
    self.setup_heads()

  def _qkv(self, h):
    q, k, v = jnp.split(self.qkv(h), 3, axis=-1)
    split = lambda a: a.reshape(a.shape[:-1] + (self.attn_heads, -1))
    return split(q), split(k), split(v)

  def _combine(self, h, ctx, deterministic):
    ctx = self.attn_out(ctx.reshape(ctx.shape[:-2] + (-1,)))
    return jnp.concatenate([h, self.drop(ctx, deterministic=deterministic)], axis=-1)

  def encode(self, x, deterministic=True):
    """Whole sequences. x: float[B, T, D] -> z float[B, T, Dz]."""
    h, _ = self.stack(x, None, deterministic=deterministic)
    if not self.attention:
      return h
    q, k, v = self._qkv(h)
    pos = jnp.arange(x.shape[1])
    ctx = _attend(q, k, v, pos, pos, self.attn_window, self.rel_bias, self.dtype)
    return self._combine(h, ctx, deterministic)

  def encode_step(self, x, carry, cache, t):
    """One step. x: float[N, D]; cache: (k, v) float[N, C, H, d] or None; t: int.

    -> (z float[N, Dz], carry, cache) with step t's keys/values written. Without a
    window, C is the number of steps and step t is written at t. With attn_window W,
    the cache is a ring of C = W slots (min(W, steps)): step t goes to slot t mod C,
    so a step costs O(W) and a piece O(T W), not O(T^2); slot j then holds step
    t - ((t - j) mod C), masked while that is < 0 (not written yet).
    """
    h, carry = self.stack(x[:, None], carry)
    if not self.attention:
      return h[:, 0], carry, cache
    q, k, v = self._qkv(h)
    size = cache[0].shape[1]
    slot = t % size if self.attn_window else t
    kc = jax.lax.dynamic_update_slice_in_dim(cache[0], k, slot, axis=1)
    vc = jax.lax.dynamic_update_slice_in_dim(cache[1], v, slot, axis=1)
    j = jnp.arange(size)
    k_pos = t - (t - j) % size if self.attn_window else j
    k_pos = jnp.where(k_pos >= 0, k_pos, t + 1)  # Not written yet: in the future, masked.
    ctx = _attend(q, kc, vc, jnp.reshape(t, (1,)), k_pos, self.attn_window, self.rel_bias,
                  self.dtype)
    return self._combine(h, ctx, True)[:, 0], carry, (kc, vc)

  def __call__(self, x, slots, deterministic=True, head_context=None):
    """Teacher-forced. x: float[B, T, D]; slots: int[B, T, S] targets -> [B, T, S, C].
    head_context: float[B, T, C] given to the heads beside z_t (the harmonizer's), or None."""
    z = self.encode(x, deterministic)
    if head_context is not None:
      z = jnp.concatenate([z, head_context], axis=-1)
    return self.all_head_logits(z, slots, deterministic)


def make_model(config, info):
  m = config.model
  return LSTMAttn(
      info.num_classes, info.num_slots, info.num_voices, m.hidden_size, m.num_layers,
      m.dropout_rate, m.attention, m.attn_heads, m.attn_dim, m.attn_window, m.attn_rel_bias,
      m.attn_max_distance, m.embed_dim, m.head_hidden, m.heads == 'autoregressive',
      jnp.dtype(m.dtype), m.weight_dropout_rate)


# --------------------------------------------------------- family surface

def frame_logits(config, params, batch, rng=None, rules=None, context=None):
  """Teacher-forced masked logits float[B, T-1, S, C] and target slots int32[B, T-1, S].

  rules: a rules.RuleSet (None: off): the logits of the model constrained by them.
  context: float[B, T-1, C] appended to every step's input and given to the heads beside
  z_t (the harmonizer's), or None.
  """
  info = _info(config, batch, params)
  model = make_model(config, info)
  roll, start, vcls, target = heads.frame_inputs_targets(info, batch)
  x = model.apply({'params': params}, roll, start, vcls, method=LSTMAttn.embed_inputs)
  if context is not None:
    x = jnp.concatenate([x, context], axis=-1)
  logits = model.apply({'params': params}, x, target, deterministic=rng is None,
                       rngs=None if rng is None else {'dropout': rng}, head_context=context)
  logits = heads.mask_all(info, logits, target)
  if rules is not None:
    rules_lib.check_layout(info)
    prev = rules_lib.previous_voices(info, roll, vcls)
    logits = rules_lib.apply_all(info, rules, logits, target, prev)
  return logits, target


def frame_nll(config, params, batch, rng=None, rules=None):
  """-log p(frame t | frames < t): float[B, T-1] (nats), exact (under `rules`, if any)."""
  return heads.slot_nll(*frame_logits(config, params, batch, rng, rules))


input_size = heads.input_size


def init(config, rng, example_batch):
  """-> TrainState with freshly initialized params and optimizer state."""
  info = _info(config, example_batch)
  model = make_model(config, info)
  roll, _, _, target = heads.frame_inputs_targets(info, example_batch)
  x = jnp.zeros(roll.shape[:-1] + (input_size(config, info),))
  params = model.init(rng, x, target)['params']
  return common.create_state(params, config.train)


def train_step(config, state, batch, rng):
  """batch: roll bool[B, W, 88], mask bool[B], voices int32[B, W, V]. -> (state, metrics)."""
  return common.nll_train_step(frame_nll, config, state, batch, rng)


def eval_step(config, params, batch, rng=None):
  """batch: roll bool[B, T, 88], frame_mask bool[B, T] (+ voices) -> summed NLL, frames.

  Under config.sample.rules (a finite rule_penalty) the NLL is the constrained model's.
  """
  del rng  # Exact and deterministic.
  nll = frame_nll(config, params, batch, rules=rules_lib.for_scoring(config))
  return common.nll_eval_sums(nll, batch)


summarize = common.summarize_frame_nll


# ------------------------------------------------------- step-by-step path

def make_step_fn(config, params, info, temperature=1.0, top_k=0, top_p=1.0, rules=None,
                 lookahead=False):
  """-> step(state, (forced int32[N, S], key[, context float[N, C], counted bool[N, S]]))
  -> (state, (slots int32[N, S], logp float[N])).

  state = (lstm carry, attention cache or None, roll_prev bool[N, 88], vcls_prev
  int32[N, V] or None, t int32). forced[:, j] >= 0 clamps slot j, -1 samples it
  (temperature / top-k / top-p); logp is log p(chosen frame) under the
  unfiltered model, so teacher-forcing every slot scores the data. With rules (a
  rules.RuleSet) the heads are constrained, logp is the constrained model's and the
  step also outputs fallbacks int32[N] (heads.choose_slots_with_rules); lookahead:
  a head also keeps the rules with clamped slots after it (harmonization). A model
  that reads more than the previous frame (the harmonizer) gives each step's context,
  appended to its input, and the slots whose log p counts.
  """
  model = make_model(config, info)
  apply = lambda *a, **k: model.apply({'params': params}, *a, **k)

  def step(state, inputs):
    carry, cache, roll_prev, vcls_prev, t = state
    forced, key, *more = inputs
    context, counted = (more + [None, None])[:2]
    start = jnp.broadcast_to(t == 0, roll_prev.shape[:1])  # Step 0 reads the start frame.
    x = apply(roll_prev, start, vcls_prev, method=LSTMAttn.embed_inputs)
    if context is not None:
      x = jnp.concatenate([x, context], axis=-1)
    z, carry, cache = apply(x, carry, cache, t, method=LSTMAttn.encode_step)
    if context is not None:  # The heads see it too, beside z_t.
      z = jnp.concatenate([z, context], axis=-1)
    head = lambda j, slots: apply(j, z, slots, method=LSTMAttn.head_logits)
    if rules is None:
      out = heads.choose_slots(info, head, forced, key, temperature, top_k, top_p, counted)
    else:
      adjust = rules_lib.make_adjust(
          info, rules, rules_lib.previous_voices(info, roll_prev, vcls_prev),
          forced if lookahead else None)
      out = heads.choose_slots_with_rules(info, head, forced, key, adjust, temperature, top_k,
                                          top_p, counted)
    roll, vcls = slots_to_frame(info, out[0])
    return (carry, cache, roll, vcls, t + 1), out

  return step


def _start_state(config, params, info, n, num_steps):
  m = config.model
  carry = LSTMStack(m.hidden_size, m.num_layers).zero_carry(n)
  cache = None
  if m.attention:  # A ring of attn_window slots, or every step (encode_step).
    dim = m.attn_dim or m.hidden_size
    size = min(m.attn_window, num_steps) if m.attn_window else num_steps
    z = jnp.zeros((n, size, m.attn_heads, dim // m.attn_heads), jnp.float32)
    cache = (z, z)
  vcls = (jnp.full((n, info.num_voices), info.num_keys, jnp.int32) if info.num_voices
          else None)
  return (carry, cache, jnp.zeros((n, NUM_KEYS), bool), vcls, jnp.zeros((), jnp.int32))


def score_stepwise(config, params, batch, rules=None):
  """frame_nll through the sampling path (cache + carry, one step at a time): [B, T-1]."""
  info = _info(config, batch, params)
  roll, voices = batch['roll'], batch.get('voices') if info.num_voices else None
  target = frame_slots(info, roll[:, 1:], None if voices is None else voices[:, 1:])
  b, t = roll.shape[:2]
  state = _start_state(config, params, info, b, t - 1)
  first_vcls = None if voices is None else voice_classes(info, voices[:, 0])
  state = state[:2] + (roll[:, 0], first_vcls) + state[4:]
  keys = jax.random.split(jax.random.key(0), t - 1)
  if rules is not None:
    rules_lib.check_layout(info)
  _, (_, logp, *_) = jax.lax.scan(make_step_fn(config, params, info, rules=rules), state,
                                  (jnp.swapaxes(target, 0, 1), keys))
  return -jnp.swapaxes(logp, 0, 1)


def request_slots(info, request):
  """A request's clamped slots -> (forced int32[N, P + num_steps, S], -1 where sampled).

  The primer's frames (request.primer / primer_voices) are clamped whole;
  request.melody int[N, P + num_steps] (REST -1) clamps the soprano (voice 0; in set
  mode the top note, soprano_first only) at every sampled step; request.given
  int[N, P + num_steps, V] (voice mode) clamps each voice where it is >= -1 (a pitch or
  REST; -2: sampled). This causal model reads the clamped cells of the past and of the
  frame's earlier slots only; the harmonizer reads them all."""
  n, steps = request.num_pieces, request.num_steps
  total = steps
  forced = jnp.full((n, steps, info.num_slots), -1, jnp.int32)
  if request.primer is not None:
    primer = jnp.asarray(request.primer, bool)
    total = primer.shape[1] + steps
    if info.num_voices and request.primer_voices is None:
      raise ValueError('sample: a voice model needs request.primer_voices with the primer')
    pv = None if not info.num_voices else jnp.asarray(request.primer_voices)
    forced = jnp.concatenate([frame_slots(info, primer, pv), forced], axis=1)
  if request.melody is not None:
    if not info.num_voices and not info.soprano_first:
      raise ConfigError("config.model.voice_order: harmonization in set mode needs "
                        "'soprano_first' (the melody is the first slot)")
    mel = jnp.asarray(request.melody, jnp.int32)[:, :total]
    mel = jnp.where(mel < 0, info.num_keys, jnp.clip(mel - info.lo, 0, info.num_keys - 1))
    slot = info.order.index(0) if info.num_voices else 0
    sampled = jnp.arange(total) >= total - steps
    forced = forced.at[:, :, slot].set(jnp.where(sampled[None], mel, forced[:, :, slot]))
  if request.given is not None:
    if not info.num_voices:
      raise ConfigError('sample: request.given needs a voice model (model.num_voices > 0); '
                        'in set mode give the top line as request.melody')
    given = jnp.asarray(request.given, jnp.int32)[:, -total:]
    order = jnp.array(info.order)
    classes = voice_classes(info, jnp.maximum(given, -1))[..., order]
    forced = jnp.where((given >= -1)[..., order], classes, forced)
  return forced


def run_sampler(config, params, info, rng, request, forced, rules, lookahead, context=None):
  """The step function scanned over forced's steps -> the family's sample output dict.

  context: float[N, T, C] appended to every step's input (the harmonizer's), or None."""
  n, total = forced.shape[:2]
  state = _start_state(config, params, info, n, total)
  step = make_step_fn(config, params, info, request.temperature, request.top_k, request.top_p,
                      rules, lookahead=lookahead)
  xs = (jnp.swapaxes(forced, 0, 1), jax.random.split(rng, total))
  if context is not None:
    xs += (jnp.swapaxes(context, 0, 1),)
  _, (slots, _, *fallbacks) = jax.lax.scan(step, state, xs)
  roll, vcls = slots_to_frame(info, jnp.swapaxes(slots, 0, 1))
  out = {'roll': roll}
  if info.num_voices:
    out['voices'] = jnp.where(vcls == info.num_keys, -1, vcls + info.lo).astype(jnp.int32)
  if rules is not None:
    out['rule_fallbacks'] = jnp.sum(fallbacks[0], axis=0)
  return out


def sample(config, params, rng, request):
  """-> {'roll': bool[N, P + num_steps, 88], 'voices': int32[N, P + num_steps, V]}.

  One lax.scan over P + num_steps steps from the start frame: primer
  frames (request.primer / primer_voices) are teacher-forced into the carry and
  cache, later frames sampled head by head with request.temperature / top_k /
  top_p. request.melody int[N, P + num_steps] (REST -1) clamps the soprano
  (voice 0; in set mode the top note, soprano_first only) at every sampled step.
  The roll is the union of the sampled voices (set mode: of the sampled notes).
  Under config.sample.rules the heads are constrained (clamped slots are kept) and
  the output also holds 'rule_fallbacks' int32[N] (models/rules.py).
  """
  info = _info(config, params=params)
  rules = rules_lib.from_config(config)
  if rules is not None:
    rules_lib.check_layout(info)
  return run_sampler(config, params, info, rng, request, request_slots(info, request), rules,
                     lookahead=request.melody is not None or request.given is not None)
