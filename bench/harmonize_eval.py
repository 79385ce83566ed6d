r"""The harmonizer against the causal model on held-out chorales: likelihood, harmonizations,
rewritten spans, speed.

  python -m bench.harmonize_eval --harmonizer=RUN --causal=RUN [--split=test] [--seed=0]
      [--out=DIR]

1. Conditional NLL, nats per frame over every frame of every piece, of alto, tenor and
   bass given the soprano: the harmonizer's exact -log q(A, T, B | the whole soprano)
   (its eval_step), and the causal model's exact -log p(A, T, B | soprano up to t, past)
   from its heads (the soprano slot's term left out), with a bootstrap interval over
   pieces of each and of their difference.
2. Every held-out soprano harmonized once by each model, sampled (temperature 1) and
   greedily (the most likely class at every head), with and without hard parallels
   rules: parallel fifths and octaves per 100 pair transitions (pooled),
   and per frame how often the bass (exact pitch; pitch class) and the chord's set of
   pitch classes agree with Bach's own harmonization of that melody. Baselines for
   agreement: 'lookup', the training split's most frequent bass pitch class and
   pitch-class set for each soprano pitch class (every piece is in C major / C minor),
   which needs no model; and the other model.
3. Every held-out piece of at least 64 frames with its alto rewritten over frames 16..47
   (two bars) given everything else: the harmonizer sees the bars after, the causal
   model (its clamped cells) only the past. The same measures on the span, alto against
   Bach's alto.
4. Speed: a 256-frame (64-beat) melody harmonized, after compiling, median of 5.
"""

import argparse
import collections
import json
import os
import time

import jax
import numpy as np

PARALLELS = 'parallels'


def conditional_nll(model, pieces, causal):
  """Per piece (nats summed over frames, frames) of -log (A, T, B | S)."""
  from bach_jax import evaluate  # pylint: disable=g-import-not-at-top
  from bach_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from bach_jax.models import common, heads, lstm_attn  # pylint: disable=g-import-not-at-top
  config = model.config
  if not causal:
    sums = evaluate.piece_sums(model.family, config, model.params, pieces, 4)
    return sums['nll_sum'], sums['frames']

  @jax.jit
  def per_row(params, batch):
    logits, target = lstm_attn.frame_logits(config, params, batch)
    nll = heads.slot_nlls(logits, target)[..., 1:].sum(-1)  # Every slot but the soprano.
    mask = common.target_mask(batch)
    return jnp_sum(nll * mask), jnp_sum(mask)

  nll, frames = np.zeros(len(pieces)), np.zeros(len(pieces))
  for batch in pipeline.piece_batches(pieces, batch_size=16, pad_start=config.data.pad_start,
                                      num_voices=4):
    index = batch.pop('piece_index')
    a, b = jax.device_get(per_row(model.params, batch))
    for row, i in enumerate(index):
      if i >= 0:
        nll[i], frames[i] = a[row], b[row]
  return nll, frames


def jnp_sum(x):
  return x.sum(axis=-1)


def interval(nll, frames, rng, other=None, b=2000):
  """Mean per frame and its 95% bootstrap interval over pieces (of the difference with
  `other` (nll, frames) on the same pieces, when given)."""
  rows = rng.integers(0, len(nll), (b, len(nll)))
  value = lambda r: nll[r].sum(-1) / frames[r].sum(-1)
  stat = (lambda r: value(r) - other[0][r].sum(-1) / other[1][r].sum(-1)) if other else value
  full = stat(np.arange(len(nll))[None])[0]
  low, high = np.percentile(stat(rows), [2.5, 97.5])
  return float(full), float(low), float(high)


def lookup_tables(train):
  """For each soprano pitch class: the most frequent bass pitch class and chord set."""
  bass, chord = collections.defaultdict(collections.Counter), collections.defaultdict(
      collections.Counter)
  for p in train:
    if p.voices is None or p.voices.shape[1] != 4:
      continue
    for frame in p.voices:
      if frame[0] < 0:
        continue
      s = frame[0] % 12
      if frame[3] >= 0:
        bass[s][frame[3] % 12] += 1
      chord[s][frozenset(int(v) % 12 for v in frame if v >= 0)] += 1
  return ({s: c.most_common(1)[0][0] for s, c in bass.items()},
          {s: c.most_common(1)[0][0] for s, c in chord.items()})


def agreement(made, bach, frames=slice(None)):
  """Per frame (of the frames where Bach's soprano sounds): bass exact, bass pitch class,
  chord pitch-class set equal; plus the frame count."""
  m, b = np.asarray(made)[frames], np.asarray(bach)[frames]
  keep = b[:, 0] >= 0
  m, b = m[keep], b[keep]
  pcs = lambda f: frozenset(int(v) % 12 for v in f if v >= 0)
  return {'bass_exact': int(np.sum(m[:, 3] == b[:, 3])),
          'bass_pc': int(np.sum((m[:, 3] % 12 == b[:, 3] % 12) & (m[:, 3] >= 0) & (b[:, 3] >= 0))),
          'chord_pcs': int(sum(pcs(x) == pcs(y) for x, y in zip(m, b))),
          'alto_exact': int(np.sum(m[:, 1] == b[:, 1])), 'frames': int(len(b))}


def parallels(voice_list):
  """Pooled parallel fifths and octaves per 100 pair transitions."""
  from bach_jax import voice_leading  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()
  for v in voice_list:
    c = voice_leading.voice_leading_counts(np.asarray(v)[None], np.array([len(v)]))
    for k in ('parallel_fifths', 'parallel_octaves', 'pair_transitions'):
      counts[k] += int(np.sum(c[k]))
  den = max(counts['pair_transitions'], 1)
  return (100 * counts['parallel_fifths'] / den, 100 * counts['parallel_octaves'] / den)


