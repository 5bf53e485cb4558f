"""PyTorch Janus checkpoints <-> the janus_jax param tree."""
