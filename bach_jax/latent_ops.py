"""Reconstruction and interpolation for the latent families (CAPABILITIES.latent).

Everything goes through the family's encode / decode / interpolate_latents, so it
serves the VAE (z = the posterior mean of each segment) and any later latent
family alike. Decoding for reconstruction is greedy (request.top_k = 1): the
most likely output given z, so a reconstruction is a function of z alone.
"""

import os

import jax
import numpy as np

from bach_jax import pieces as pieces_lib
from bach_jax import plotting
from bach_jax.data import pianoroll
from bach_jax.data import pipeline
from bach_jax.errors import LatentError
from bach_jax.models import family as family_lib
from bach_jax.models.common import SampleRequest


def require_latent(family):
  if not family.CAPABILITIES.latent:
    raise LatentError(f'the {family_lib.name_of(family)} family has no latent space '
                      '(no encode / decode)')


def encode_pieces(family, config, params, pieces, num_voices=None, batch_size=16):
  """-> list (one per piece) of z [n_i, ...]: the latent of each of its segments."""
  require_latent(family)
  fn = family_lib.jitted(family, 'encode', config)
  out = []
  for batch in pipeline.piece_batches(pieces, batch_size=batch_size,
                                      pad_start=config.data.pad_start, num_voices=num_voices):
    enc = jax.device_get(fn(params, batch, jax.random.key(0)))
    for row, index in enumerate(batch['piece_index']):
      if index >= 0:
        out.append(np.asarray(enc['z'][row][enc['segment_mask'][row]]))
  return out


def decode(family, config, params, z, num_steps=None, seed=0, greedy=True, temperature=1.0):
  """z [N, n, ...] -> family output dict, cut to num_steps frames (greedy by default)."""
  require_latent(family)
  request = SampleRequest(num_pieces=int(z.shape[0]), num_steps=int(num_steps or 1),
                          temperature=float(temperature), top_k=1 if greedy else 0)
  fn = family_lib.jitted(family, 'decode', config)
  out = jax.device_get(fn(params, np.asarray(z), jax.random.key(seed), request))
  return {k: np.asarray(v)[:, :num_steps] if num_steps else np.asarray(v)
          for k, v in out.items()}


def reconstruct(family, config, params, pieces, num_voices=None, voice_names=None):
  """Encodes pieces and decodes them greedily -> (reconstructed PianoRolls, stats).

  stats: key_accuracy (share of the 88 keys x frames that agree), note_precision
  and note_recall (sounding keys), frame_accuracy (whole frames equal), over all
  frames of all pieces.
  """
  zs = encode_pieces(family, config, params, pieces, num_voices)
  n = max(z.shape[0] for z in zs)
  padded = np.stack([np.concatenate([z, np.zeros((n - z.shape[0],) + z.shape[1:], z.dtype)])
                     for z in zs])
  lengths = [p.roll.shape[0] for p in pieces]
  out = decode(family, config, params, padded, max(lengths))
  spq = pieces[0].steps_per_quarter
  recon = pieces_lib.to_pianorolls(out, spq, voice_names, lengths, name='decoded')
  orig = np.concatenate([p.roll for p in pieces]).astype(bool)
  made = np.concatenate([r.roll for r in recon]).astype(bool)
  hits = np.sum(orig & made)
  stats = {'key_accuracy': float(np.mean(orig == made)),
           'note_precision': float(hits / max(np.sum(made), 1)),
           'note_recall': float(hits / max(np.sum(orig), 1)),
           'frame_accuracy': float(np.mean(np.all(orig == made, axis=-1))),
           'frames': int(orig.shape[0]), 'pieces': len(pieces)}
  return recon, stats


def interpolate(family, config, params, piece_a, piece_b, num_points=5, num_voices=None,
                voice_names=None):
  """Decodes num_points latents from piece_a's to piece_b's (greedy) -> list of PianoRoll.

  Both pieces are cut to the shorter one's segments; the first point decodes
  piece_a's own latent (its reconstruction), the last piece_b's.
  """
  if num_points < 2:
    raise LatentError(f'config.sample.interpolation_points: need >= 2, got {num_points}')
  za, zb = encode_pieces(family, config, params, [piece_a, piece_b], num_voices)
  n = min(za.shape[0], zb.shape[0])
  path = family.interpolate_latents(config, za[:n], zb[:n], num_points)
  steps = min(piece_a.roll.shape[0], piece_b.roll.shape[0])
  out = decode(family, config, params, path, steps)
  return pieces_lib.to_pianorolls(out, piece_a.steps_per_quarter, voice_names,
                                  [steps] * num_points, name='decoded')


def reconstruct_to_files(model, corpus, outdir):
  """--mode=reconstruct: the first sample.num_pieces pieces of sample.split, each as
  reconstruct_I.png (original above, reconstruction below) and reconstruct_I.mid.

  -> stats of reconstruct() plus the bound's -log p(x | z = mean) per frame
  (recon_frame_nll_at_mean) on those pieces, and the written paths.
  """
  config = model.config
  split = config.sample.split
  pieces = corpus.splits[split][:config.sample.num_pieces]
  if not pieces:
    raise LatentError(f'config.sample.split={split!r}: no pieces to reconstruct')
  recon, stats = model.reconstruct(pieces)
  scores = model.score(pieces)
  stats['recon_frame_nll_at_mean'] = scores.get('recon_frame_nll_at_mean')
  stats.update(split=split, step=model.step, files=[])
  os.makedirs(outdir, exist_ok=True)
  for i, (orig, made) in enumerate(zip(pieces, recon)):
    base = os.path.join(outdir, f'reconstruct_{i}')
    plotting.plot_pianoroll_rows(base + '.png', [orig, made], [
        f'{split} piece {i}: {orig.meta.get("file", "")}', 'reconstruction (greedy from z)'],
                                 orig.steps_per_quarter)
    pianoroll.to_midi(made, base + '.mid', qpm=config.sample.qpm)
    stats['files'] += [base + '.png', base + '.mid']
  return stats


def interpolate_to_files(model, corpus, outdir):
  """--mode=interpolate: sample.interpolate = 'A,B' (MIDI paths or split:INDEX) ->
  interpolation.mid (the points in sequence, a bar of rest between) and
  interpolation.png (one row per point)."""
  config = model.config
  specs = [x for x in config.sample.interpolate.split(',') if x]
  if len(specs) != 2:
    raise LatentError(f'config.sample.interpolate={config.sample.interpolate!r}: expected '
                      "'A,B' (two MIDI paths or split:INDEX)")
  a, b = (pieces_lib.load_piece(x, model.steps_per_quarter, corpus, config.sample.split)
          for x in specs)
  points = model.interpolate(a, b, config.sample.interpolation_points)
  os.makedirs(outdir, exist_ok=True)
  base = os.path.join(outdir, 'interpolation')
  spq = model.steps_per_quarter
  pianoroll.to_midi(pieces_lib.concatenate(points, gap_steps=4 * spq), base + '.mid',
                    qpm=config.sample.qpm)
  n = len(points)
  titles = [f'{specs[0]} (reconstruction)'] + [f'{k / (n - 1):.2f}' for k in range(1, n - 1)]
  plotting.plot_pianoroll_rows(base + '.png', points,
                               titles + [f'{specs[1]} (reconstruction)'], spq)
  return {'points': n, 'steps': int(points[0].roll.shape[0]), 'step': model.step,
          'files': [base + '.mid', base + '.png']}
