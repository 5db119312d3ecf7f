"""dqecir: composed image retrieval with distinctive query embeddings (DQE-CIR)."""

__version__ = "0.1.0"
