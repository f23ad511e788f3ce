"""Amortised VAEs with flow posteriors: IAF-VAE, planar-VAE, Sylvester-VAE and more.

``VAE(x_dim, z_dim, family=...)`` puts a conditional flow (context: the encoder's
h(x)) on a diagonal Gaussian head; ``train`` fits it with checkpoint/resume;
``VAE.log_likelihood`` is the IWAE estimate; ``VAE.pyro_model``/``pyro_guide`` let
Pyro's SVI train it.
"""
from .data import default_mnist_path, load_binarized_mnist, seeded_subset
from .decoders import BernoulliDecoder, GaussianDecoder
from .encoders import MLPEncoder
from .iwae import log_likelihood
from .layers import GatedLinear
from .model import VAE
from .train import evaluate_elbo, load_checkpoint, train

__all__ = ["VAE", "BernoulliDecoder", "GatedLinear", "GaussianDecoder", "MLPEncoder", "default_mnist_path", "evaluate_elbo",
           "load_binarized_mnist", "load_checkpoint", "log_likelihood", "seeded_subset", "train"]
