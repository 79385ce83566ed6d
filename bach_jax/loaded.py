"""bach_jax.load_model: a trained run in a notebook, whatever its family.

LoadedModel samples, scores and writes pieces; harmonizes a melody and rewrites a span
(the harmonizer; lstm_attn the soprano only); encodes, decodes, reconstructs and
interpolates (the latent families). Everything goes through the family contract and
generate.py's sampling; the run's checkpoint comes from experiment.restore_run.
"""

import jax
import ml_collections
import numpy as np

from bach_jax import conditional
from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import latent_ops
from bach_jax import parallel
from bach_jax import pieces as pieces_lib
from bach_jax import voice_leading
from bach_jax.data import pianoroll
from bach_jax.errors import SampleError
from bach_jax.generate import (check_melody, check_pieces, check_request_supported,
                               check_sample_args, make_request, sample, voice_names)
from bach_jax.models import family as family_lib


class LoadedModel:
  """A trained run (bach_jax.load_model, an example there): samples, scores and writes
  pieces without knowing its config.

  Pieces in and out are bach_jax.data.PianoRoll: roll bool[T, 88] (key k is MIDI
  pitch 21 + k), voices int16[T, V] (MIDI pitch per voice, -1 rest; S, A, T, B) or
  None, steps_per_quarter (frames per quarter note) and meta (a dict);
  bach_jax.data.from_midi(path, steps_per_quarter=model.steps_per_quarter) reads one.
  Every family: sample, score, write. Latent families only (VAE, VQ-VAE:
  family.CAPABILITIES.latent): encode, decode, reconstruct, interpolate; the others
  raise latent_ops.LatentError. Options a family lacks (primer, melody: the LSTMs;
  rules: lstm_attn) raise SampleError / ConfigError naming them before anything runs.

  Attributes: config (the run's ConfigDict), family (its models/ module), params, step
  (the checkpoint's), num_voices (the corpus's voices, or None), steps_per_quarter.
  """

  def __init__(self, config, family, params, step, meta):
    self.config, self.family, self.params, self.step = config, family, params, step
    self.num_voices = meta.get('num_voices')
    self.steps_per_quarter = meta.get('steps_per_quarter') or config.data.steps_per_quarter

  def sample(self, num_pieces=4, num_steps=64, temperature=1.0, top_k=0, top_p=1.0, seed=0,
             primer=None, melody=None, rules=None, rule_penalty=None):
    """New pieces -> list of num_pieces PianoRoll (a new shape compiles first).

    num_steps: frames per piece (steps_per_quarter to a beat); temperature (> 0;
    < 1 safer), top_k (0: off), top_p (1.0: off) filter each output distribution;
    the same seed, arguments and checkpoint give the same pieces. A latent family
    draws z from its prior (scaled by config.sample.latent_temperature). primer: a
    PianoRoll or MIDI path to continue; the pieces start with its P frames (P +
    num_steps in all). melody: int[T] soprano MIDI pitches (-1 rest) or a MIDI path
    (its top voice) to harmonize; the pieces then have T frames (num_steps unused).
    rules, rule_penalty: voice-leading rules ('parallels,crossing', 'all'; '' = off;
    docs/rules.md) and nats per violation (inf: hard); None = config.sample's; each
    piece's meta then holds 'rule_fallbacks' (choices where every pitch broke a rule).
    temperature=0 samples greedily: the most likely class at every head. A piece whose
    first frame is silent is drawn again (config.sample.resample_silent). Bad
    arguments raise SampleError naming them, before anything compiles.
    """
    check_sample_args(num_pieces, num_steps, temperature, top_k, top_p, seed)
    if temperature == 0:
      temperature, top_k = 1.0, 1
    config = self._config_with_rules(rules, rule_penalty)
    config.sample.update(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    check_request_supported(self.family, primer=primer is not None, melody=melody is not None,
                            rules=config.sample.rules)
    if isinstance(primer, str):
      primer = pieces_lib.load_piece(primer, self.steps_per_quarter)
    elif primer is not None and not isinstance(primer, pianoroll.PianoRoll):
      raise SampleError(f'primer: a PianoRoll or a MIDI path, got a {type(primer).__name__}')
    if isinstance(melody, str):
      melody = pieces_lib.soprano_line(pieces_lib.load_piece(melody, self.steps_per_quarter))
    if melody is not None:
      melody = check_melody(melody)
    request = make_request(config, num_pieces, num_steps, primer, melody, self.num_voices)
    out = sample(self.family, config, self.params, jax.random.key(seed), request,
                 self.num_voices)
    return pieces_lib.to_pianorolls(out, self.steps_per_quarter, voice_names(self.num_voices))

  def harmonize(self, melody, voice='soprano', num_pieces=1, temperature=1.0, top_k=0,
                top_p=1.0, seed=0, rules=None, rule_penalty=None):
    """Harmonizations of a melody -> list of num_pieces PianoRoll, as long as it.

    melody: int[T] MIDI pitches (-1 rest) or a MIDI path (its top line); voice: the
    voice it is ('soprano'; 'alto', 'tenor' or 'bass', e.g. a bass line to realize,
    for a family with CAPABILITIES.inpaint: the harmonizer, which hears the whole
    melody; lstm_attn the soprano only, up to the current beat). The melody is never
    changed; its voice is marked '(given)' in the pieces' voice names. Options as
    sample().
    """
    if isinstance(melody, str):
      melody = pieces_lib.soprano_line(pieces_lib.load_piece(melody, self.steps_per_quarter))
    melody = check_melody(melody)
    check_request_supported(self.family, melody=True, voice=voice)
    if not self.family.CAPABILITIES.inpaint or not self.num_voices:  # Causal, or set mode
      if conditional.voice_index(voice) != 0:  # (JSB): the melody is the top line.
        raise SampleError(f'voice {voice!r}: a model without voices takes the top line only')
      return self.sample(num_pieces, 1, temperature, top_k, top_p, seed, melody=melody,
                         rules=rules, rule_penalty=rule_penalty)
    return self._fill(conditional.melody_given(melody, voice, self.num_voices or 4),
                      num_pieces, temperature, top_k, top_p, seed, rules, rule_penalty)

  def inpaint(self, piece, span=None, voices=('alto',), num_pieces=1, temperature=1.0,
              top_k=0, top_p=1.0, seed=0, rules=None, rule_penalty=None):
    """A piece with `voices` written again over `span` ((start, end) frames, end
    exclusive; None: the whole piece), given everything else before and after it ->
    list of num_pieces PianoRoll; the rest is the piece's, unchanged. piece: a PianoRoll
    with voices or a MIDI path. CAPABILITIES.inpaint only (the harmonizer)."""
    if isinstance(piece, str):
      piece = pieces_lib.load_piece(piece, self.steps_per_quarter)
    check_request_supported(self.family, inpaint=True)
    given = conditional.span_given(check_pieces([piece])[0], span, voices)
    return self._fill(given, num_pieces, temperature, top_k, top_p, seed, rules, rule_penalty)

  def _fill(self, given, num_pieces, temperature, top_k, top_p, seed, rules, rule_penalty):
    """The family's sample with request.given -> PianoRolls (given voices marked)."""
    check_sample_args(num_pieces, len(given), temperature, top_k, top_p, seed)
    if temperature == 0:
      temperature, top_k = 1.0, 1
    config = self._config_with_rules(rules, rule_penalty)
    config.sample.update(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    check_request_supported(self.family, rules=config.sample.rules)
    request = make_request(config, num_pieces, given=given, num_voices=given.shape[1])
    out = sample(self.family, config, self.params, jax.random.key(seed), request,
                 given.shape[1])
    return pieces_lib.to_pianorolls(out, self.steps_per_quarter,
                                    conditional.voice_names(given))

  def score(self, pieces, rules=None, rule_penalty=None):
    """Scores a list of whole pieces (PianoRoll) -> dict; the same pieces, same numbers.

    Likelihoods are nats per frame over every frame of every piece (lower is better):
    'frame_nll' (exact: the LSTMs), or upper bounds on it: the VAE's 'iwae_frame_nll'
    (and 'nelbo_frame_nll', ...), the VQ-VAE's 'code_bound_frame_nll'. The GAN has
    none: 'metric_distance' of its samples to the pieces. 'select_by' names the main
    key (result[result['select_by']]); 'likelihood': 'exact', 'bound' or 'none';
    also 'frames', 'pieces', 'seconds'. rules, rule_penalty: as in sample; a finite
    penalty scores the rule-constrained model (exactly, for an exact family).
    SampleError when the model reads voices (a voice corpus) and a piece has none.
    """
    pieces = check_pieces(pieces)
    config = self._config_with_rules(rules, rule_penalty)
    family_lib.check_rules(self.family, config.sample.rules)
    mesh = parallel.make_mesh()
    fn = evaluate.make_eval_fn(self.family, config, mesh)
    return evaluate.evaluate_pieces(fn, self.family, config, self.params, pieces, mesh,
                                    self.voices_for(pieces))

  def _config_with_rules(self, rules=None, rule_penalty=None):
    """A copy of the config with sample.rules / rule_penalty set (None: kept), checked."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.sample.rules = str(config.sample.rules if rules is None else rules)
    config.sample.rule_penalty = float(
        config.sample.rule_penalty if rule_penalty is None else rule_penalty)
    voice_leading.rules_from_config(config)  # ConfigError naming the key.
    return config

  def voices_for(self, pieces):
    """The voice count to batch `pieces` with: the model's when every piece has those
    voices (a model that reads them gets them; others ignore them), else None.
    SampleError when the family reads voices (CAPABILITIES.voices), the run's corpus
    had them, and the pieces lack them."""
    have = bool(self.num_voices) and all(
        p.voices is not None and p.voices.shape[1] == self.num_voices for p in pieces)
    if have:
      return self.num_voices
    if self.family.CAPABILITIES.voices and self.num_voices:
      raise SampleError(f'this model reads {self.num_voices} voices; the pieces '
                        f'({pieces[0].meta.get("file", "?")}, ...) do not all have them')
    return None

  # Latent families (CAPABILITIES.latent); the others raise latent_ops.LatentError.

  def encode(self, pieces):
    """-> list (one per piece) of its latents, a row per segment: the VAE's posterior
    means float32[segments, latent_dim], the VQ-VAE's codes int32[segments, patterns]."""
    pieces = check_pieces(pieces)
    return latent_ops.encode_pieces(self.family, self.config, self.params, pieces,
                                    self.voices_for(pieces))

  def decode(self, z, num_steps=None, greedy=True, temperature=1.0, seed=0):
    """Latents [N, segments, ...] (encode's, stacked) -> list of N PianoRoll, num_steps
    frames (None: every segment's). greedy: the most likely output; else sampled at
    temperature from seed."""
    z = np.asarray(z)
    out = latent_ops.decode(self.family, self.config, self.params, z, num_steps, seed, greedy,
                            temperature)
    return pieces_lib.to_pianorolls(out, self.steps_per_quarter, voice_names(self.num_voices))

  def reconstruct(self, pieces):
    """Encode, then decode greedily -> (list of PianoRoll, stats): key_accuracy,
    note_precision, note_recall, frame_accuracy over all frames; frames, pieces."""
    pieces = check_pieces(pieces)
    return latent_ops.reconstruct(self.family, self.config, self.params, pieces,
                                  self.voices_for(pieces), voice_names(self.num_voices))

  def interpolate(self, piece_a, piece_b, num_points=5):
    """-> num_points PianoRoll decoded (greedily) along the path from piece_a's latents
    to piece_b's (the VAE: slerp of posterior means; the VQ-VAE: codes swapped in);
    the ends are the two reconstructions. Pieces: PianoRoll or MIDI paths, both cut
    to the shorter one."""
    a, b = (pieces_lib.load_piece(p, self.steps_per_quarter) if isinstance(p, str) else p
            for p in (piece_a, piece_b))
    return latent_ops.interpolate(self.family, self.config, self.params, a, b, num_points,
                                  self.voices_for([a, b]), voice_names(self.num_voices))

  def write(self, pieces, outdir, prefix='sample', wav=True):
    """PREFIX_i.mid (an instrument per voice), .png and .wav (wav=False, or a piece over
    pieces.MAX_WAV_SECONDS: none) per piece into outdir (created; gs:// works) at
    config.sample.qpm -> list of the .mid paths."""
    return pieces_lib.write_pieces(pieces, outdir, prefix, qpm=self.config.sample.qpm, wav=wav,
                                   instrument=self.config.sample.instrument)


def load_model(workdir, step=None, best=True, warn=None):
  """bach_jax.load_model (documented there), plus best=False: the latest checkpoint
  even where a best one exists; warn: a callable that gets each warning line
  (default: stderr)."""
  run = experiment.restore_run(workdir, step, best=best, warn=warn)
  return LoadedModel(run.config, run.family, run.state.eval_params(), run.step, run.meta)
