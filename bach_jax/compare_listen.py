"""Hearing the report: audio clips of every run and of Bach, and a blind listening test.

`write_clips` renders a few samples of every run and a few held-out Bach pieces for
report.html (audio/). `make_test` writes listen.html's material: excerpts of the same
length (every set's pieces cut to `excerpt_steps` frames, rendered with the same
instrument, named by a random id so a file name tells nothing), and pairs in a seeded
random order, each a model excerpt against a Bach excerpt ("which is Bach?") or two
families' excerpts ("which sounds more like Bach?"), the sides drawn at random. What
each clip is goes to listen_key.json, beside the page, which the page never reads.

`aggregate(answer files, key)`: per family, the rate at which listeners took its
excerpt for Bach's (50%: they could not tell), and its rate of wins against the other
families, each with a Wilson 95% interval: `python -m bach_jax.compare
--listening=A.json,B.json --out=REPORT_DIR` (the folder holding listen_key.json).
"""

import hashlib
import json
import math
import os

import numpy as np

from bach_jax import pieces as pieces_lib
from bach_jax import plotting
from bach_jax.data import pianoroll
from bach_jax.errors import CompareError
from bach_jax.plotting import plt

BACH = 'Bach'
KEY = 'listen_key.json'


def _slug(label):
  return ''.join(c if c.isalnum() else '_' for c in label).strip('_') or 'run'


def _render(piece, path, qpm, instrument):
  from bach_jax import audio  # pylint: disable=g-import-not-at-top
  audio.write_wav(path, pianoroll.to_midi(piece, qpm=qpm,
                                          program=audio.INSTRUMENTS[instrument]), instrument)


def write_clips(out, sets, per_set=3, qpm=80.0, instrument='organ'):
  """out/audio/<set>_<i>.wav and .png for the first `per_set` pieces of every set
  ({label: [PianoRoll]}, Bach's among them) -> {label: [(wav, png) relative paths]}."""
  folder = os.path.join(out, 'audio')
  os.makedirs(folder, exist_ok=True)
  clips = {}
  for label, pieces in sets.items():
    clips[label] = []
    for i, piece in enumerate(pieces[:per_set]):
      base = os.path.join('audio', f'{_slug(label)}_{i}')
      _render(piece, os.path.join(out, base + '.wav'), qpm, instrument)
      plotting.plot_pianoroll(os.path.join(out, base + '.png'), piece.roll, piece.voices,
                              piece.steps_per_quarter, title=f'{label} {i}',
                              voice_names=piece.meta.get('voice_names'))
      clips[label].append((base + '.wav', base + '.png'))
  return clips


