"""What is trained: the CNNs, the training loop, clustering, embeddings, the fingerprint encoder."""
