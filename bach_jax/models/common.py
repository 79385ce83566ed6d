"""What every model family shares: the train state, the optimizer, the losses."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """A pytree: everything a checkpoint holds of the model side of a run."""
  step: jax.Array  # int32 scalar.
  params: Any
  opt_state: Any
  ema_params: Any = None  # Moving average of params (train.ema_decay > 0), else None.
  model_state: Any = None  # What a family updates outside the optimizer (e.g. codebook
  #   statistics), else None.

  def eval_params(self):
    """The params to evaluate, sample and keep as "best": the average if there is one."""
    return self.params if self.ema_params is None else self.ema_params

  def with_params(self, params):
    """The state with new params (e.g. another run's, to fine-tune); where a moving
    average is kept, it restarts from them. Step and optimizer state unchanged."""
    ema = None if self.ema_params is None else jax.tree.map(jnp.copy, params)
    return self.replace(params=params, ema_params=ema)


def make_optimizer(train_config):
  """Adam(W) with warmup, optional cosine decay and global-norm clipping."""
  t = train_config
  warmup = max(int(t.warmup_steps), 0)
  if t.lr_schedule == 'cosine':
    # warmup_steps = 0: the full rate from the first step (a warmup of one step would
    # make the first update zero).
    schedule = optax.warmup_cosine_decay_schedule(
        t.learning_rate if warmup == 0 else 0.0, t.learning_rate,
        warmup_steps=max(warmup, 1), decay_steps=max(int(t.num_steps), warmup + 1),
        end_value=0.1 * t.learning_rate)
  elif warmup == 0:
    schedule = optax.constant_schedule(t.learning_rate)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, t.learning_rate, warmup),
         optax.constant_schedule(t.learning_rate)], [warmup])
  chain = []
  if t.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(t.grad_clip_norm))
  chain.append(optax.adamw(schedule, weight_decay=t.weight_decay))
  tx = optax.chain(*chain)
  frozen = [k for k in str(t.frozen).split(',') if k]
  if not frozen:
    return tx
  # train.frozen: those top-level params get no update and no optimizer state.
  labels = lambda params: {k: 'frozen' if k in frozen else 'trained' for k in params}
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)


def create_state(params, train_config, model_state=None):
  tx = make_optimizer(train_config)
  ema = jax.tree.map(jnp.copy, params) if train_config.ema_decay else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=ema, model_state=model_state)


def apply_gradients(state, grads, train_config):
  """One optimizer update (and the params' moving average); -> (state, gradient norm).

  The average's decay ramps up as min(ema_decay, (1 + step) / (10 + step)), so
  early steps do not leave the initial weights in it for long.
  """
  tx = make_optimizer(train_config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(train_config.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
  return new_state, optax.global_norm(grads)


def nll_train_step(nll_fn, config, state, batch, rng):
  """One optimizer step on the mean next-frame NLL of the target frames that count.

  nll_fn(config, params, batch, dropout_rng) -> float[B, T-1], as in the exact
  families (lstm, lstm_attn). -> (state, {'loss', 'grad_norm'}).
  """
  def loss_fn(params):
    nll, mask = nll_fn(config, params, batch, jax.random.fold_in(rng, 0)), target_mask(batch)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  state, grad_norm = apply_gradients(state, grads, train_config=config.train)
  return state, {'loss': loss, 'grad_norm': grad_norm}


def nll_eval_sums(nll, batch):
  """eval_step's sums of an exact family: nll float[B, T-1] -> {'nll_sum', 'frames'}."""
  mask = target_mask(batch)
  return {'nll_sum': jnp.sum(nll * mask), 'frames': jnp.sum(mask)}


def summarize_frame_nll(config, totals):
  """summarize() of an exact family: {'frame_nll': nats per frame, 'frames'}."""
  del config
  frames = float(totals['frames'])
  return {'frame_nll': float(totals['nll_sum']) / max(frames, 1.0), 'frames': int(frames)}


def bernoulli_nll(logits, targets):
  """-log p(targets) under independent Bernoullis, summed over the last axis.

  logits: float[..., K]; targets: bool/float[..., K] -> float[...] in nats.
  """
  targets = targets.astype(logits.dtype)
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


def start_flags(batch):
  """bool[B, T]: True on start frames, the silent frames before a piece.

  The pipeline marks them in batch['start']; a batch without that key is taken
  to begin with one start frame (frame 0), as piece_batches and sampling do.
  """
  if 'start' in batch:
    return batch['start']
  b, t = batch['roll'].shape[:2]
  return jnp.broadcast_to(jnp.arange(t) == 0, (b, t))


def frame_features(roll, start):
  """Input features of frames: the 88 keys and a start flag -> float[..., 89].

  The flag is what tells the start of a piece from an internal rest; without
  it both are the silent frame, and a model that has seen long rests opens its
  samples with long silences.
  """
  return jnp.concatenate([roll.astype(jnp.float32), start[..., None].astype(jnp.float32)], -1)


def next_frame_targets(batch):
  """Splits a batch into inputs float[B, T-1, 89] and targets bool[B, T-1, 88].

  Every frame but the first is predicted from the frames before it; the
  pipeline puts `pad_start` start frames (silent, flagged) before each piece, so
  a piece's first frame is predicted from the start frame (the model's start state).
  """
  roll = batch['roll']
  return frame_features(roll[:, :-1], start_flags(batch)[:, :-1]), roll[:, 1:]


def target_mask(batch):
  """float32[B, T-1]: the next-frame targets that count, for every family's loss.

  Real rows (batch['mask'], training batches) and real frames
  (batch['frame_mask'][:, 1:]: not the start frames, not the padding after a
  piece's end); either key may be absent.
  """
  b, t = batch['roll'].shape[:2]
  mask = jnp.ones((b, t - 1), jnp.float32)
  if 'mask' in batch:
    mask = mask * batch['mask'][:, None]
  if 'frame_mask' in batch:
    mask = mask * batch['frame_mask'][:, 1:]
  return mask


@flax.struct.dataclass
class SampleRequest:
  """What to sample. Ints/floats are static (part of the compiled function);
  arrays are traced, so new primers or melodies of the same shape reuse it.

  primer: bool[N, P, 88] frames to continue (None: start from silence).
  primer_voices: int[N, P, V] their voices, for voice models (REST = -1).
  melody: int[N, P + num_steps] soprano pitch (REST = -1) to clamp (harmonization).
  given: int[N, P + num_steps, V] each voice's pitch (REST = -1) where given, -2 where
    generated (CAPABILITIES.inpaint).
  latent_temperature: scale of the prior's standard deviation (latent families).
  """
  num_pieces: int = flax.struct.field(pytree_node=False, default=4)
  num_steps: int = flax.struct.field(pytree_node=False, default=64)
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  top_k: int = flax.struct.field(pytree_node=False, default=0)
  top_p: float = flax.struct.field(pytree_node=False, default=1.0)
  latent_temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  primer: Any = None
  primer_voices: Any = None
  melody: Any = None
  given: Any = None


NEG_LOGIT = -1e9  # Logit of a class sampling must not pick (finite: no NaN).


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Temperature, then top-k, then top-p (nucleus) on float[..., C] (static settings)."""
  logits = logits / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_LOGIT, logits)
  if top_p < 1.0:
    srt = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(srt, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # The first always stays.
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < thresh, NEG_LOGIT, logits)
  return logits
