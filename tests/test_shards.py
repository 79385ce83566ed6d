"""The prepared corpus as shards: equal to the pieces in memory, resumable, checked."""

import json
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bach_jax import errors
from bach_jax.data import corpora, pipeline, sources
from bench import lakh_like
from train_helpers import REPO, run_main

FILES = 9
SHARD_FILES = 2  # 9 files -> 5 shards, the last of one file.


def _data(folder, cache, **kw):
  return dict({'source': f'midi_dir:{folder}', 'cache_dir': str(cache), 'workers': 1,
               'shard_files': SHARD_FILES}, **kw)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """9 short Lakh-like files (6-12 s: 2-6 instruments, chords, stuck notes) + a bad one."""
  root = str(tmp_path_factory.mktemp('midi'))
  lakh_like.write_folder(root, FILES, seed=3, seconds=(6, 12))
  with open(os.path.join(root, '000', 'broken.mid'), 'wb') as f:
    f.write(b'MThd not really')
  return root


@pytest.fixture(scope='module')
def corpus(folder, tmp_path_factory):
  return corpora.load_corpus(_data(folder, tmp_path_factory.mktemp('cache')), progress=False)


def _in_memory(folder):
  """The pieces as the preparation's workers make them, never written: name -> piece."""
  data = {'steps_per_quarter': 4, 'transpose': 'tonic', 'min_steps': 16}
  out = {}
  for full, rel in sources.midi_files(folder):
    name, split, piece = sources.midi_file_piece(full, rel, data)
    if split is not None:
      out[name] = piece
  return out


def _assert_same_pieces(a, b):
  assert len(a) == len(b)
  for p, q in zip(a, b):
    np.testing.assert_array_equal(p.roll, q.roll)
    if p.voices is None or q.voices is None:
      assert p.voices is None and q.voices is None
    else:
      np.testing.assert_array_equal(p.voices, q.voices)
      assert q.voices.dtype == np.int16
    assert p.meta == q.meta and p.steps_per_quarter == q.steps_per_quarter


