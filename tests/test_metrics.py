"""Tests for bach_jax.metrics: hand-made rolls, music21 as the voice-leading oracle, sets.

Through `metrics`, which re-exports bach_jax.voice_leading and bach_jax.set_compare.
"""

import functools
import json
import math
import time

import numpy as np
import pytest

from bach_jax import metrics
from bach_jax.data import pianoroll
from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, REST

C_MAJOR_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


def _roll(notes, num_steps):
  """[(pitch, start, end)] -> bool[num_steps, 88]."""
  roll = np.zeros((num_steps, NUM_KEYS), dtype=bool)
  for pitch, start, end in notes:
    roll[start:end, pitch - LOWEST_PITCH] = True
  return roll


def _batch(*rolls):
  """Rolls bool[T_i, 88] -> (bool[N, T, 88], int[N]); padding frames full of notes.

  The padding is noise on purpose: the metrics must ignore frames beyond a length.
  """
  lengths = np.array([r.shape[0] for r in rolls])
  batch = np.ones((len(rolls), lengths.max() + 8, NUM_KEYS), dtype=bool)
  for i, r in enumerate(rolls):
    batch[i, :r.shape[0]] = r
  return batch, lengths


def _voices_batch(*voice_lists):
  """Lists of frames [[S, A, T, B], ...] -> (int[N, T, 4] padded with REST, int[N])."""
  lengths = np.array([len(v) for v in voice_lists])
  batch = np.full((len(voice_lists), lengths.max(), 4), REST, dtype=np.int64)
  for i, v in enumerate(voice_lists):
    batch[i, :len(v)] = v
  return batch, lengths


def _harte_centroid(weights):
  """Reference 6-D tonal centroid of a chroma {pitch class: weight}, from the paper's formula."""
  total = sum(weights.values())
  centroid = np.zeros(6)
  for pc, w in weights.items():
    for d, (radius, angle) in enumerate(((1, 7 * math.pi / 6), (1, 3 * math.pi / 2),
                                         (0.5, 2 * math.pi / 3))):
      centroid[2 * d] += w * radius * math.sin(pc * angle) / total
      centroid[2 * d + 1] += w * radius * math.cos(pc * angle) / total
  return centroid