def _pair_plan(families, num_pairs, rng):
  """num_pairs (kind, a, b) of sources: alternately a family against Bach and two
  families against each other (the latter only with 2 families or more)."""
  versus = [(f, g) for i, f in enumerate(families) for g in families[i + 1:]]
  plan = []
  while len(plan) < num_pairs:
    for f in families:
      plan.append(('bach', f, BACH))
      if versus and len(plan) < num_pairs:
        plan.append(('families',) + versus[(len(plan) // 2) % len(versus)])
  plan = plan[:num_pairs]
  rng.shuffle(plan)
  return plan


def make_test(out, sets, bach, num_pairs=24, seed=0, excerpt_steps=64, qpm=80.0,
              instrument='organ'):
  """The listening test's clips (out/clips/), key (out/listen_key.json) -> the page's
  pairs [{'id', 'a', 'b', 'question'}] and the test's id. sets: {family label:
  [PianoRoll]}; bach: [PianoRoll]; each excerpt is a piece's first excerpt_steps frames
  (every piece used at most once where there are enough)."""
  rng = np.random.default_rng(seed)
  pools = {label: list(ps) for label, ps in sets.items()}
  pools[BACH] = list(bach)
  used = {label: 0 for label in pools}
  folder = os.path.join(out, 'clips')
  os.makedirs(folder, exist_ok=True)
  ids = rng.permutation(10 * num_pairs + 10)
  test_id = hashlib.sha256(json.dumps([seed, sorted(sets), num_pairs, excerpt_steps]).encode()
                          ).hexdigest()[:12]  # Names nothing the listener could read.
  pairs, key = [], {}

  def clip(label):
    pool = pools[label]
    piece = pool[used[label] % len(pool)]
    used[label] += 1
    name = f'clips/clip_{ids[sum(used.values())]:04d}.wav'
    excerpt = pieces_lib.cut_pieces([piece], excerpt_steps)[0]
    _render(excerpt, os.path.join(out, name), qpm, instrument)
    return name

  for n, (kind, first, second) in enumerate(_pair_plan(sorted(sets), num_pairs, rng)):
    if rng.random() < 0.5:
      first, second = second, first
    pid = f'p{n + 1:02d}'
    a, b = clip(first), clip(second)
    question = ('Which one is Bach?' if kind == 'bach' else
                'Which one sounds more like Bach?')
    pairs.append({'id': pid, 'a': a, 'b': b, 'question': question})
    key[pid] = {'kind': kind, 'a': first, 'b': second}
  with open(os.path.join(out, KEY), 'w') as f:
    json.dump({'test_id': test_id, 'seed': seed, 'excerpt_steps': excerpt_steps,
               'instrument': instrument, 'pairs': key}, f, indent=1)
  return pairs, test_id


def wilson(successes, n, z=1.96):
  """(rate, low, high): the Wilson 95% interval of a binomial rate (None for n = 0)."""
  if n == 0:
    return None
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return p, max(0.0, centre - half), min(1.0, centre + half)


def aggregate(answer_files, key_path):
  """Answers of several listeners -> per family: 'taken_for_bach' (the model excerpt
  chosen as Bach's) and 'wins' (chosen over another family's), each count, total and
  (rate, low, high); and the listeners."""
  if not os.path.exists(key_path):
    raise CompareError(f'{key_path}: no listening-test key (write the report first)')
  with open(key_path) as f:
    key = json.load(f)
  counts, listeners = {}, []
  for path in answer_files:
    try:
      with open(path) as f:
        answers = json.load(f)
      test_id, chosen = answers['test_id'], answers['answers']
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CompareError(f'{path}: not a listening-test answer file ({e})') from None
    if test_id != key['test_id']:
      raise CompareError(f'{path}: answers to test {test_id!r}, not to {key["test_id"]!r}')
    listeners.append(answers.get('listener') or os.path.basename(path))
    for item in chosen:
      pair = key['pairs'].get(item.get('pair'))
      if pair is None or item.get('choice') not in ('a', 'b'):
        continue
      picked = pair[item['choice']]
      other = pair['b' if item['choice'] == 'a' else 'a']
      if pair['kind'] == 'bach':
        family = pair['a'] if pair['b'] == BACH else pair['b']
        c = counts.setdefault(family, {'taken_for_bach': [0, 0], 'wins': [0, 0]})
        c['taken_for_bach'][0] += picked == family
        c['taken_for_bach'][1] += 1
      else:
        for fam in (picked, other):
          c = counts.setdefault(fam, {'taken_for_bach': [0, 0], 'wins': [0, 0]})
          c['wins'][0] += fam == picked
          c['wins'][1] += 1
  results = {fam: {k: {'count': v[0], 'total': v[1], 'rate': wilson(*v)} for k, v in c.items()}
             for fam, c in sorted(counts.items())}
  return {'test_id': key['test_id'], 'listeners': listeners, 'families': results}


def plot(path, results):
  """listening.png: per family, the two rates with their intervals; 50% dashed."""
  fams = list(results['families'])
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(fams) + 2), 4))
  width = 0.38
  for j, (key, label) in enumerate((('taken_for_bach', 'taken for Bach'),
                                    ('wins', 'preferred over another family'))):
    rates = [results['families'][f][key]['rate'] for f in fams]
    x = np.arange(len(fams)) + (j - 0.5) * width
    y = [r[0] if r else np.nan for r in rates]
    err = [[r[0] - r[1] if r else 0 for r in rates], [r[2] - r[0] if r else 0 for r in rates]]
    ax.bar(x, y, width, yerr=err, capsize=4, label=label, color=f'C{j}')
  ax.axhline(0.5, color='k', ls='--', lw=1)
  ax.set_xticks(np.arange(len(fams)), fams)
  ax.set_ylim(0, 1)
  ax.set_ylabel('rate (95% Wilson interval)')
  ax.set_title(f'listening test: {len(results["listeners"])} listeners')
  ax.legend(fontsize=8)
  fig.tight_layout()
  plotting.savefig(fig, path)


def write_results(out, answer_files, log=print):
  """listening.json, listening.md and listening.png in `out` (which holds the key)."""
  results = aggregate(answer_files, os.path.join(out, KEY))
  with open(os.path.join(out, 'listening.json'), 'w') as f:
    json.dump(results, f, indent=1)
  lines = [f'# Listening test ({len(results["listeners"])} listeners: '
           f'{", ".join(results["listeners"])})', '',
           '| family | taken for Bach | preferred over another family |', '|---|---|---|']
  cell = lambda e: ('-' if not e['rate'] else
                    f'{e["count"]}/{e["total"]} = {e["rate"][0]:.0%} '
                    f'[{e["rate"][1]:.0%}, {e["rate"][2]:.0%}]')
  for fam, e in results['families'].items():
    lines.append(f'| {fam} | {cell(e["taken_for_bach"])} | {cell(e["wins"])} |')
  lines += ['', '50% taken for Bach: listeners could not tell the family from Bach. '
            'Intervals: Wilson 95%.', '', '![listening](listening.png)', '']
  with open(os.path.join(out, 'listening.md'), 'w') as f:
    f.write('\n'.join(lines))
  plot(os.path.join(out, 'listening.png'), results)
  log(f'wrote listening.json, listening.md, listening.png to {out}')
  return results