def _assert_same_batches(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_sharded_corpus_equals_the_pieces_in_memory(corpus, folder):
  assert sorted(os.listdir(corpus.cache_path)) == ['index.npz'] + [
      f'shard-{k:05d}.{ext}' for k in range(5) for ext in ('json', 'roll.npy', 'voices.npy')]
  memory = _in_memory(folder)
  assert [name for name, _ in corpus.skipped] == ['000/broken.mid']
  names = [p.meta['file'] for s in corpora.SPLITS for p in corpus.splits[s]]
  assert sorted(names) == sorted(memory) and len(names) == FILES
  for s in corpora.SPLITS:
    split = corpus.splits[s]
    _assert_same_pieces([memory[p.meta['file']] for p in split], list(split))
    np.testing.assert_array_equal(split.lengths, [memory[p.meta['file']].num_steps
                                                  for p in split])
  # Some pieces kept voices, some did not (chords): both kinds went through the shards.
  assert {p.voices is None for p in corpus.splits['train']} == {True, False}
  # The training batches: the same from the shards as from the pieces in memory.
  train = corpus.splits['train']
  args = dict(batch_size=4, window_steps=16, hop_steps=8, seed=1, augment_transpose=3)
  disk, mem = pipeline.BatchIterator(train, **args), pipeline.BatchIterator(list(train), **args)
  assert disk.fingerprint == mem.fingerprint
  n = 2 * disk.batches_per_epoch + 1
  _assert_same_batches([next(disk) for _ in range(n)], [next(mem) for _ in range(n)])
  _assert_same_batches(pipeline.piece_batches(corpus.splits['valid'], batch_size=2),
                       pipeline.piece_batches(list(corpus.splits['valid']), batch_size=2))


def test_summary_says_which_pieces_kept_voices_and_why_not(corpus):
  text = corpus.summary()
  pieces = [p for s in corpora.SPLITS for p in corpus.splits[s]]
  with_voices = sum(p.voices is not None for p in pieces)
  assert f'pieces with voices: {with_voices} of {len(pieces)}' in text, text
  chords = sum(p.meta.get('voices_reason') == 'an instrument plays chords' for p in pieces)
  assert chords and f'  {chords:>5}  without: an instrument plays chords' in text, text
  assert 'skipped: 1 files' in text, text


@pytest.mark.parametrize('order', ['exact', 'index_shuffle'])
def test_resume_mid_epoch_is_bit_exact(corpus, folder, monkeypatch, order):
  if order == 'index_shuffle':  # The order of corpora too big for a permutation in memory.
    monkeypatch.setattr(pipeline, 'EXACT_SHUFFLE_WINDOWS', 0)
  args = dict(batch_size=4, window_steps=16, hop_steps=8, seed=5, augment_transpose=2)
  it = pipeline.BatchIterator(corpus.splits['train'], **args)
  assert it.exact_shuffle == (order == 'exact')
  for _ in range(it.batches_per_epoch + 2):  # Into the second epoch.
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # As a checkpoint keeps it.
  expected = [next(it) for _ in range(it.batches_per_epoch)]
  # A new process: the corpus opened again from its folder, the state restored.
  reopened = corpora.load_corpus(_data(folder, os.path.dirname(corpus.cache_path)),
                                 progress=False)
  assert reopened.cache_hit
  again = pipeline.BatchIterator(reopened.splits['train'], **args)
  again.set_state(state)
  _assert_same_batches(expected, [next(again) for _ in range(len(expected))])


@pytest.mark.parametrize('n', [1, 2, 3, 17, 1000, 4099])
def test_index_shuffle_is_a_permutation(n):
  order = pipeline.IndexShuffle(n, [0, 1, 2])(np.arange(n))
  np.testing.assert_array_equal(np.sort(order), np.arange(n))
  if n >= 17:
    assert not np.array_equal(order, np.arange(n))
    assert not np.array_equal(order, pipeline.IndexShuffle(n, [0, 1, 3])(np.arange(n)))


def test_two_processes_read_disjoint_halves_of_the_epoch(corpus, monkeypatch):
  monkeypatch.setattr(pipeline, 'EXACT_SHUFFLE_WINDOWS', 0)
  args = dict(batch_size=4, window_steps=16, hop_steps=8, seed=2, augment_transpose=2)
  one = pipeline.BatchIterator(corpus.splits['train'], **args)
  two = [pipeline.BatchIterator(corpus.splits['train'], process_index=k, process_count=2,
                                **args) for k in range(2)]
  for _ in range(one.batches_per_epoch + 1):
    whole, halves = next(one), [next(it) for it in two]
    for k in whole:  # Process k's rows are rows [2k, 2k + 2) of the global batch.
      np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))


_KILL_AFTER_TWO_SHARDS = r'''
import os, signal, sys
from bach_jax.data import corpora, shards
write, written = shards.write_shard, []
def write_then_die(*args):
  write(*args)
  written.append(1)
  if len(written) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
shards.write_shard = write_then_die
corpora.load_corpus({"source": sys.argv[1], "cache_dir": sys.argv[2], "workers": 1,
                     "shard_files": 2}, progress=False)
'''


