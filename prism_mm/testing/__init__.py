"""Test and demo helpers: tiny random-weight models, real-weight loaders, q/k/v capture."""
