"""medft-jax: compare fine-tuning strategies for medical image classification in JAX."""

__version__ = "0.1.0"
