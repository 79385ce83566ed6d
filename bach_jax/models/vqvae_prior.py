"""Stage 2 of the VQ-VAE: an autoregressive prior over the codes of a trained stage 1.

params = {'vqvae': the stage-1 params (frozen: train.frozen = 'vqvae', out of the
optimizer), 'prior': an LSTM over each segment's code sequence}. The stage-1 run
comes in through the trainer's start-from-another-run mechanism
(train.init_from = its workdir, train.init_from_into = 'vqvae'), which also copies
its model config into config.model.vqvae, so a stage-2 workdir is self-contained.

The prior: p(c_1..c_P) = prod_p softmax(W LSTM(embed(c_<p)))[c_p] per segment (code
p reads the previous code, p = 0 a start symbol K). Trained on the codes that the
frozen encoder gives the training windows, its NLL replaces the uniform prior's
log K per pattern in the bound: -log p(x) <= -log p(x | c(x)) - log p_prior(c(x)).
Sampling draws codes from it (request.temperature / top_k / top_p filter the codes)
and decodes them with stage 1's decoder (frames at temperature 1).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import heads
from bach_jax.models import layers
from bach_jax.models import vqvae
from bach_jax.models.layers import LSTMStack

CAPABILITIES = family.Capabilities(likelihood='bound', select_by='code_bound_frame_nll',
                                   voices=True, latent=True, builds_on='vqvae')


def stage1_config(config):
  """The config the stage-1 functions expect: config.model replaced by its vqvae section."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.model = ml_collections.ConfigDict(config.model.vqvae.to_dict())
  return out


def validate(config):
  m = config.model
  heads.require('vqvae' in m and 'codebook_size' in m.vqvae, 'vqvae',
                "stage 1's model config is missing: set --config.train.init_from to a "
                "trained vqvae workdir (with train.init_from_into='vqvae')")
  for key in ('prior_hidden', 'prior_layers', 'code_embed_dim'):
    heads.require(int(m[key]) >= 1, key, f'must be >= 1, got {m[key]!r}')
  heads.require(0 <= m.prior_dropout_rate < 1, 'prior_dropout_rate', 'must be in [0, 1)')
  heads.require(m.dtype in ('float32', 'bfloat16'), 'dtype',
                f"must be 'float32' or 'bfloat16', got {m.dtype!r}")
  vqvae.validate(stage1_config(config))


def check_corpus(config, corpus):
  s1 = stage1_config(config)
  vqvae.check_corpus(s1, corpus)
  config.model.vqvae.num_voices = s1.model.num_voices


class CodePrior(nn.Module):
  """codes int32[N, P] -> logits float[N, P, K] of each code given the ones before."""
  codebook_size: int
  embed_dim: int = 64
  hidden: int = 256
  layers: int = 2
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.codebook_size + 1, self.embed_dim)  # + the start symbol.
    self.lstm = LSTMStack(self.hidden, self.layers, self.dropout_rate, self.dtype)
    self.out = layers.dense(self.codebook_size, self.dtype)

  def __call__(self, codes, deterministic=True):
    start = jnp.full(codes.shape[:1] + (1,), self.codebook_size, jnp.int32)
    prev = jnp.concatenate([start, codes[:, :-1]], axis=1)
    h, _ = self.lstm(self.embed(prev), deterministic=deterministic)
    return self.out(h)

  def step(self, prev, carry):
    """One step: prev int32[N] (K = start) -> (logits float[N, K], carry)."""
    h, carry = self.lstm(self.embed(prev)[:, None], carry)
    return self.out(h[:, 0]), carry


def make_prior(config):
  m = config.model
  return CodePrior(m.vqvae.codebook_size, m.code_embed_dim, m.prior_hidden, m.prior_layers,
                   m.prior_dropout_rate, jnp.dtype(m.dtype))


def code_nll(config, params, codes, rng=None):
  """-log p_prior(c_p | c_<p): float[N, P] (teacher-forced)."""
  logits = make_prior(config).apply({'params': params['prior']}, codes,
                                    deterministic=rng is None,
                                    rngs=None if rng is None else {'dropout': rng})
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, codes[..., None], -1)[..., 0]


def _codes(config, params, batch):
  """The frozen stage 1's view of a batch: (autoencode output, codes int32[N, P])."""
  out = vqvae.autoencode(stage1_config(config), params['vqvae'], batch)
  return out, jax.lax.stop_gradient(out['codes'])


