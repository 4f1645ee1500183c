"""The training loop on a DeepSpeed engine: stages (image, study, student), checkpoints, predict."""