def test_c_major_scale():
  scale = _roll([(p, 4 * i, 4 * i + 4) for i, p in enumerate(C_MAJOR_SCALE)], 32)
  m = metrics.roll_metrics(*_batch(scale), steps_per_quarter=4)
  expected_histogram = np.zeros(12)
  expected_histogram[[0, 2, 4, 5, 7, 9, 11]] = [2 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
  np.testing.assert_allclose(m['pitch_class_histogram'][0], expected_histogram)
  assert m['pitch_class_entropy'][0] == pytest.approx(2.75)  # 2/8 * 2 + 6 * 1/8 * 3 bits.
  assert m['scale_consistency'][0] == 1.0
  assert m['used_pitch_classes'][0] == 4.0  # C D E F | G A B C.
  assert m['polyphony'][0] == 1.0
  assert m['polyphony_rate'][0] == 0.0
  assert m['note_density'][0] == 8 / 32
  assert m['mean_note_length'][0] == 1.0
  assert m['qualified_note_rate'][0] == 1.0
  assert m['pitch_range'][0] == 12.0
  assert m['empty_beat_rate'][0] == 0.0
  assert m['repetition'][0] == 0.0
  assert np.isnan(m['tonal_distance'][0])  # One note per frame: no upper voices.


def test_out_of_scale_notes_lower_scale_consistency():
  notes = [(p, 4 * i, 4 * i + 4) for i, p in enumerate(C_MAJOR_SCALE)]
  notes += [(61, 32, 36), (66, 36, 40)]  # C#, F#.
  m = metrics.roll_metrics(*_batch(_roll(notes, 40)), steps_per_quarter=4)
  # C major misses C# and F#, G major misses F and C#, D major misses C, C and F.
  assert m['scale_consistency'][0] == pytest.approx(8 / 10)


def test_held_chord():
  chord = _roll([(60, 0, 32), (64, 0, 32), (67, 0, 32)], 32)
  m = metrics.roll_metrics(*_batch(chord), steps_per_quarter=4)
  assert m['polyphony'][0] == 3.0
  assert m['polyphony_rate'][0] == 1.0
  assert m['note_density'][0] == 3 / 32  # One note per key.
  assert m['mean_note_length'][0] == 8.0
  assert m['repetition'][0] == 1.0
  assert m['used_pitch_classes'][0] == 3.0
  assert m['pitch_range'][0] == 7.0
  assert m['scale_consistency'][0] == 1.0
  expected = np.linalg.norm(_harte_centroid({0: 1.0}) - _harte_centroid({4: 1.0, 7: 1.0}))
  assert m['tonal_distance'][0] == pytest.approx(expected)
  assert expected > 0.1


def test_note_lengths_and_qualified_notes_scale_with_the_grid():
  # Notes of 1, 2, 3 and 4 frames on four keys, with a gap after each.
  notes = [(60, 0, 1), (62, 2, 4), (64, 5, 8), (65, 9, 13)]
  at4 = metrics.roll_metrics(*_batch(_roll(notes, 16)), steps_per_quarter=4)
  assert at4['qualified_note_rate'][0] == 2 / 4  # >= 3 frames.
  assert at4['mean_note_length'][0] == pytest.approx(10 / 4 / 4)
  at2 = metrics.roll_metrics(*_batch(_roll(notes, 16)), steps_per_quarter=2)
  assert at2['qualified_note_rate'][0] == 3 / 4  # >= ceil(1.5) = 2 frames.
  at1 = metrics.roll_metrics(*_batch(_roll(notes, 16)), steps_per_quarter=1)
  assert at1['qualified_note_rate'][0] == 1.0


def test_repeated_note_is_one_note_and_empty_beats():
  # 4 frames of C4 (a "repeated" note is one run), then a silent beat, then D4 for 1 frame.
  roll = _roll([(60, 0, 4), (62, 8, 9)], 12)
  m = metrics.roll_metrics(*_batch(roll), steps_per_quarter=4)
  assert m['note_density'][0] == 2 / 12
  assert m['empty_beat_rate'][0] == 1 / 3
  assert m['polyphony_rate'][0] == 0.0


def test_empty_piece_and_padding():
  silent = np.zeros((20, NUM_KEYS), dtype=bool)
  chord = _roll([(60, 0, 32), (64, 0, 32), (67, 0, 32)], 32)
  m = metrics.evaluate_set(*_batch(silent, chord), steps_per_quarter=4)
  for name in ('pitch_class_entropy', 'scale_consistency', 'polyphony', 'mean_note_length',
               'qualified_note_rate', 'pitch_range', 'tonal_distance'):
    assert np.isnan(m[name][0]), name
  assert np.isnan(m['pitch_class_histogram'][0]).all()
  assert m['empty_beat_rate'][0] == 1.0
  assert m['note_density'][0] == 0.0
  assert m['used_pitch_classes'][0] == 0.0
  assert m['repetition'][0] == 1.0  # Silent frames equal silent frames.
  assert m['polyphony'][1] == 3.0  # The noise in the padding was ignored.
  assert m['pitch_range'][1] == 7.0
  zero_length = metrics.roll_metrics(np.ones((1, 8, NUM_KEYS), bool), [0], 4)
  assert all(np.isnan(v).all() for v in zero_length.values())


# Exactly one parallel fifth (tenor-bass, frame 0 -> 1) and one crossing (frame 2: T above A).
PARALLEL_AND_CROSSING = [[72, 64, 55, 48], [72, 64, 57, 50], [72, 60, 62, 50]]


def test_parallel_fifth_and_voice_crossing():
  voices, lengths = _voices_batch(PARALLEL_AND_CROSSING)
  counts = metrics.voice_leading_counts(voices, lengths)
  assert counts['parallel_fifths'][0] == 1
  assert counts['voice_crossings'][0] == 1
  assert counts['pair_transitions'][0] == 10  # 5 pairs involve a moving voice, twice.
  for name in ('parallel_octaves', 'hidden_fifths', 'hidden_octaves', 'spacing',
               'out_of_range', 'large_leaps'):
    assert counts[name][0] == 0, name
  rates = metrics.voice_leading(voices, lengths)
  assert rates['parallel_fifths'][0] == pytest.approx(10.0)
  assert rates['voice_crossing'][0] == pytest.approx(100 / 18)  # 6 pairs x 3 frames.


def test_voices_from_roll_sorts_pitches():
  voices, _ = _voices_batch(PARALLEL_AND_CROSSING)
  roll = np.stack([pianoroll.voices_to_roll(v) for v in voices])
  roll[0, 1, 40] = True  # A fifth note: that frame gets no voices.
  guessed = metrics.voices_from_roll(roll)
  np.testing.assert_array_equal(guessed[0, 0], [72, 64, 55, 48])
  np.testing.assert_array_equal(guessed[0, 1], [REST] * 4)
  np.testing.assert_array_equal(guessed[0, 2], [72, 62, 60, 50])  # The crossing is lost.
  counts = metrics.voice_leading_counts(metrics.voices_from_roll(roll[:, [0, 2]]), [2])
  assert counts['voice_crossings'][0] == 0


def test_large_leap_spacing_and_range():
  voices, lengths = _voices_batch([[64, 60, 55, 48], [76, 60, 55, 48], [62, 60, 55, 48]])
  counts = metrics.voice_leading_counts(voices, lengths)
  assert counts['large_leaps'][0] == 1  # 76 -> 62 (14); 64 -> 76 is an octave, allowed.
  assert counts['voice_moves'][0] == 2
  assert counts['spacing'][0] == 1  # 76 - 60 = 16 > 12.
  low, _ = _voices_batch([[82, 60, 55, 39]])
  assert metrics.voice_leading_counts(low, [1])['out_of_range'][0] == 2


def test_hidden_intervals_need_a_soprano_leap():
  hidden_octave = [[67, 64, 62, 53], [72, 64, 62, 60]]  # S leaps 5 into an octave with B.
  hidden_fifth = [[69, 64, 57, 45], [71, 64, 57, 52]]  # S steps 2 into a 12th with B.
  voices, lengths = _voices_batch(hidden_octave, hidden_fifth)
  default = metrics.voice_leading_counts(voices, lengths)
  assert default['hidden_octaves'].tolist() == [1, 0]
  assert default['hidden_fifths'].tolist() == [0, 0]
  any_motion = metrics.voice_leading_counts(voices, lengths, soprano_leap=1)
  assert any_motion['hidden_octaves'].tolist() == [1, 0]
  assert any_motion['hidden_fifths'].tolist() == [0, 1]


# ------------------------------------------------------------------------ music21 oracle


@functools.lru_cache(maxsize=None)
def _music21_quartet(u0, u1, l0, l1):
  """music21's verdicts on one upper/lower pair moving u0 -> u1, l0 -> l1 (MIDI pitches)."""
  from music21 import note, voiceLeading  # pylint: disable=g-import-not-at-top
  q = voiceLeading.VoiceLeadingQuartet(note.Note(u0), note.Note(u1), note.Note(l0), note.Note(l1))
  # Ours counts a diminished fifth moving to a fifth in similar motion as a hidden
  # fifth; music21 calls it generically parallel and counts neither (module docstring).
  unequal_fifths = (q.similarMotion() and q.vIntervals[0].simpleName == 'd5'
                    and q.vIntervals[1].simpleName == 'P5')
  return {'parallel_fifths': q.parallelFifth(),
          'parallel_octaves': q.parallelUnisonOrOctave(),
          'hidden_fifths': q.hiddenFifth() or unequal_fifths,
          'hidden_octaves': q.hiddenOctave(), 'voice_crossing': q.voiceCrossing()}


def _music21_counts(voices, soprano_leap):
  """Counts of one piece's int[T, 4] voices by music21, on the transitions ours counts."""
  counts = dict.fromkeys(('parallel_fifths', 'parallel_octaves', 'hidden_fifths',
                          'hidden_octaves', 'voice_crossings', 'pair_transitions'), 0)
  v = [[int(p) for p in frame] for frame in voices]
  for upper in range(4):
    for lower in range(upper + 1, 4):
      for prev, cur in zip(v[:-1], v[1:]):
        u0, u1, l0, l1 = prev[upper], cur[upper], prev[lower], cur[lower]
        if REST in (u0, u1, l0, l1) or (u0 == u1 and l0 == l1):
          continue
        verdict = _music21_quartet(u0, u1, l0, l1)
        counts['pair_transitions'] += 1
        counts['parallel_fifths'] += verdict['parallel_fifths']
        counts['parallel_octaves'] += verdict['parallel_octaves']
        if (upper, lower) == (0, 3) and abs(u1 - u0) >= soprano_leap:
          counts['hidden_fifths'] += verdict['hidden_fifths']
          counts['hidden_octaves'] += verdict['hidden_octaves']
      for frame in v:  # A frame as a quartet that does not move: crossed or not.
        u, l = frame[upper], frame[lower]
        if REST not in (u, l):
          counts['voice_crossings'] += _music21_quartet(u, u, l, l)['voice_crossing']
  return counts


def _assert_counts_match(voices, lengths, soprano_leap):
  ours = metrics.voice_leading_counts(voices, lengths, soprano_leap)
  found = []
  for i, length in enumerate(lengths):
    oracle = _music21_counts(voices[i, :length], soprano_leap)
    assert {k: int(ours[k][i]) for k in oracle} == oracle, (i, soprano_leap)
    found.append(oracle)
  return found


def test_voice_leading_matches_music21_on_chorales(chorales):
  pieces = [pianoroll.from_pretty_midi(pm, 4, voices=[0, 1, 2, 3]) for _, pm in chorales]
  _, lengths, voices = metrics.pad_pieces(pieces)
  for soprano_leap in (1, metrics.SOPRANO_LEAP):
    found = _assert_counts_match(voices, lengths, soprano_leap)
    for (name, _), counts in zip(chorales, found):
      print(f'{name} soprano_leap={soprano_leap}: {counts}')
  assert sum(c['pair_transitions'] for c in found) > 1000  # Not a vacuous check.
  assert sum(c['hidden_octaves'] + c['hidden_fifths'] for c in found) > 0


# Two-frame [S, A, T, B] pieces on white keys, each an edge case of the rules (S-B pair).
EDGE_CASES = {
    'parallel unisons': [[60, 72, 67, 60], [62, 72, 67, 62]],
    'unison to octave, similar': [[60, 72, 67, 60], [74, 72, 67, 62]],
    'octave to unison, similar': [[72, 65, 64, 60], [57, 65, 64, 57]],
    'anti-parallel octaves': [[72, 67, 64, 60], [74, 67, 64, 50]],
    'anti-parallel fifths': [[67, 64, 62, 60], [69, 64, 62, 50]],
    'fifth to twelfth': [[67, 64, 62, 60], [81, 64, 62, 62]],
    'octave to fifteenth': [[72, 67, 64, 60], [86, 67, 64, 62]],
    'diminished fifth to fifth': [[65, 64, 62, 59], [67, 64, 62, 60]],
    'augmented fourth to fifth': [[59, 57, 55, 53], [64, 57, 55, 57]],
}


def test_voice_leading_edge_cases_match_music21():
  voices, lengths = _voices_batch(*EDGE_CASES.values())
  _assert_counts_match(voices, lengths, soprano_leap=1)
  _assert_counts_match(voices, lengths, soprano_leap=metrics.SOPRANO_LEAP)
  counts = metrics.voice_leading_counts(voices, lengths, soprano_leap=1)
  by_case = {name: {k: int(v[i]) for k, v in counts.items()}
             for i, name in enumerate(EDGE_CASES)}
  for name in ('parallel unisons', 'anti-parallel octaves', 'octave to fifteenth'):
    assert by_case[name]['parallel_octaves'] == 1, name
  for name in ('anti-parallel fifths', 'fifth to twelfth'):
    assert by_case[name]['parallel_fifths'] == 1, name
  for name in ('unison to octave, similar', 'octave to unison, similar'):
    assert by_case[name]['hidden_octaves'] == 1, name
    assert by_case[name]['parallel_octaves'] == 0, name
  for name in ('diminished fifth to fifth', 'augmented fourth to fifth'):
    assert by_case[name]['hidden_fifths'] == 1, name


def _diatonic_walks(rng, num_pieces, num_steps):
  """int[N, T, 4] random walks on the white keys (spelled alike by music21 and by ear)."""
  white = np.array([p for p in range(36, 90) if p % 12 in (0, 2, 4, 5, 7, 9, 11)])
  degree = np.tile(np.array([28, 24, 20, 14]), (num_pieces, 1))  # Around G5, B4, D4, F3.
  frames = []
  for _ in range(num_steps):  # Builds test data; the metrics have no loop over time.
    moves = rng.choice([-7, -4, -2, -1, 0, 0, 0, 1, 2, 4, 7], size=degree.shape)
    degree = np.clip(degree + moves, 0, white.size - 1)
    frames.append(white[degree])
  voices = np.stack(frames, axis=1)
  voices[rng.random(voices.shape) < 0.03] = REST
  return voices


def test_voice_leading_matches_music21_on_random_walks():
  voices = _diatonic_walks(np.random.default_rng(0), 3, 150)
  lengths = np.array([150, 120, 150])
  for soprano_leap in (1, metrics.SOPRANO_LEAP):
    found = _assert_counts_match(voices, lengths, soprano_leap)
  assert sum(c['parallel_fifths'] for c in found) >= 5  # The walks do produce each event.
  assert sum(c['parallel_octaves'] for c in found) >= 5
  assert sum(c['hidden_fifths'] for c in found) >= 1
  assert sum(c['hidden_octaves'] for c in found) >= 1
  assert sum(c['voice_crossings'] for c in found) >= 5


# ------------------------------------------------------------------------ sets


def _random_set(rng, num_pieces, num_steps=64, low=48, high=76):
  """A random 4-voice set: (rolls bool[N, T, 88], lengths int[N], voices int[N, T, 4])."""
  voices = np.sort(rng.integers(low, high, size=(num_pieces, num_steps, 4)), axis=2)[..., ::-1]
  voices = np.repeat(voices[:, ::2], 2, axis=1)  # Notes of 2 frames.
  lengths = rng.integers(num_steps // 2, num_steps + 1, size=num_pieces)
  rolls = np.stack([pianoroll.voices_to_roll(v) for v in voices])
  return rolls, lengths, voices


def test_set_compared_with_itself():
  rolls, lengths, voices = _random_set(np.random.default_rng(1), 24)
  rolls[0] = False  # An empty piece (NaN metrics) must not break the comparison.
  reference = metrics.evaluate_set(rolls, lengths, 4, voices)
  result = metrics.compare(reference, reference)
  json.dumps(result, allow_nan=False)
  assert result['distance'] == 0.0
  assert result['diversity_ratio'] == pytest.approx(1.0)
  assert not result['collapsed']
  for name, entry in result['metrics'].items():
    assert entry['overlap'] == pytest.approx(1.0, abs=1e-9), name
    assert entry['kl'] == pytest.approx(0.0, abs=1e-9), name
  rolls, lengths, voices = _random_set(np.random.default_rng(2), 24, low=60, high=90)
  shifted = metrics.evaluate_set(rolls, lengths, 4, voices)
  other = metrics.compare(shifted, reference)
  assert other['distance'] > 0.5
  assert other['metrics']['pitch_class_histogram']['overlap'] < 1.0
  assert other['metrics']['parallel_fifths']['overlap'] < 0.999


def test_summarize():
  m = {'a': np.array([1.0, 3.0, np.nan]), 'h': np.array([[0.5, 0.5], [1.0, 0.0], [np.nan] * 2])}
  summary = metrics.summarize(m)
  assert summary['a'] == (2.0, 1.0)
  assert summary['h'] == ([0.75, 0.25], [0.25, 0.25])
  assert metrics.summarize({'x': np.array([np.nan])})['x'] == (None, None)


def test_collapsed_set_is_flagged():
  rolls, lengths, voices = _random_set(np.random.default_rng(3), 20)
  reference = metrics.evaluate_set(rolls, lengths, 4, voices)
  copies = metrics.evaluate_set(np.repeat(rolls[:1], 8, axis=0), np.repeat(lengths[:1], 8), 4)
  assert metrics.diversity_ratio(copies, reference) == pytest.approx(0.0, abs=1e-9)
  assert metrics.is_collapsed(copies, reference)
  assert metrics.compare(copies, reference)['collapsed']
  rolls, lengths, voices = _random_set(np.random.default_rng(4), 8)
  varied = metrics.evaluate_set(rolls, lengths, 4, voices)
  assert 0.5 < metrics.diversity_ratio(varied, reference) < 2.0
  assert not metrics.is_collapsed(varied, reference)


def test_speed_64_pieces_of_256_steps():
  rolls, lengths, voices = _random_set(np.random.default_rng(5), 64, num_steps=256)
  lengths[:] = 256
  metrics.evaluate_set(rolls[:2], lengths[:2], 4)  # Warm-up.
  start = time.perf_counter()
  with_voices = metrics.evaluate_set(rolls, lengths, 4, voices)
  middle = time.perf_counter()
  from_roll = metrics.evaluate_set(rolls, lengths, 4)
  end = time.perf_counter()
  print(f'evaluate_set 64 x 256: {middle - start:.3f} s with voices, '
        f'{end - middle:.3f} s with voices_from_roll')
  assert np.isfinite(with_voices['parallel_fifths']).all()
  assert np.isfinite(from_roll['polyphony']).all()
  assert end - start < 10.0  # Sanity only; the measured time is printed.


def test_metrics_re_exports_the_split_modules():
  from bach_jax import set_compare, voice_leading  # pylint: disable=g-import-not-at-top
  for name in ('summarize', 'compare', 'diversity', 'diversity_ratio', 'is_collapsed',
               'overlap_and_kl', 'pair_distances', 'Z_CAP', 'COLLAPSE_RATIO'):
    assert getattr(metrics, name) is getattr(set_compare, name), name
  for name in ('voice_leading', 'voice_leading_counts', 'voices_from_roll', 'SOPRANO_LEAP',
               'VOICE_RANGES', 'VOICE_LEADING_RATES'):
    assert getattr(metrics, name) is getattr(voice_leading, name), name