def summarize(rows, bach_voices, frames=slice(None)):
  totals = collections.Counter()
  for made, bach in zip(rows, bach_voices):
    totals.update(agreement(made, bach, frames))
  n = max(totals['frames'], 1)
  fifths, octaves = parallels([np.asarray(r)[frames] for r in rows])
  return {'bass_exact': totals['bass_exact'] / n, 'bass_pc': totals['bass_pc'] / n,
          'chord_pcs': totals['chord_pcs'] / n, 'alto_exact': totals['alto_exact'] / n,
          'parallel_fifths': fifths, 'parallel_octaves': octaves, 'frames': n}


def harmonize_all(model, pieces, seed, rules, temperature=1.0):
  out = []
  for i, p in enumerate(pieces):
    made = model.harmonize(p.voices[:, 0], num_pieces=1, seed=seed + i,
                           temperature=temperature, rules=PARALLELS if rules else '')
    out.append(made[0].voices)
  return out


def inpaint_all(model, pieces, seed, span):
  """The alto of each piece rewritten over span given everything else (the causal model:
  its sampler clamps the given cells it reads, the past and the frame's earlier slots)."""
  from bach_jax import conditional, generate  # pylint: disable=g-import-not-at-top
  out = []
  for i, p in enumerate(pieces):
    given = conditional.span_given(p, span, ('alto',))
    if model.family.CAPABILITIES.inpaint:
      out.append(model.inpaint(p, span, ('alto',), seed=seed + i)[0].voices)
      continue
    request = generate.make_request(model.config, 1, given=given, num_voices=4)
    made = generate.sample(model.family, model.config, model.params,
                           jax.random.key(seed + i), request, 4)
    out.append(np.asarray(made['voices'][0]))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--harmonizer', required=True)
  parser.add_argument('--causal', required=True)
  parser.add_argument('--split', default='test')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  import bach_jax  # pylint: disable=g-import-not-at-top
  from bach_jax import experiment  # pylint: disable=g-import-not-at-top
  models = {'harmonizer': bach_jax.load_model(args.harmonizer),
            'causal': bach_jax.load_model(args.causal)}
  corpus = experiment.setup(models['harmonizer'].config).corpus
  pieces = [p for p in corpus.splits[args.split] if p.voices is not None]
  rng = np.random.default_rng(args.seed)
  report = {'pieces': len(pieces), 'split': args.split,
            'steps': {k: m.step for k, m in models.items()}}
  nll = {k: conditional_nll(m, pieces, k == 'causal') for k, m in models.items()}
  report['conditional_nll'] = {k: interval(*v, rng) for k, v in nll.items()}
  report['conditional_nll']['harmonizer - causal'] = interval(*nll['harmonizer'], rng,
                                                              other=nll['causal'])
  print(json.dumps(report['conditional_nll']), flush=True)
  bach = [p.voices for p in pieces]
  bass_table, chord_table = lookup_tables(corpus.splits['train'])
  lookup = []
  for p in pieces:
    v = np.full(p.voices.shape, -1)
    v[:, 0] = p.voices[:, 0]
    for t, s in enumerate(p.voices[:, 0]):
      if s >= 0 and s % 12 in bass_table:
        v[t, 3] = 36 + bass_table[s % 12]  # An octave is irrelevant to the pitch class.
    lookup.append(v)
  report['harmonize'] = {'lookup (bass pitch class, chord set)': summarize(lookup, bach)}
  chord_hits = sum(sum(frozenset(int(x) % 12 for x in f if x >= 0) == chord_table.get(
      f[0] % 12) for f in b if f[0] >= 0) for b in bach)
  report['harmonize']['lookup (bass pitch class, chord set)']['chord_pcs'] = chord_hits / max(
      sum(int(np.sum(b[:, 0] >= 0)) for b in bach), 1)
  for k, m in models.items():
    for rules, temperature in ((False, 1.0), (True, 1.0), (False, 0.0), (True, 0.0)):
      t0 = time.perf_counter()
      made = harmonize_all(m, pieces, args.seed, rules, temperature)
      row = summarize(made, bach)
      row['seconds'] = time.perf_counter() - t0
      name = (f'{k}{" + parallels rules" if rules else ""}'
              f'{", greedy" if temperature == 0 else ""}')
      report['harmonize'][name] = row
      print(name, json.dumps(row), flush=True)
  report['harmonize']['Bach (the reference itself)'] = summarize(bach, bach)
  span, long_pieces = (16, 48), [p for p in pieces if p.num_steps >= 64]
  report['inpaint'] = {'pieces': len(long_pieces), 'span': list(span)}
  for k, m in models.items():
    made = inpaint_all(m, long_pieces, args.seed, span)
    report['inpaint'][k] = summarize(made, [p.voices for p in long_pieces], slice(*span))
    print('inpaint', k, json.dumps(report['inpaint'][k]), flush=True)
  report['inpaint']['Bach'] = summarize([p.voices for p in long_pieces],
                                        [p.voices for p in long_pieces], slice(*span))
  melody = np.tile(pieces[0].voices[:, 0], 8)[:256]
  seconds = {}
  for k, m in models.items():
    m.harmonize(melody, seed=0)  # Compiles.
    times = []
    for _ in range(5):
      t0 = time.perf_counter()
      m.harmonize(melody, seed=1)
      times.append(time.perf_counter() - t0)
    seconds[k] = float(np.median(times))
  report['seconds_256_frame_melody'] = seconds
  print(json.dumps(seconds))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'harmonize_eval.json'), 'w') as f:
      json.dump(report, f, indent=1, default=float)
  print(json.dumps(report, indent=1, default=float))


if __name__ == '__main__':
  main()
