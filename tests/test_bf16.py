"""model.dtype='bfloat16' in every registered family: the step's matmuls (at least 80% of
them: the LSTMs', dense layers', attention's, forward and backward) take bfloat16 inputs
and accumulate in float32 and the params stay float32 (every family); and a short
run trains (CPU, the family's ':test' config on the chorales; one family per likelihood
kind, the first by name, to keep the suite short): its loss falls, or for a family without
a likelihood (CAPABILITIES.likelihood 'none', e.g. an adversarial pair whose loss is a
critic's estimate, not expected to fall) its losses stay finite and each of its top-level
modules learns."""

import re

import jax
import numpy as np
import pytest

from bach_jax import experiment
from bach_jax import models
from bach_jax import parallel
from bach_jax import train
from bach_jax.data import pipeline
from train_helpers import load_config

NUM_STEPS = 30
# The families whose bf16 run is trained: the first registered of each likelihood kind.
TRAINED = {next(n for n in models.REGISTRY
               if models.get_family(n).CAPABILITIES.likelihood == kind)
           for kind in {models.get_family(n).CAPABILITIES.likelihood for n in models.REGISTRY}}
# A dot_general of the lowered step: '(tensor<..xA>, tensor<..xB>) -> tensor<..xC>'.
DOT = re.compile(r'stablehlo\.dot_general.*:\s*\(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)\s*'
                 r'->\s*tensor<[^>]*x(\w+)>')


@pytest.mark.parametrize('name', sorted(models.REGISTRY))
def test_bfloat16_run_trains(name):
  config = load_config(name, 'test', **{'train.num_steps': NUM_STEPS})
  assert 'dtype' in config.model, f'configs/{name}.py: no model.dtype key'
  config.model.dtype = 'bfloat16'
  base = models.get_family(name).CAPABILITIES.builds_on
  if base:  # The base model's config, as train.init_from would copy it (its params stay
    #   as initialized: the step is what is tested).
    config.model[config.train.init_from_into] = load_config(base, 'test').model
    config.model[config.train.init_from_into].dtype = 'bfloat16'  # A bf16 base model.
  exp = experiment.setup(config)
  family, corpus, mesh = exp.family, exp.corpus, exp.mesh
  batches = pipeline.BatchIterator(
      corpus.splits['train'], batch_size=config.train.batch_size,
      window_steps=config.data.window_steps, hop_steps=config.data.hop_steps, seed=0,
      pad_start=config.data.pad_start, num_voices=corpus.num_voices,
      pad_short=config.data.get('pad_short', False))
  state = jax.jit(lambda rng, batch: family.init(config, rng, batch),
                  out_shardings=parallel.replicated(mesh))(
                      jax.random.key(0), experiment.example_batch(config, corpus.num_voices))
  step = train.make_train_step(family, config, mesh)
  batch = parallel.to_global(next(batches), mesh)

  lowered = step.lower(state, batch, jax.random.key(1))
  dots = DOT.findall(lowered.as_text())
  bf16 = [d for d in dots if d[:2] == ('bf16', 'bf16')]
  assert bf16, f'{name}: no bfloat16 matmul in the train step ({sorted(set(dots))})'
  assert all(out == 'f32' for _, _, out in bf16), f'{name}: bf16 matmuls must accumulate in f32'
  # Not only the LSTMs': dense layers, attention and their gradients too. What may stay
  # float32: a VQ codebook's distances and statistics, a gradient penalty's second order.
  assert len(bf16) >= 0.8 * len(dots), (
      f'{name}: {len(bf16)} of {len(dots)} matmuls in bf16; the others: '
      f'{sorted(set(d for d in dots if d[:2] != ("bf16", "bf16")))}')
  assert {str(p.dtype) for p in jax.tree.leaves(state.params)} == {'float32'}
  if name not in TRAINED:
    return

  step = lowered.compile()  # Traced once, compiled once.
  before = jax.device_get(state.params)
  losses = []
  for _ in range(NUM_STEPS):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
    batch = parallel.to_global(next(batches), mesh)
  assert np.all(np.isfinite(losses)), losses
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  print(f'{name} bfloat16: loss {first:.3f} (steps 1-5) -> {last:.3f} (steps '
        f'{NUM_STEPS - 4}-{NUM_STEPS}); {len(bf16)} of {len(dots)} matmuls in bf16')
  if family.CAPABILITIES.likelihood == 'none':  # Each top-level module learns (a leaf may
    #   not: e.g. a critic's output bias cancels out of a Wasserstein loss).
    after = jax.device_get(state.params)
    moved = {k: any(np.any(a != b) for a, b in zip(jax.tree.leaves(before[k]),
                                                   jax.tree.leaves(after[k])))
             for k in before}
    assert all(moved.values()), (name, moved)
  else:
    assert last < 0.9 * first, (name, losses)
  assert {str(p.dtype) for p in jax.tree.leaves(state.params)} == {'float32'}
