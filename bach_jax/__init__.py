"""bach_jax: Bach-style symbolic music generation in JAX/Flax."""

__version__ = "0.1.0"


def load_model(workdir, step=None):
  """Loads a trained run for sampling and scoring -> bach_jax.loaded.LoadedModel.

  workdir: a run's folder (a path, or gs://...) as `python -m bach_jax.main
  --workdir=DIR` writes it; its config comes from DIR/config.json, whatever the
  family. step=None: the best checkpoint (DIR/best/, chosen on the valid split by
  the family's select_by metric), else the latest (DIR/checkpoints/); step=N: the
  checkpoint DIR/checkpoints/N, which must exist. A damaged checkpoint gets a
  warning on stderr and the next one is used (an older best, then the latest,
  newest first). A run that kept an average of its params (train.ema_decay > 0)
  gives the average. Only reads: a read-only workdir works. CheckpointError
  (bach_jax.checkpoints) names what is missing: config.json, a checkpoint.

  Every model has sample(), score() and write(); the latent families (VAE, VQ-VAE)
  also encode(), decode(), reconstruct() and interpolate(). Pieces are PianoRoll
  objects; see help(bach_jax.loaded.LoadedModel). For example:

    import bach_jax
    model = bach_jax.load_model('runs/quickstart')       # best checkpoint
    pieces = model.sample(num_pieces=4, num_steps=128, temperature=0.9, seed=0)
    model.write(pieces, 'out/')                           # .mid, .png, .wav per piece
    result = model.score(pieces)                          # nats per frame
    print(result[result['select_by']], result['likelihood'])  # exact, bound (or none)
  """
  from bach_jax import loaded  # Imported lazily: `import bach_jax` stays light.
  return loaded.load_model(workdir, step=step)
