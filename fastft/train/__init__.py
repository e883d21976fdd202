"""The thin trainer: fine-tune, evaluate, predict."""
