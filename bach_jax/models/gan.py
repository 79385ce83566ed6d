"""Wasserstein GAN over piano-rolls: the paper's adversarial family.

  generator  noise (one vector per piece, plus one per step if model.step_noise_dim)
             -> the shared scan LSTM stack -> per step and track, 88 key logits ->
             sigmoid probabilities, optionally binarized with straight-through
             gradients (model.binarize: 'none' feeds probabilities, 'threshold' p > 0.5,
             'bernoulli' a draw; BinaryMuseGAN), since a critic tells continuous rolls
             from binary ones by that alone.
  tracks     model.tracks: 1 (the roll), 2 (bass and treble: the lowest voice and the
             others on a voiced corpus, else keys below / from middle C), or 4 (S, A, T,
             B, one roll per voice; a voiced corpus).
  critic     over the [T, tracks * 88] roll (frames after a piece's end zeroed):
             'conv' (strided temporal convolutions, written as matmuls over windows, with
             layer norm, no batch norm: it would break the gradient penalty) or 'bilstm'
             (the shared scan LSTM both ways); one scalar per piece.
  objective  'wgan_gp' (gradient penalty model.gp_weight on random interpolates; Adam
             1e-4, betas 0.5 / 0.9) or 'wgan_clip' (critic weights clipped to
             +-model.clip after every update; RMSProp 5e-5).

One train_step is the whole alternation: model.n_critic critic updates (a lax.scan,
each with fresh noise against the step's real batch), then one generator update;
params = {'generator', 'critic'} with an optimizer state each. model_state counts the
updates (the tests count them). No likelihood: evaluation (evaluate.py) scores 64
samples' musical metrics against the split's pieces, and that distance picks the
best checkpoint.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bach_jax.models import codebook
from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import frame_decoder
from bach_jax.models import gan_config
from bach_jax.models.frame_slots import LOWEST_PITCH, NUM_KEYS
from bach_jax.models.layers import LSTMLayer, LSTMStack, dense

CAPABILITIES = family.Capabilities(likelihood='none', select_by='metric_distance',
                                   voices=True, learns_by='-wasserstein')

validate = gan_config.validate
check_corpus = gan_config.check_corpus
summarize = gan_config.summarize
MIDDLE_C = 60


class Generator(nn.Module):
  """(z float[N, Dz], z_steps float[N, T, Ds]) -> logits float[N, T, tracks, 88]."""
  tracks: int
  hidden: int = 256
  layers: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z, z_steps):
    x = jnp.broadcast_to(z[:, None], z_steps.shape[:2] + z.shape[-1:])
    x = jnp.concatenate([x, z_steps], -1)
    h, _ = LSTMStack(self.hidden, self.layers, dtype=self.dtype)(dense(self.hidden, self.dtype)(x))
    return dense(self.tracks * NUM_KEYS, self.dtype)(h).reshape(h.shape[:2] + (self.tracks, NUM_KEYS))


def windows(x, width, stride):
  """x: float[N, T, C] -> the 'SAME'-padded windows of a width-`width` temporal convolution
  with stride `stride`, flattened: float[N, ceil(T / stride), width * C].

  The critic's convolutions are these windows times a dense kernel: XLA:CPU ran the
  convolution's kernel gradient at 0.6 GFLOP/s (bench/family_steps: 43% of a GAN step),
  a matmul runs at the matmul peak. Built from strided slices (their gradient is a pad).
  """
  t = x.shape[1]
  out = -(-t // stride)
  pad = max((out - 1) * stride + width - t, 0)
  x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
  span = stride * (out - 1) + 1
  return jnp.concatenate([x[:, j:j + span:stride] for j in range(width)], axis=-1)


class Critic(nn.Module):
  """rolls float[N, T, tracks, 88], mask float[N, T] -> float[N]."""
  kind: str = 'conv'
  hidden: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, rolls, mask):
    x = rolls.reshape(rolls.shape[:2] + (-1,)) * mask[..., None]
    if self.kind == 'bilstm':
      lengths = jnp.sum(mask, -1).astype(jnp.int32)
      _, h = frame_decoder.bidirectional(LSTMLayer(self.hidden, dtype=self.dtype),
                                         LSTMLayer(self.hidden, dtype=self.dtype), x, lengths)
      return dense(1, self.dtype)(h)[:, 0]
    m = mask[..., None]
    for features, stride in ((self.hidden, 1), (self.hidden, 2), (2 * self.hidden, 2)):
      x = nn.leaky_relu(nn.LayerNorm()(dense(features, self.dtype)(windows(x, 4, stride))), 0.2)
      m = m[:, ::stride]
      x = x * m
    pooled = jnp.sum(x, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    return dense(1, self.dtype)(pooled)[:, 0]


def _models(config):
  m = config.model
  dtype = jnp.dtype(m.dtype)
  return (Generator(m.tracks, m.generator_hidden, m.generator_layers, dtype),
          Critic(m.critic, m.critic_hidden, dtype))


def optimizer(config):
  """The critic's and the generator's optimizer (one each), by objective."""
  m, lr = config.model, config.train.learning_rate
  if m.objective == 'wgan_clip':
    return optax.rmsprop(lr)
  return optax.adam(lr, b1=m.adam_b1, b2=m.adam_b2)


def real_tracks(config, batch):
  """Target frames of a batch as tracks: (float[B, T-1, tracks, 88], mask float[B, T-1])."""
  roll, mask = batch['roll'][:, 1:], common.target_mask(batch)
  k = config.model.tracks
  if k == 1:
    tracks = roll[:, :, None]
  elif 'voices' in batch and batch['voices'].shape[-1] == 4:
    onehot = jax.nn.one_hot(batch['voices'][:, 1:] - LOWEST_PITCH, NUM_KEYS, dtype=bool)
    tracks = onehot if k == 4 else jnp.stack([jnp.any(onehot[:, :, :3], 2), onehot[:, :, 3]], 2)
  else:  # Two tracks without voices: treble from middle C up, bass below.
    low = jnp.arange(NUM_KEYS) < MIDDLE_C - LOWEST_PITCH
    tracks = jnp.stack([roll & ~low, roll & low], 2)
  return tracks.astype(jnp.float32) * mask[..., None, None], mask


def noise(config, rng, num, steps):
  m = config.model
  k1, k2 = jax.random.split(rng)
  return (jax.random.normal(k1, (num, m.noise_dim)),
          jax.random.normal(k2, (num, steps, m.step_noise_dim)))


def generate(config, gparams, rng, num, steps, binarize=None):
  """-> probabilities (binarized per model.binarize, straight-through) [N, T, tracks, 88]."""
  gen, _ = _models(config)
  z, zs = noise(config, jax.random.fold_in(rng, 0), num, steps)
  p = jax.nn.sigmoid(gen.apply({'params': gparams}, z, zs))
  mode = binarize or config.model.binarize
  if mode == 'threshold':
    return codebook.straight_through(p, (p > 0.5).astype(p.dtype))
  if mode == 'bernoulli':
    hard = jax.random.bernoulli(jax.random.fold_in(rng, 1), p).astype(p.dtype)
    return codebook.straight_through(p, hard)
  return p


def gradient_penalty(critic_fn, real, fake, mask, rng):
  """mean over pieces of (|d critic / d x|_2 - 1)^2 at random interpolates (Gulrajani)."""
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1))
  mixed = eps * real + (1 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x, mask)))(mixed)
  norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, -1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def clip_fraction(params, bound):
  leaves = jax.tree.leaves(params)
  at = sum(jnp.sum(jnp.abs(p) >= bound * (1 - 1e-6)) for p in leaves)
  return at / sum(p.size for p in leaves)


def init(config, rng, example_batch):
  """-> TrainState: params/opt_state {'generator', 'critic'}; model_state update counts."""
  gen, critic = _models(config)
  t = example_batch['roll'].shape[1] - 1
  z, zs = noise(config, rng, 1, t)
  gparams = gen.init(jax.random.fold_in(rng, 1), z, zs)['params']
  cparams = critic.init(jax.random.fold_in(rng, 2),
                        jnp.zeros((1, t, config.model.tracks, NUM_KEYS)),
                        jnp.ones((1, t)))['params']
  params = {'generator': gparams, 'critic': cparams}
  if config.model.objective == 'wgan_clip':
    params['critic'] = jax.tree.map(lambda p: jnp.clip(p, -config.model.clip, config.model.clip),
                                    cparams)
  tx = optimizer(config)
  counts = {'critic_updates': jnp.zeros((), jnp.int32),
            'generator_updates': jnp.zeros((), jnp.int32)}
  return common.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state={k: tx.init(v) for k, v in params.items()},
                           model_state=counts)


def train_step(config, state, batch, rng):
  """n_critic critic updates, then one generator update."""
  m = config.model
  gen_model, critic_model = _models(config)
  tx = optimizer(config)
  real, mask = real_tracks(config, batch)
  n, steps = real.shape[:2]
  critic_fn = lambda cp: lambda x, mk: critic_model.apply({'params': cp}, x, mk)

  def critic_update(carry, key):
    cparams, copt, count = carry
    fake = jax.lax.stop_gradient(
        generate(config, state.params['generator'], key, n, steps)) * mask[..., None, None]

    def loss_fn(cp):
      d_real = critic_fn(cp)(real, mask)
      d_fake = critic_fn(cp)(fake, mask)
      w = jnp.mean(d_real) - jnp.mean(d_fake)
      gp = (gradient_penalty(critic_fn(cp), real, fake, mask, jax.random.fold_in(key, 3))
            if m.objective == 'wgan_gp' else jnp.zeros(()))
      return -w + m.gp_weight * gp, (w, gp)

    (loss, (w, gp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(cparams)
    updates, copt = tx.update(grads, copt, cparams)
    cparams = optax.apply_updates(cparams, updates)
    if m.objective == 'wgan_clip':
      cparams = jax.tree.map(lambda p: jnp.clip(p, -m.clip, m.clip), cparams)
    return (cparams, copt, count + 1), (loss, w, gp)

  keys = jax.random.split(jax.random.fold_in(rng, 0), m.n_critic)
  (cparams, copt, ccount), (closs, w, gp) = jax.lax.scan(
      critic_update, (state.params['critic'], state.opt_state['critic'],
                      state.model_state['critic_updates']), keys)

  def gen_loss(gp_):
    fake = generate(config, gp_, jax.random.fold_in(rng, 1), n, steps) * mask[..., None, None]
    return -jnp.mean(critic_fn(cparams)(fake, mask))

  gloss, ggrads = jax.value_and_grad(gen_loss)(state.params['generator'])
  updates, gopt = tx.update(ggrads, state.opt_state['generator'], state.params['generator'])
  gparams = optax.apply_updates(state.params['generator'], updates)
  state = state.replace(
      step=state.step + 1, params={'generator': gparams, 'critic': cparams},
      opt_state={'generator': gopt, 'critic': copt},
      model_state={'critic_updates': ccount,
                   'generator_updates': state.model_state['generator_updates'] + 1})
  metrics = {'loss': closs[-1], 'generator_loss': gloss, 'wasserstein': w[-1],
             'grad_norm': optax.global_norm(ggrads)}
  if m.objective == 'wgan_gp':
    metrics['gradient_penalty'] = gp[-1]
  else:
    metrics['clip_fraction'] = clip_fraction(cparams, m.clip)
  return state, metrics


def eval_step(config, params, batch, rng=None):
  """The critic's mean score of real whole pieces (the sample-based distance that ranks
  checkpoints is added by evaluate.py: this family has no likelihood)."""
  del rng
  _, critic_model = _models(config)
  real, mask = real_tracks(config, batch)
  rows = jnp.any(mask > 0, -1).astype(jnp.float32)
  scores = critic_model.apply({'params': params['critic']}, real, mask)
  return {'frames': jnp.sum(mask), 'pieces': jnp.sum(rows), 'critic_real_sum': jnp.sum(scores * rows)}


def sample(config, params, rng, request):
  """-> {'roll': bool[N, T, 88] (+ 'voices' int32[N, T, 4] with 4 tracks)}.

  Keys are on where p > 0.5 (model.binarize 'bernoulli': drawn); with 4 tracks each
  voice takes its most likely key, or rests when none passes. request's top-k / top-p
  do not apply; its temperature divides the logits.
  """
  gen, _ = _models(config)
  n, t = request.num_pieces, request.num_steps
  z, zs = noise(config, jax.random.fold_in(rng, 0), n, t)
  p = jax.nn.sigmoid(gen.apply({'params': params['generator']}, z, zs) / request.temperature)
  if config.model.binarize == 'bernoulli':
    on = jax.random.bernoulli(jax.random.fold_in(rng, 1), p)
  else:
    on = p > 0.5
  if config.model.tracks != 4:
    return {'roll': jnp.any(on, axis=2)}
  best = jnp.argmax(p, -1)
  sounding = jnp.take_along_axis(on, best[..., None], -1)[..., 0]
  voices = jnp.where(sounding, best + LOWEST_PITCH, -1).astype(jnp.int32)
  roll = jnp.any(jax.nn.one_hot(jnp.where(sounding, best, -1), NUM_KEYS, dtype=bool), 2)
  return {'roll': roll, 'voices': voices}