def init(config, rng, example_batch):
  """-> TrainState: fresh stage-1 shapes (replaced by init_from) and a fresh prior."""
  s1 = stage1_config(config)
  stage1 = vqvae.init(s1, jax.random.fold_in(rng, 1), example_batch)
  patterns = s1.model.segment_steps // s1.model.pattern_steps
  prior = make_prior(config).init(jax.random.fold_in(rng, 2),
                                  jnp.zeros((1, patterns), jnp.int32))['params']
  return common.create_state({'vqvae': stage1.params, 'prior': prior}, config.train)


def train_step(config, state, batch, rng):
  """The prior's NLL of the frozen encoder's codes, in nats per target frame."""
  def loss_fn(params):
    out, codes = _codes(config, params, batch)
    nll = code_nll(config, params, codes, jax.random.fold_in(rng, 0))
    frames = jnp.maximum(jnp.sum(out['seg'].mask), 1.0)
    per_code = jnp.sum(nll * out['pattern_mask']) / jnp.maximum(jnp.sum(out['pattern_mask']), 1)
    return jnp.sum(nll * out['pattern_mask']) / frames, per_code

  (loss, per_code), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state, grad_norm = common.apply_gradients(state, grads, config.train)
  return state, {'loss': loss, 'code_nll': per_code, 'grad_norm': grad_norm}


def eval_step(config, params, batch, rng=None):
  """Stage 1's sums with the codes' NLL under the learnt prior."""
  del rng  # Deterministic.
  out, codes = _codes(config, params, batch)
  sums = vqvae.eval_sums(stage1_config(config), params['vqvae'], out)
  sums['code_nll_sum'] = jnp.sum(code_nll(config, params, codes) * out['pattern_mask'])
  return sums


def summarize(config, totals):
  return vqvae.summarize(stage1_config(config), totals)


def sample_codes(config, params, rng, num, segments, temperature=1.0, top_k=0, top_p=1.0,
                 forced=None):
  """Codes from the prior, one lax.scan over every pattern of every segment (the carry
  restarts at each segment) -> (codes int32[N, n, P], log p float[N, n, P]).

  forced int32[N, n, P]: codes to clamp instead of drawing (-1 draws); log p is the
  unfiltered prior's, so forcing data scores it like code_nll.
  """
  m = config.model
  prior = make_prior(config)
  patterns = m.vqvae.segment_steps // m.vqvae.pattern_steps
  k = m.vqvae.codebook_size
  zero = LSTMStack(m.prior_hidden, m.prior_layers).zero_carry(num)
  if forced is None:
    forced = jnp.full((num, segments, patterns), -1, jnp.int32)
  forced = jnp.swapaxes(forced.reshape(num, -1), 0, 1)

  def step(state, inputs):
    carry, prev, t = state
    force, key = inputs
    first = t % patterns == 0
    carry = jax.tree.map(lambda z, c: jnp.where(first, z, c), zero, carry)
    prev = jnp.where(first, k, prev)
    logits, carry = prior.apply({'params': params['prior']}, prev, carry,
                                method=CodePrior.step)
    drawn = jax.random.categorical(key, common.filter_logits(logits, temperature, top_k,
                                                             top_p))
    code = jnp.where(force >= 0, force, drawn).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), code[:, None], -1)[:, 0]
    return (carry, code, t + 1), (code, logp)

  state = (zero, jnp.full((num,), k, jnp.int32), jnp.zeros((), jnp.int32))
  _, (codes, logp) = jax.lax.scan(step, state,
                                  (forced, jax.random.split(rng, segments * patterns)))
  shape = (num, segments, patterns)
  return jnp.swapaxes(codes, 0, 1).reshape(shape), jnp.swapaxes(logp, 0, 1).reshape(shape)


def sample(config, params, rng, request):
  """Codes from the prior (request's filters) -> stage 1's decoder -> num_steps frames."""
  s1 = stage1_config(config)
  segs = -(-request.num_steps // s1.model.segment_steps)
  codes, _ = sample_codes(config, params, jax.random.fold_in(rng, 1), request.num_pieces, segs,
                          request.temperature, request.top_k, request.top_p)
  plain = common.SampleRequest(num_pieces=request.num_pieces, num_steps=request.num_steps)
  out = vqvae.decode(s1, params['vqvae'], codes, jax.random.fold_in(rng, 2), plain)
  return {k: v[:, :request.num_steps] for k, v in out.items()}


def encode(config, params, batch, rng=None):
  return vqvae.encode(stage1_config(config), params['vqvae'], batch, rng)


def decode(config, params, z, rng, request):
  return vqvae.decode(stage1_config(config), params['vqvae'], z, rng, request)


def interpolate_latents(config, a, b, num_points):
  return vqvae.interpolate_latents(stage1_config(config), a, b, num_points)
