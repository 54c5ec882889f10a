"""Training with the Hugging Face Trainer: ``run.train(settings)`` is the whole run, ``trainer`` the Trainer it
builds, ``checkpoints`` the atomic checkpoints."""