def test_a_killed_preparation_keeps_its_finished_shards(folder, corpus, tmp_path, caplog):
  cache = tmp_path / 'cache'
  proc = subprocess.run([sys.executable, '-c', _KILL_AFTER_TWO_SHARDS, f'midi_dir:{folder}',
                         str(cache)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  [built] = [os.path.join(cache, d) for d in os.listdir(cache) if not d.endswith('.lock')]
  assert 'index.npz' not in os.listdir(built)
  kept = {k: os.stat(os.path.join(built, f'shard-0000{k}.roll.npy')).st_mtime_ns
          for k in (0, 1)}
  with caplog.at_level(logging.INFO):
    resumed = corpora.load_corpus(_data(folder, cache), progress=False)
  assert '2 of 5 shards already prepared, preparing the other 3' in caplog.text
  assert {k: os.stat(os.path.join(built, f'shard-0000{k}.roll.npy')).st_mtime_ns
          for k in (0, 1)} == kept  # Not prepared again.
  for s in corpora.SPLITS:
    _assert_same_pieces(list(corpus.splits[s]), list(resumed.splits[s]))


def _copy_cache(corpus, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  cache = tmp_path / 'cache'
  shutil.copytree(os.path.dirname(corpus.cache_path), cache)
  return cache, os.path.join(cache, os.path.basename(corpus.cache_path))


def test_a_damaged_shard_is_named_in_one_line_and_prepare_rebuilds_it(
    corpus, folder, tmp_path, caplog):
  cache, built = _copy_cache(corpus, tmp_path)
  # Bytes changed in place (same size): opening works, reading the piece does not.
  roll = os.path.join(built, 'shard-00002.roll.npy')
  with open(roll, 'r+b') as f:
    f.seek(-40, os.SEEK_END)
    flipped = bytes(255 - b for b in f.read(40))
    f.seek(-40, os.SEEK_END)
    f.write(flipped)
  damaged = corpora.load_corpus(_data(folder, cache), progress=False)
  with pytest.raises(errors.CorpusError, match=r'shard-00002\.roll\.npy: damaged shard '
                     r'\(piece \d+ fails its checksum\)'):
    for s in corpora.SPLITS:
      list(damaged.splits[s])
  # Truncated: the corpus does not open; the error names the file and the cure.
  with open(roll, 'r+b') as f:
    f.truncate(200)
  with pytest.raises(errors.CorpusError) as e:
    corpora.load_corpus(_data(folder, cache), progress=False)
  message = str(e.value)
  assert '\n' not in message and message.startswith(f'{roll}: damaged shard (200 bytes, ')
  assert 'python -m bach_jax.data prepare --source=midi_dir:' in message
  # `prepare` (repair=True) rebuilds that shard alone, and the pieces are whole again.
  others = os.stat(os.path.join(built, 'shard-00001.roll.npy')).st_mtime_ns
  with caplog.at_level(logging.WARNING):
    repaired = corpora.load_corpus(_data(folder, cache), progress=False, repair=True)
  assert 'rebuilding it' in caplog.text
  assert os.stat(os.path.join(built, 'shard-00001.roll.npy')).st_mtime_ns == others
  for s in corpora.SPLITS:
    _assert_same_pieces(list(corpus.splits[s]), list(repaired.splits[s]))


def test_a_run_on_a_damaged_shard_stops_cleanly_and_keeps_its_workdir(
    corpus, folder, tmp_path):
  cache, built = _copy_cache(corpus, tmp_path)
  workdir = tmp_path / 'run'
  flags = ['--config=configs/lstm.py:test', f'--workdir={workdir}',
           f'--config.data.source=midi_dir:{folder}', f'--config.data.cache_dir={cache}',
           f'--config.data.shard_files={SHARD_FILES}', '--config.train.num_final_samples=0',
           '--config.train.batch_size=4', '--config.train.eval_batch_size=4']
  proc = run_main(*flags, '--config.train.num_steps=4', '--config.train.eval_every=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = {p: os.path.getsize(os.path.join(workdir, p)) for p in ('metrics.jsonl',)}
  checkpoints = sorted(os.listdir(workdir / 'checkpoints'))
  os.truncate(os.path.join(built, 'shard-00003.voices.npy'), 64)
  proc = run_main(*flags, '--config.train.num_steps=8', '--config.train.eval_every=4')
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == errors.CorpusError.exit_code and 'Traceback' not in proc.stderr
  assert err[-1].startswith(f'error: {built}/shard-00003.voices.npy: damaged shard'), err[-3:]
  assert sorted(os.listdir(workdir / 'checkpoints')) == checkpoints
  assert {p: os.path.getsize(os.path.join(workdir, p)) for p in before} == before


def test_a_full_disk_during_preparation_is_one_line_and_keeps_the_finished_shards(
    folder, tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  from bach_jax.data import shards  # pylint: disable=g-import-not-at-top
  write, calls = shards.write_shard, []

  def write_until_full(dest, k, *args):
    calls.append(k)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, 'No space left on device',
                    os.path.join(dest, f'shard-{k:05d}.roll.npy'))
    write(dest, k, *args)

  monkeypatch.setattr(shards, 'write_shard', write_until_full)
  with pytest.raises(errors.CorpusError) as e:
    corpora.load_corpus(_data(folder, tmp_path / 'cache'), progress=False)
  assert str(e.value).endswith('shard-00001.roll.npy: cannot write the prepared corpus (No '
                               'space left on device); free space there or set data.cache_dir')
  [built] = [d for d in (tmp_path / 'cache').iterdir() if d.is_dir()]
  assert (built / 'shard-00000.json').exists() and not (built / 'index.npz').exists()
