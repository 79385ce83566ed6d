"""bach_jax: Bach-style symbolic music generation in JAX/Flax."""

__version__ = "0.1.0"


def load_model(workdir, step=None):
  """Loads a trained model from a workdir; see bach_jax.generate.LoadedModel."""
  from bach_jax import generate  # Imported lazily: `import bach_jax` stays light.
  return generate.load_model(workdir, step=step)
